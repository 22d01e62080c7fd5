"""The FineTuneJob spec field reference, generated from the pydantic models.

The README's field table is this module's output (``finetune docs``), pasted between
``<!-- fields:start -->`` and ``<!-- fields:end -->``; a unit test fails when the two
drift. Like the CRD, the table comes from the models' JSON Schema, so a field, its
default, its bounds and its description are written once, in the model. This walks the
raw JSON Schema rather than the CRD's schema because the CRD drops defaults.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from finetune_api.resource import FineTuneJobSpec

START_MARKER = "<!-- fields:start -->"
END_MARKER = "<!-- fields:end -->"

Schema = dict[str, Any]


@dataclass(frozen=True)
class FieldRow:
    """One field of the spec as a person reads it."""

    path: str
    """Wire path, e.g. ``spec.training.learningRate``; ``[]`` marks list items."""
    type: str
    default: str
    allowed: str
    description: str


def field_rows(model: type[BaseModel] = FineTuneJobSpec, prefix: str = "spec") -> list[FieldRow]:
    """Every field under ``model``, depth first, in declaration order."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return list(_rows(raw, raw.get("$defs", {}), prefix))


def _rows(node: Schema, defs: Schema, prefix: str) -> Iterator[FieldRow]:
    required = set(node.get("required", []))
    for name, sub in node.get("properties", {}).items():
        field = _resolve(sub, defs)
        path = f"{prefix}.{name}"
        yield FieldRow(
            path=path,
            type=_type_of(field, defs),
            default="required" if name in required else _default_of(field),
            allowed=_allowed_of(field, defs),
            description=" ".join(str(field.get("description", "")).split()),
        )
        if field.get("type") == "object":
            yield from _rows(field, defs, path)
        elif field.get("type") == "array":
            items = _resolve(field.get("items", {}), defs)
            if items.get("type") == "object":
                yield from _rows(items, defs, f"{path}[]")


def _resolve(node: Schema, defs: Schema) -> Schema:
    """Inline ``$ref`` and drop the ``null`` branch of an Optional (outer keys win)."""
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        return _resolve({**target, **{k: v for k, v in node.items() if k != "$ref"}}, defs)
    branches = node.get("anyOf")
    if branches and any(b.get("type") == "null" for b in branches):
        real = [b for b in branches if b.get("type") != "null"]
        outer = {k: v for k, v in node.items() if k != "anyOf"}
        if len(real) == 1:
            return _resolve({**real[0], **outer}, defs)
        return {**outer, "anyOf": real}
    return node


def _type_of(node: Schema, defs: Schema) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    if "anyOf" in node:
        return " or ".join(_type_of(_resolve(b, defs), defs) for b in node["anyOf"])
    kind = node.get("type", "any")
    if kind == "array":
        return "[]" + _type_of(_resolve(node.get("items", {}), defs), defs)
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return "map[string]" + _type_of(_resolve(node["additionalProperties"], defs), defs)
    return str(kind)


def _default_of(node: Schema) -> str:
    if node.get("default") is None:
        return ""
    return _code(node["default"])


def _allowed_of(node: Schema, defs: Schema) -> str:
    if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
        parts = [_allowed_of(_resolve(b, defs), defs) for b in node["anyOf"]]
        return "; ".join(p for p in parts if p)
    out: list[str] = []
    if "const" in node:
        out.append(_code(node["const"]))
    if "enum" in node:
        out.append(", ".join(_code(v) for v in node["enum"]))
    for key, exclusive, inclusive in (
        ("Minimum", ">", "≥"),
        ("Maximum", "<", "≤"),
    ):
        if f"exclusive{key}" in node:
            out.append(f"{exclusive} {_number(node[f'exclusive{key}'])}")
        elif key.lower() in node:
            out.append(f"{inclusive} {_number(node[key.lower()])}")
    if "minLength" in node:
        out.append(f"length ≥ {node['minLength']}")
    if "maxLength" in node:
        out.append(f"length ≤ {node['maxLength']}")
    if "minItems" in node:
        out.append(f"≥ {node['minItems']} items")
    if "maxItems" in node:
        out.append(f"≤ {node['maxItems']} items")
    if "pattern" in node:
        out.append(f"pattern {_code(node['pattern'])}")
    return ", ".join(out)


def _number(value: Any) -> str:
    return json.dumps(value)


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`"


def _cell(text: str) -> str:
    # A pipe ends a cell even inside a code span (GFM), so it is escaped everywhere.
    return text.replace("|", "\\|")


def render_field_table(rows: list[FieldRow] | None = None) -> str:
    """The Markdown table the README carries between the field markers."""
    lines = [
        "| Field | Type | Default | Allowed | Description |",
        "|---|---|---|---|---|",
    ]
    for row in field_rows() if rows is None else rows:
        cells = (f"`{row.path}`", row.type, row.default, row.allowed, row.description)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- rules, exit codes

RULES_START, RULES_END = "<!-- rules:start -->", "<!-- rules:end -->"
EXIT_CODES_START, EXIT_CODES_END = "<!-- exit-codes:start -->", "<!-- exit-codes:end -->"


def render_rules_table() -> str:
    """The cross-field rules (finetune_api.rules) as the README lists them."""
    from finetune_api.rules import RULES

    where = {
        "job": "everywhere: `finetune validate`/`run`, the operator, the trainer",
        "cluster": "in a cluster: `finetune validate --cluster`, the operator",
    }
    lines = ["| Field | Rule | Checked | CEL twin |", "|---|---|---|---|"]
    for rule in RULES:
        path = rule.field if rule.field.startswith("metadata.") else f"spec.{rule.field}"
        twin = "no" if rule.cel is None else ("yes (object)" if rule.cel_on_object else "yes")
        cells = (f"`{path}`", rule.summary, where[rule.scope], twin)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_exit_code_table() -> str:
    """The trainer's exit codes (finetune_api.outcome) as the README lists them."""
    from finetune_api.outcome import EXITS

    lines = [
        "| code | reason | meaning | retrying helps? | the Job retries it |",
        "|---|---|---|---|---|",
    ]
    for code, info in EXITS.items():
        retried = "-" if code == 0 else ("yes" if info.retried else "no (podFailurePolicy)")
        cells = (f"`{int(code)}`", f"`{info.reason}`", info.meaning, info.retry_advice, retried)
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


_SECTIONS: dict[str, tuple[str, str, Callable[[], str]]] = {
    "fields": (START_MARKER, END_MARKER, render_field_table),
    "rules": (RULES_START, RULES_END, render_rules_table),
    "exit-codes": (EXIT_CODES_START, EXIT_CODES_END, render_exit_code_table),
}

GENERATED_SECTIONS: dict[str, tuple[str, str]] = {
    name: (start, end) for name, (start, end, _) in _SECTIONS.items()
}
"""README sections written by `make docs`, by name: (start marker, end marker)."""


def render_section(name: str) -> str:
    """The generated text of one README section."""
    return _SECTIONS[name][2]()
