"""Reading FineTuneJob manifests from YAML and turning validation errors into advice.

Two habits of YAML users need care here:

* ``learningRate: 1e-4`` is a number to kubectl (YAML 1.2) but a string to PyYAML
  (YAML 1.1 wants ``1.0e-4``). Our loader resolves floats the YAML 1.2 way, so the
  same manifest means the same thing to ``kubectl apply`` and to ``finetune run``.
* Multi-document files: each document is checked and reported on its own.
"""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from finetune_api import rules
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
    try:
        return FineTuneJob.model_validate(body), []
    except ValidationError as exc:
        return None, explain(exc, FineTuneJob)


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
    """Turn pydantic errors into one :class:`Problem` per field, with a suggested fix."""
    problems = []
    for err in exc.errors(include_url=False):
        loc = [part for part in err["loc"] if not _is_union_branch(part)]
        path = _dotted(loc)
        if err["type"] == rules.RULE_ERROR:
            # A cross-field rule: each violation at its own field, under the model's path.
            ctx = err.get("ctx") or {}
            for field, message in zip(ctx["fields"], ctx["messages"], strict=True):
                problems.append(Problem(_rule_path(field, path), message))
            continue
        problems.append(Problem(path, _advice(err, loc, root)))
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


def _advice(err: Any, loc: Sequence[Any], root: type[BaseModel]) -> str:
    kind: str = err["type"]
    message: str = err["msg"]
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
    message = message.removeprefix("Value error, ")
    if (
        "input" in err
        and kind not in {"model_type", "dict_type"}
        and not isinstance(err["input"], dict | list)
    ):
        message += f" (got {without_credentials(repr(err['input']))})"
    return message


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
