"""The documentation site's sections generated from the contract.

The site (docs/, built by MkDocs) carries tables that restate the contract: the spec and
status field references, the cross-field rules and the exit codes. Each is this module's
output, written by ``make docs`` between a page's ``<!-- NAME:start -->`` and
``<!-- NAME:end -->`` lines (``SECTIONS`` says which page); a unit test fails when a page
drifts. Like the CRD, the field tables come from the models' JSON Schema, so a field, its
default, its bounds and its description are written once, in the model. This walks the
raw JSON Schema rather than the CRD's schema because the CRD drops defaults.

The CLI reference is generated too, but from the CLI (finetune_cli.reference): the
contract never imports the CLI, so that section is added to this list one layer up.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from finetune_api.resource import FineTuneJobSpec, FineTuneJobStatus

Schema = dict[str, Any]


@dataclass(frozen=True)
class FieldRow:
    """One field of the spec (or status) as a person reads it."""

    path: str
    """Wire path, e.g. ``spec.training.learningRate``; ``[]`` marks list items."""
    type: str
    default: str
    allowed: str
    description: str


def field_rows(model: type[BaseModel] = FineTuneJobSpec, prefix: str = "spec") -> list[FieldRow]:
    """Every field under ``model``, depth first, in declaration order.

    The root model and the path prefix are parameters so the spec and the status tables
    come from one walk: ``field_rows(FineTuneJobStatus, "status")``.
    """
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
    if kind == "string" and node.get("format") == "date-time":
        # status timestamps: a reader needs to know the string is RFC 3339
        return "string (date-time)"
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


FIELD_COLUMNS = ("Field", "Type", "Default", "Allowed", "Description")
STATUS_COLUMNS = ("Field", "Type", "Values", "Description")


def _field_cells(row: FieldRow, columns: tuple[str, ...]) -> tuple[str, ...]:
    by_column = {
        "Field": f"`{row.path}`",
        "Type": row.type,
        "Default": row.default,
        "Allowed": row.allowed,
        "Values": row.allowed,
        "Description": row.description,
    }
    return tuple(by_column[column] for column in columns)


def _table(columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(c) for c in cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def render_field_table(
    rows: list[FieldRow] | None = None, columns: tuple[str, ...] = FIELD_COLUMNS
) -> str:
    """The spec's field reference as a Markdown table (the API page; ``finetune docs``)."""
    chosen = field_rows() if rows is None else rows
    return _table(columns, [_field_cells(row, columns) for row in chosen])


def render_status_table() -> str:
    """The status's field reference: the same rows as the spec's, rooted at the status.

    No Default column: the operator writes the status, nobody sets it, so what a reader
    needs is the type, the values a field takes and what it means.
    """
    return render_field_table(field_rows(FineTuneJobStatus, "status"), STATUS_COLUMNS)


# --------------------------------------------------------------------------- rules, exit codes


def render_rules_table() -> str:
    """The cross-field rules (finetune_api.rules) as the validation page lists them."""
    from finetune_api.rules import RULES

    where = {
        "job": "everywhere: `finetune validate`/`run`, the operator, the trainer",
        "cluster": "in a cluster: `finetune validate --cluster`, the operator",
    }
    rows = []
    for rule in RULES:
        path = rule.field if rule.field.startswith("metadata.") else f"spec.{rule.field}"
        twin = "no" if rule.cel is None else ("yes (object)" if rule.cel_on_object else "yes")
        rows.append((f"`{path}`", rule.summary, where[rule.scope], twin))
    return _table(("Field", "Rule", "Checked", "CEL twin"), rows)


def render_exit_code_table() -> str:
    """The trainer's exit codes (finetune_api.outcome) as the exit-codes page lists them."""
    from finetune_api.outcome import EXITS

    rows = []
    for code, info in EXITS.items():
        retried = "-" if code == 0 else ("yes" if info.retried else "no (podFailurePolicy)")
        rows.append(
            (f"`{int(code)}`", f"`{info.reason}`", info.meaning, info.retry_advice, retried)
        )
    columns = ("code", "reason", "meaning", "retrying helps?", "the Job retries it")
    return _table(columns, rows)


def render_metrics_table() -> str:
    """The contract's metrics table (finetune_api.tasks.METRICS) as the training page
    lists it: what each score is, its unit and which way is better."""
    from finetune_api.tasks import METRICS

    rows = []
    for name, info in METRICS.items():
        twin = f"`{name}Before`" if info.before else "-"
        needs = "always" if info.needs is None else f"`{info.needs}`"
        tasks = ", ".join(info.tasks)
        rows.append((f"`{name}`", info.description, info.unit, info.better, tasks, needs, twin))
    columns = ("metric", "what", "unit", "better", "tasks", "measured", "base model")
    return _table(columns, rows)


def render_presets_table() -> str:
    """The model presets catalogue (finetune_api.config.presets) as a Markdown table:
    what each preset fills in, so the presets page cannot drift from the data."""
    from finetune_api.config.presets import load_catalogue

    rows = []
    for p in load_catalogue().values():
        lora, qlora, training = p.lora, p.qlora, p.training
        rows.append(
            (
                f"`{p.name}`",
                "<br>".join(f"`{m}`" for m in p.models),
                f"`{p.architecture}`",
                ", ".join(f"`{m}`" for m in p.target_modules),
                f"r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout:g}",
                f"r {qlora.r}, alpha {qlora.alpha}, {qlora.quant_type}"
                + (", double quant" if qlora.double_quant else ""),
                f"learningRate {training.learning_rate:g}, maxSeqLength {training.max_seq_length}",
            )
        )
    columns = ("preset", "models", "architecture", "targetModules", "lora", "qlora", "training")
    notes = [
        f"- **`{p.name}`** ({p.title}). Chat template: {p.chat_template}"
        + (f" {p.notes}" if p.notes else "")
        for p in load_catalogue().values()
    ]
    return _table(columns, rows) + "\n" + "\n".join(notes) + "\n"


# --------------------------------------------------------------------------- sections


class MarkerError(ValueError):
    """A page lacks a section's marker lines, or has them twice or out of order."""


@dataclass(frozen=True)
class Section:
    """A generated part of a docs page: everything between its two marker lines.

    The page's prose around the markers is written by hand; only the text between
    them belongs to the generator, so regenerating never touches the prose.
    """

    name: str
    """Names the markers: ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""
    page: str
    """The page, relative to the repository root, e.g. ``docs/reference/api.md``."""
    render: Callable[[], str]
    """The section's current text (Markdown ending in a newline)."""

    @property
    def start(self) -> str:
        return f"<!-- {self.name}:start -->"

    @property
    def end(self) -> str:
        return f"<!-- {self.name}:end -->"

    def current(self, text: str) -> str:
        """What the page carries between the markers now."""
        return self._split(text)[1]

    def fill(self, text: str) -> str:
        """The page ``text`` with this section regenerated (idempotent)."""
        head, _, tail = self._split(text)
        return f"{head}{self.start}\n{self.render()}{self.end}{tail}"

    def _split(self, text: str) -> tuple[str, str, str]:
        # The markers must sit on lines of their own, once each, start before end:
        # anything else would let a regeneration eat the page's prose.
        lines = text.splitlines()
        if lines.count(self.start) != 1 or lines.count(self.end) != 1:
            raise MarkerError(f"{self.page} needs one {self.start} line and one {self.end} line")
        head, _, rest = text.partition(self.start + "\n")
        between, found, tail = rest.partition(self.end)
        if not found:
            raise MarkerError(f"{self.page}: {self.start} must come before {self.end}")
        return head, between, tail


API_PAGE = "docs/reference/api.md"

SECTIONS: tuple[Section, ...] = (
    Section("fields", API_PAGE, render_field_table),
    Section("status-fields", API_PAGE, render_status_table),
    Section("rules", "docs/concepts/validation.md", render_rules_table),
    Section("exit-codes", "docs/reference/exit-codes.md", render_exit_code_table),
    Section("metrics", "docs/concepts/training.md", render_metrics_table),
    Section("presets", "docs/concepts/presets.md", render_presets_table),
)
"""The contract's generated sections, each naming its page (`make docs` writes them)."""
