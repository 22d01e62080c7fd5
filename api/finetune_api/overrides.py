"""Overriding manifest fields from the command line: ``--set spec.training.learningRate=1e-4``.

An override edits the parsed YAML document, before validation, never the validated
model: the overridden document then goes through exactly the checks the file would
(types, bounds, cross-field rules, ``--cluster`` rules), so ``--set`` cannot smuggle in
a value the file could not hold, and an error names the field the same way.

Each override is checked against the models as it is parsed, so a misspelled path is
refused by name (with the closest known field) instead of landing in the document as an
unknown key. Values are YAML, read by the manifests' own loader: ``1e-4`` is a float,
``8`` an int, ``true`` a bool and ``[q_proj,v_proj]`` a list, as in the file.
"""

from __future__ import annotations

import copy
import difflib
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from finetune_api.manifests import (
    Document,
    ManifestError,
    load_yaml_documents,
    model_in,
    validate_body,
)
from finetune_api.resource import FineTuneJob
from finetune_api.rules import Scope

ROOTS = ("spec", "metadata")
"""Top-level sections a path may start with; any other path is read under ``spec``."""

EXAMPLE = "spec.training.learningRate=1e-4"


class OverrideError(ManifestError):
    """An override that cannot be applied; ``field`` is the path it names."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"--set {field}: {message}")
        self.field = field


@dataclass(frozen=True)
class Override:
    """One ``path=value``: the full wire path (``spec.…``, camelCase) and the YAML value."""

    path: tuple[str, ...]
    value: Any

    @property
    def field(self) -> str:
        return ".".join(self.path)


def parse_override(text: str) -> Override:
    """Read ``a.b.c=value``; the leading ``spec.`` may be left out.

    Raises :class:`OverrideError` for a malformed text, an unknown path, a path that
    goes inside a value or a list, or a value that is not YAML.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise OverrideError(text, f"write path=value, e.g. {EXAMPLE}")
    parts = key.split(".")
    if any(not part.strip() for part in parts):
        raise OverrideError(key, f"empty name in the path; write path=value, e.g. {EXAMPLE}")
    if parts[0] not in ROOTS:
        parts = ["spec", *parts]
    if len(parts) < 2:
        raise OverrideError(key, f"name a field inside {parts[0]}, e.g. {EXAMPLE}")
    path = _wire_path(tuple(parts))
    return Override(path, _parse_value(".".join(path), raw))


def parse_overrides(texts: Sequence[str]) -> list[Override]:
    return [parse_override(text) for text in texts]


def apply_overrides(body: Any, overrides: Sequence[Override]) -> Any:
    """A copy of the document ``body`` with each override set, in order (the last wins).

    Missing sections are created. A body that is not a mapping is returned as it is:
    validation reports what is wrong with it better than an override could.
    """
    if not overrides or not isinstance(body, dict):
        return body
    out = copy.deepcopy(body)
    for override in overrides:
        node = out
        for depth, part in enumerate(override.path[:-1], start=1):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(override.path[:depth])
                raise OverrideError(
                    override.field, f"{where} is not a section in the manifest (it holds {child!r})"
                )
            node = child
        node[override.path[-1]] = override.value
    return out


def check_with_overrides(
    text: str, source: str, overrides: Sequence[Override], scope: Scope = "job"
) -> list[Document]:
    """:func:`finetune_api.manifests.check_documents` with ``overrides`` applied to every
    document before it is validated; without overrides the two agree."""
    bodies = load_yaml_documents(text, source)
    if not bodies:
        raise ManifestError(f"{source}: no YAML documents found")
    documents = [
        Document(source, i, apply_overrides(body, overrides)) for i, body in enumerate(bodies)
    ]
    for doc in documents:
        doc.job, doc.problems = validate_body(doc.body, scope)
    return documents


# --------------------------------------------------------------------------- paths


def _wire_path(parts: tuple[str, ...]) -> tuple[str, ...]:
    """``parts`` with each name as the wire (camelCase) name; refuse unknown names.

    Python names are accepted too (``learning_rate``), as the loader accepts them, but
    written by alias so a file's own ``learningRate`` and the override never both hold.
    """
    model: type[BaseModel] = FineTuneJob
    out: list[str] = []
    for depth, part in enumerate(parts):
        found = _field(model, part)
        if found is None:
            if model.model_config.get("extra") == "allow":
                return (*out, *parts[depth:])  # free-form keys, e.g. metadata.labels
            raise OverrideError(".".join(parts), _unknown(model, (*out, part), parts[-1]))
        name, info = found
        out.append(name)
        if depth == len(parts) - 1:
            break
        if _is_mapping(info.annotation):
            return (*out, *parts[depth + 1 :])  # a dict field: any key below it
        inner = model_in(info.annotation)
        if inner is None or _is_list(info.annotation):
            where = ".".join(out)
            message = (
                f"{where} is a list, not a section; set the whole list, e.g. {where}=[...]"
                if _is_list(info.annotation)
                else f"{where} is a value, not a section"
            )
            raise OverrideError(".".join(parts), message)
        model = inner
    return tuple(out)


def _field(model: type[BaseModel], part: str) -> tuple[str, FieldInfo] | None:
    for name, info in model.model_fields.items():
        if part in (name, info.alias):
            return info.alias or name, info
    return None


def _unknown(model: type[BaseModel], path: tuple[str, ...], leaf: str) -> str:
    """Why ``path`` is refused, naming the closest known field: a sibling of the unknown
    name, else a field elsewhere whose name is close to ``leaf`` (``lora.r`` finds
    ``spec.method.lora.r``)."""
    siblings = [info.alias or name for name, info in model.model_fields.items()]
    close = difflib.get_close_matches(path[-1], siblings, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {'.'.join((*path[:-1], close[0]))}?"
    elsewhere = [p for p in known_paths() if difflib.get_close_matches(leaf, [p.rsplit(".")[-1]])]
    close = difflib.get_close_matches(".".join(path), elsewhere, n=1, cutoff=0.0)
    if close:
        return f"unknown field; did you mean {close[0]}?"
    return f"unknown field; known fields here: {', '.join(siblings)}"


def known_paths(model: type[BaseModel] = FineTuneJob, prefix: str = "") -> Iterator[str]:
    """Every path an override can set, depth first (lists and mappings end a path)."""
    for name, info in model.model_fields.items():
        path = f"{prefix}{info.alias or name}"
        if path in ("apiVersion", "kind", "status"):
            continue
        yield path
        inner = model_in(info.annotation)
        if inner is not None and not _is_list(info.annotation):
            yield from known_paths(inner, f"{path}.")


def _branches(annotation: Any) -> list[Any]:
    """The non-None members of a union annotation, or the annotation itself."""
    args = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return [arg for arg in args if arg is not type(None)]


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_list(annotation: Any) -> bool:
    return any(typing.get_origin(arg) in (list, tuple) for arg in _branches(annotation))


def _is_mapping(annotation: Any) -> bool:
    return any(typing.get_origin(arg) is dict for arg in _branches(annotation))


# --------------------------------------------------------------------------- values


def _parse_value(field: str, raw: str) -> Any:
    """``raw`` as YAML with the manifests' loader (``1e-4`` is a float there too).

    An empty value is null, as ``key:`` is in a file."""
    try:
        values = load_yaml_documents(raw, f"--set {field}")
    except ManifestError:
        raise OverrideError(
            field, f"the value {raw!r} is not valid YAML; quote it, e.g. {field}='{raw}'"
        ) from None
    if len(values) > 1:
        raise OverrideError(field, "the value holds several YAML documents; give one")
    return values[0] if values else None
