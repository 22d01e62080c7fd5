"""The spec field table: generated from the models, and the README carries it verbatim."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_api.docs import (
    END_MARKER,
    START_MARKER,
    FieldRow,
    field_rows,
    render_field_table,
)
from finetune_api.resource import FineTuneJobSpec
from finetune_cli.app import app

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
FIX = (
    f"run `make docs` (or put the output of `finetune docs` in README.md between "
    f"{START_MARKER} and {END_MARKER})"
)


@pytest.fixture(scope="module")
def rows() -> dict[str, FieldRow]:
    return {row.path: row for row in field_rows()}


def test_readme_carries_the_generated_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert text.count(START_MARKER) == 1, f"README.md needs one {START_MARKER}; {FIX}"
    assert text.count(END_MARKER) == 1, f"README.md needs one {END_MARKER}; {FIX}"
    between = text.split(START_MARKER, 1)[1].split(END_MARKER, 1)[0]
    assert between.strip() == render_field_table().strip(), f"README field table is stale; {FIX}"


def test_cli_prints_the_table() -> None:
    result = CliRunner().invoke(app, ["docs"])
    assert result.exit_code == 0, result.output
    assert result.stdout == render_field_table()


def test_every_spec_field_has_a_row(rows: dict[str, FieldRow]) -> None:
    # Not a hand-written list: every wire name of every section model appears.
    for name, info in FineTuneJobSpec.model_fields.items():
        assert f"spec.{info.alias or name}" in rows
    assert "spec.training.learningRate" in rows
    assert "spec.method.qlora.quantType" in rows
    assert "spec.dataset.columns.system" in rows
    assert "spec.resources.tolerations[].effect" in rows
    assert not any(path.startswith("status") for path in rows)


def test_rows_carry_type_default_bounds_and_description(rows: dict[str, FieldRow]) -> None:
    lr = rows["spec.training.learningRate"]
    assert (lr.type, lr.default, lr.allowed) == ("number", "`0.0002`", "> 0, ≤ 1")
    assert lr.description == "Peak learning rate."
    split = rows["spec.dataset.validationSplit"]
    assert (split.type, split.default, split.allowed) == ("number", "", "> 0, < 1")
    r = rows["spec.method.lora.r"]
    assert (r.type, r.default, r.allowed) == ("integer", "`16`", "≥ 1, ≤ 1024")
    method = rows["spec.method.type"]
    assert method.default == "`lora`"
    assert method.allowed == (
        "`lora`, `qlora`, `adalora`, `ia3`, `full`, `freeze`, `prefix`, `prompt`, `p-tuning`"
    )
    assert rows["spec.model.uri"].default == "required"
    assert rows["spec.model.trustRemoteCode"].default == "`false`"
    assert rows["spec.method.lora.targetModules"].type == "string or []string"
    assert rows["spec.resources.cpu"].type == "integer or string"
    assert rows["spec.resources.nodeSelector"].type == "map[string]string"
    assert rows["spec.resources.tolerations"].type == "[]object"
    assert rows["spec.model"].description == "The base model to fine-tune."


def test_every_row_has_a_description(rows: dict[str, FieldRow]) -> None:
    assert [path for path, row in rows.items() if not row.description] == []


def test_table_is_well_formed_markdown() -> None:
    lines = render_field_table().splitlines()
    assert lines[0] == "| Field | Type | Default | Allowed | Description |"
    for line in lines:
        # a raw pipe inside a cell (e.g. in a regex) would split the row
        cells = line.replace("\\|", "").split("|")
        assert len(cells) == 7, line
    assert len(lines) == len(field_rows()) + 2


def test_pipes_in_cells_are_escaped() -> None:
    row = FieldRow("spec.x", "string", "", "pattern `a|b`", "one | two")
    line = render_field_table([row]).splitlines()[-1]
    assert line == "| `spec.x` | string |  | pattern `a\\|b` | one \\| two |"


# --------------------------------------------------------------------------- rules, exit codes


@pytest.mark.parametrize("name", ["rules", "exit-codes"])
def test_readme_carries_the_generated_rules_and_exit_codes(name: str) -> None:
    from finetune_api.docs import GENERATED_SECTIONS, render_section

    start, end = GENERATED_SECTIONS[name]
    text = README.read_text(encoding="utf-8")
    assert text.count(start) == 1 and text.count(end) == 1, f"README.md needs {start}; {FIX}"
    between = text.split(start, 1)[1].split(end, 1)[0]
    assert between.strip() == render_section(name).strip(), f"README {name} is stale; {FIX}"


def test_the_rules_table_has_a_row_per_rule_and_the_exit_table_a_row_per_code() -> None:
    from finetune_api.docs import render_exit_code_table, render_rules_table
    from finetune_api.outcome import ExitCode
    from finetune_api.rules import RULES

    rules = render_rules_table().splitlines()[2:]
    assert len(rules) == len(RULES)
    for rule, row in zip(RULES, rules, strict=True):
        assert rule.field in row and rule.summary.split(":")[0] in row
    codes = render_exit_code_table().splitlines()[2:]
    assert [row.split("|")[1].strip() for row in codes] == [f"`{int(c)}`" for c in ExitCode]
    assert "| `6` | `OutOfMemory` |" in render_exit_code_table()
