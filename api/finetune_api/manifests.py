"""Reading FineTuneJob manifests from YAML and turning validation errors into advice.

Two habits of YAML users need care here:

* ``learningRate: 1e-4`` is a number to kubectl (YAML 1.2) but a string to PyYAML
  (YAML 1.1 wants ``1.0e-4``). Our loader resolves floats the YAML 1.2 way, so the
  same manifest means the same thing to ``kubectl apply`` and to ``finetune run``.
* Multi-document files: each document is checked and reported on its own.

And the API server refuses what pydantic's lax mode would quietly coerce, so a manifest
is checked as the cluster reads it (:func:`validate_body`): a key written twice is an
error (YAML keeps the last, dropping the first section silently), dates stay strings,
whole numbers beyond 64 bits are refused, and types are strict ("true" is not a
boolean, "8" not an integer), after the one conversion kubectl makes itself: a whole
float such as ``8.0`` is sent as the integer ``8``.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from finetune_api import rules
from finetune_api.config.methods._fields import MODULE_NAME
from finetune_api.resource import API_VERSION, KIND, FineTuneJob
from finetune_api.rules import Scope
from finetune_api.uri import without_credentials


class _Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` and ``5E+3`` as floats, as YAML 1.2 does."""


_YAML12_FLOAT = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+0123456789."))


def _as_string(loader: _Yaml12Loader, node: yaml.ScalarNode) -> str:
    """kubectl keeps 2024-01-01 a string (JSON has no dates); PyYAML would make it a date."""
    return str(loader.construct_scalar(node))


_Yaml12Loader.add_constructor("tag:yaml.org,2002:timestamp", _as_string)


def _refuse_duplicate_keys(loader: _Yaml12Loader, node: yaml.MappingNode) -> dict[Any, Any]:
    """A mapping whose keys are unique. PyYAML (and kubectl) keep the last of two equal
    keys, so a second ``training:`` would silently drop the first section's settings.
    Keys a merge (``<<: *base``) brings in may be overridden: that is what merges do."""
    seen: dict[Any, yaml.Mark] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"key {key!r} appears twice in this mapping (first at line {first.line + 1}); "
                "YAML keeps only the last one, so merge the two into one",
                key_node.start_mark,
            )
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=True)


_Yaml12Loader.add_constructor("tag:yaml.org,2002:map", _refuse_duplicate_keys)


class ManifestError(Exception):
    """A file or document that cannot be read as a manifest at all."""


@dataclass
class Problem:
    """One thing wrong with a document, phrased for the person who wrote it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass
class Document:
    """One YAML document of a file and what checking it found."""

    source: str
    index: int
    body: Any
    job: FineTuneJob | None = None
    problems: list[Problem] = field(default_factory=list)

    @property
    def label(self) -> str:
        metadata = self.body.get("metadata") if isinstance(self.body, dict) else None
        name = metadata.get("name") if isinstance(metadata, dict) else None
        where = f"{self.source} (document {self.index + 1})"
        return f"{where} {name}" if isinstance(name, str) else where


def load_yaml_documents(text: str, source: str) -> list[Any]:
    """Parse every document in ``text``; empty documents (``---`` alone) are skipped."""
    try:
        docs = list(yaml.load_all(text, Loader=_Yaml12Loader))
    except RecursionError:
        raise ManifestError(f"{source}: nested too deeply to be a manifest") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{source}: not valid YAML{where}: {problem}") from None
    return [doc for doc in docs if doc is not None]


def read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise ManifestError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ManifestError(f"{path}: is a directory; pass a YAML file") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a text file (YAML must be UTF-8)") from None
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None


def check_documents(text: str, source: str, scope: Scope = "job") -> list[Document]:
    """Validate each document of a YAML text as a FineTuneJob (see :func:`validate_body`)."""
    documents = [
        Document(source, i, body) for i, body in enumerate(load_yaml_documents(text, source))
    ]
    if not documents:
        raise ManifestError(f"{source}: no YAML documents found")
    for doc in documents:
        doc.job, doc.problems = validate_body(doc.body, scope)
    return documents


def validate_body(body: Any, scope: Scope = "job") -> tuple[FineTuneJob | None, list[Problem]]:
    """Validate one parsed document; return the job or the problems, never raise.

    ``scope`` cluster also applies the rules of a spec that runs in a cluster
    (:mod:`finetune_api.rules`): what the operator's admission refuses before it creates
    anything, and what ``finetune validate --cluster`` reports.
    """
    job, problems = _validate_model(body)
    if job is None or scope == "job":
        return job, problems
    cluster = [
        Problem(_rule_path(v.field, "spec"), v.message)
        for v in rules.violations(job.spec.facts(job.metadata.name), "cluster")
    ]
    return (None, cluster) if cluster else (job, [])


def _validate_model(body: Any) -> tuple[FineTuneJob | None, list[Problem]]:
    if not isinstance(body, dict):
        return None, [
            Problem("", f"expected a mapping (a Kubernetes object), got {_kind_of(body)}")
        ]
    header = _check_header(body)
    if header:
        return None, header
    sent = as_sent(body)
    if isinstance(sent, Problem):
        return None, [sent]
    try:
        # Strict: no coercion the API server would refuse (see the module's doc). The
        # status, when a manifest carries one (kubectl get -o yaml), is the operator's
        # own writing: its timestamps are strings, read as such.
        job = FineTuneJob.model_validate(
            {k: v for k, v in sent.items() if k != "status"}, strict=True
        )
        if "status" in sent:
            job = FineTuneJob.model_validate(sent)
        return job, []
    except ValidationError as exc:
        return None, explain(exc, FineTuneJob)


INT64_MAX = 2**63 - 1
"""Kubernetes stores integers as int64; a larger one cannot be applied."""
MAX_VALUES = 100_000
"""Values in one document, aliases expanded: a manifest is far smaller, and an alias
bomb (each level repeating the last) must not expand without end."""


def as_sent(body: Any) -> Any:
    """``body`` as kubectl sends it to the API server, or the :class:`Problem` that
    stops it: keys are strings, a whole float is the integer it writes in JSON (``8.0``
    as ``8``), and an integer beyond int64 cannot be stored."""
    count = 0

    def walk(node: Any, loc: tuple[Any, ...]) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise _Refused(Problem(_dotted(loc), f"holds more than {MAX_VALUES} values"))
        if isinstance(node, dict):
            return {_key(k): walk(v, (*loc, _key(k))) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v, (*loc, i)) for i, v in enumerate(node)]
        if isinstance(node, float) and node.is_integer() and abs(node) <= INT64_MAX:
            node = int(node)  # a larger one stays a number, as the API server reads it
        if isinstance(node, int) and not isinstance(node, bool) and abs(node) > INT64_MAX:
            raise _Refused(
                Problem(
                    _dotted(loc),
                    f"{node:.3g} is too large: Kubernetes stores whole numbers in 64 bits "
                    f"(at most {INT64_MAX}); write a smaller value",
                )
            )
        return node

    try:
        return walk(body, ())
    except _Refused as refused:
        return refused.problem


class _Refused(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def _key(key: Any) -> str:
    """A mapping key as JSON writes it (kubectl turns ``true:`` into ``"true"``)."""
    if isinstance(key, bool) or key is None:
        return json.dumps(key)
    return str(key)


def _check_header(body: dict[str, Any]) -> list[Problem]:
    api_version, kind = body.get("apiVersion"), body.get("kind")
    problems = []
    if kind != KIND:
        problems.append(Problem("kind", f"is {kind!r}; this tool reads kind: {KIND}"))
    if api_version != API_VERSION:
        problems.append(Problem("apiVersion", f"is {api_version!r}; use apiVersion: {API_VERSION}"))
    return problems


def _kind_of(value: Any) -> str:
    names: dict[type, str] = {list: "a list", str: "a string"}
    return names.get(type(value), type(value).__name__)


def explain(exc: ValidationError, root: type[BaseModel]) -> list[Problem]:
    """Turn pydantic errors into one :class:`Problem` per field, in plain words: the
    field's path, what it takes and what it got, never pydantic's own phrasing, a link
    to its docs or the name of a model class (which a manifest's author never sees)."""
    problems = []
    union_types: dict[str, list[tuple[str, Any]]] = {}
    for err in exc.errors(include_url=False):
        loc = [part for part in err["loc"] if not _is_union_branch(part)]
        path = _dotted(loc)
        if err["type"] == rules.RULE_ERROR:
            # A cross-field rule: each violation at its own field, under the model's path.
            ctx = err.get("ctx") or {}
            for field, message in zip(ctx["fields"], ctx["messages"], strict=True):
                problems.append(Problem(_rule_path(field, path), message))
            continue
        expected = _expected(err, loc, root)
        if expected is not None and len(loc) != len(err["loc"]):
            # One branch of a union (int or string): said once, with every branch.
            if path not in union_types:
                problems.append(Problem(path, ""))  # filled in below, in this place
            union_types.setdefault(path, []).append((expected, err.get("input")))
            continue
        problems.append(Problem(path, _advice(err, loc, root)))
    for problem in problems:
        if problem.path in union_types and not problem.message:
            branches = union_types[problem.path]
            wanted = " or ".join(dict.fromkeys(expected for expected, _ in branches))
            problem.message = f"must be {wanted}; got {describe(branches[0][1])}"
    return _dedupe(problems)


def _rule_path(field: str, model_path: str) -> str:
    """A rule's field under the model it was checked on; metadata is the object's own."""
    if field.startswith("metadata.") or not model_path:
        return field
    return f"{model_path}.{field}"


def _is_union_branch(part: Any) -> bool:
    # pydantic names the union member it tried, e.g. "list[str]" or "literal['all-linear']".
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool"})


def _dotted(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_TYPES = {
    "string": "text (a string)",
    "int": "a whole number",
    "float": "a number",
    "bool": "true or false",
    "list": "a list",
    "tuple": "a list",
    "set": "a list",
    "frozen_set": "a list",
    "dict": "a mapping (key: value pairs)",
    "mapping": "a mapping (key: value pairs)",
    "none": "empty (null)",
    "bytes": "text (a string)",
    "date": "a date (YYYY-MM-DD)",
    "datetime": "a date and time (RFC 3339, e.g. 2024-01-01T00:00:00Z)",
    "time": "a time of day",
    "time_delta": "a duration",
    "decimal": "a number",
    "complex": "a number",
    "url": "a URL",
    "uuid": "a UUID",
    "callable": "a value",
    "iterable": "a list",
    "enum": "one of the listed values",
}
"""What each pydantic type error asks for, keyed by the error type's stem."""
_SECTION_TYPES = {"model_type", "model_attributes_type", "dataclass_type", "dataclass_exact_type"}
_SUBJECT = re.compile(
    r"^(?:Input|String|List|Value|Dictionary|Tuple|Set|Data|Object|Timestamp|Date|Datetime"
    r"|Frozenset|Mapping|Iterable|Field)\s+must\s+"
)
_LINK = re.compile(r"[\s,]*(?:following the rules at\s*)?https?://\S+")
_INSTANCE_OF = re.compile(r"\b(?:an? )?(?:valid )?(?:instance|subclass) of \w+")


def _expected(err: Any, loc: Sequence[Any], root: type[BaseModel]) -> str | None:
    """For a type error, what the field takes in plain words; None for other errors."""
    kind: str = err["type"]
    if kind in _SECTION_TYPES:
        known = _known_fields(root, loc)
        fields = f" ({', '.join(known[:6])}{', ...' if len(known) > 6 else ''})" if known else ""
        return f"a section of fields{fields}"
    for suffix in ("_type", "_parsing", "_from_float", "_exact_type", "_parsing_size"):
        stem = kind.removesuffix(suffix)
        if kind.endswith(suffix) and stem in _TYPES:
            return _TYPES[stem]
    if kind == "finite_number":
        return "a finite number (not .inf or .nan)"
    return None


def describe(value: Any) -> str:
    """A value as its author wrote it, in words (credentials in URIs masked)."""
    if value is None:
        return "nothing (an empty value)"
    if isinstance(value, bool):
        return f"the boolean {json.dumps(value)}"
    if isinstance(value, int):
        text = str(value) if abs(value) < 10**20 else f"{value:.3g}"
        return f"the whole number {text}"
    if isinstance(value, float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 80 else value[:77] + "..."
        return f"the text {without_credentials(repr(shown))}"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return "a value of another type"


def _advice(err: Any, loc: Sequence[Any], root: type[BaseModel]) -> str:
    kind: str = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        known = _known_fields(root, loc[:-1])
        hint = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.6)
        if hint:
            fix = f"did you mean '{hint[0]}'?"
        elif known:
            fix = f"known fields here: {', '.join(known)}"
        else:
            fix = "this section takes no fields; leave it empty ({}) or remove it"
        return f"unknown field; {fix}"
    if kind == "missing":
        return "required field is missing"
    expected = _expected(err, loc, root)
    if expected is not None:
        return f"must be {expected}; got {describe(value)}{_type_hint(kind, value)}"
    pattern = (err.get("ctx") or {}).get("pattern")
    if kind == "string_pattern_mismatch" and pattern in _PATTERN_WORDS:
        return f"must be {_PATTERN_WORDS[pattern]} (got {without_credentials(repr(value))})"
    message = _plain(str(err["msg"]))
    if "input" in err and not isinstance(value, dict | list):
        message += f" (got {without_credentials(repr(value))})"
    return message


_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_PATTERN_WORDS = {
    MODULE_NAME: "a module name or dotted path, e.g. lm_head or model.embed_tokens (letters, "
    "digits, '_' and '.')",
    _DNS_LABEL: "a DNS label: lower-case letters, digits and '-', starting and ending with a "
    "letter or digit",
    _DNS_SUBDOMAIN: "a DNS subdomain: lower-case letters, digits, '-' and '.', each part "
    "starting and ending with a letter or digit",
}
"""The contract's patterns in words (pydantic would show the regular expression)."""


def _type_hint(kind: str, value: Any) -> str:
    """How to write the value so that it has the type the field takes."""
    if isinstance(value, str) and kind.startswith(("int", "float", "bool", "finite")):
        return "; write it without quotes" if value.strip() else ""
    if kind.startswith("string") and isinstance(value, bool | int | float):
        return "; quote it to write it as text"
    if kind.startswith("int") and isinstance(value, float) and math.isfinite(value):
        if value.is_integer():  # whole floats within int64 were made integers
            return f", too large: Kubernetes stores whole numbers in 64 bits (at most {INT64_MAX})"
        return ", which has a fractional part"
    return ""


def _plain(message: str) -> str:
    """pydantic's message for a constraint, as this tool words it: "must be greater than
    0", not "Input should be greater than 0"; a model's class name never shows."""
    message = message.removeprefix("Value error, ").removeprefix("Assertion failed, ")
    message = re.sub(r"\bshould\b", "must", _LINK.sub("", message))
    message = _SUBJECT.sub("must ", message).replace(" after validation", "")
    message = _INSTANCE_OF.sub("a section", message)
    names = model_names()
    return re.sub(r"\b[A-Z]\w+\b", lambda m: "a section" if m[0] in names else m[0], message)


def model_names() -> set[str]:
    """The contract's model classes, by name: internal, so never in a message. The
    kind, FineTuneJob, is what a manifest's author writes, so it may be."""
    found: set[str] = set()
    stack: list[type[BaseModel]] = [BaseModel]
    while stack:
        for sub in stack.pop().__subclasses__():
            if sub.__module__.startswith("finetune_api") and sub.__name__ != KIND:
                found.add(sub.__name__)
            stack.append(sub)
    return found


def _known_fields(root: type[BaseModel], loc: Sequence[Any]) -> list[str]:
    """The wire names of the fields allowed at ``loc`` (for did-you-mean hints)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = _field_by_alias(model, str(part))
        if field is None:
            return []
        model = model_in(field.annotation)
        if model is None:
            return []
    return [f.alias or name for name, f in model.model_fields.items()]


def _field_by_alias(model: Any, alias: str) -> Any:
    for name, info in model.model_fields.items():
        if alias in (name, info.alias):
            return info
    return None


def model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside a field annotation (``X``, ``X | None``, ``list[X]``)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = model_in(arg)
        if found is not None:
            return found
    return None


def _dedupe(problems: list[Problem]) -> list[Problem]:
    seen: set[str] = set()
    out = []
    for problem in problems:
        if str(problem) not in seen:
            seen.add(str(problem))
            out.append(problem)
    return out
