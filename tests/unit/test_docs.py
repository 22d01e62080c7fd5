"""The site's generated sections: field, status, rules and exit-code tables from the
contract, the CLI reference from the command tree; every page carries them current."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer._click import Command, Context
from typer.core import TyperArgument, TyperGroup
from typer.testing import CliRunner

from finetune_api.docs import (
    SECTIONS,
    FieldRow,
    MarkerError,
    Section,
    field_rows,
    render_field_table,
    render_status_table,
)
from finetune_api.resource import FineTuneJobSpec, FineTuneJobStatus
from finetune_cli.app import app
from finetune_cli.reference import CLI_PAGE, generated_sections, render_cli_reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
FIX = "run `make docs` (scripts/update_docs.py rewrites every generated section)"


@pytest.fixture(scope="module")
def rows() -> dict[str, FieldRow]:
    return {row.path: row for row in field_rows()}


@pytest.fixture(scope="module")
def status_rows() -> dict[str, FieldRow]:
    return {row.path: row for row in field_rows(FineTuneJobStatus, "status")}


# --------------------------------------------------------------------------- pages


@pytest.mark.parametrize("section", generated_sections(), ids=lambda s: f"{s.page}:{s.name}")
def test_every_generated_section_is_current(section: Section) -> None:
    text = (ROOT / section.page).read_text(encoding="utf-8")
    try:
        current = section.current(text)
    except MarkerError as exc:
        pytest.fail(f"{exc}; put them back where the section goes, then {FIX}")
    assert current == section.render(), (
        f"{section.page}: the {section.name} section is stale; {FIX}"
    )


def test_every_marker_in_the_docs_has_a_generator() -> None:
    # A marker pair no generator owns would silently stay empty (or stale) forever.
    owned = {(s.page, s.name) for s in generated_sections()}
    found = {
        (page.relative_to(ROOT).as_posix(), name)
        for page in DOCS.rglob("*.md")
        for name in re.findall(r"^<!-- ([\w-]+):start -->$", page.read_text("utf-8"), re.M)
    }
    assert found - owned == set()
    assert {page for page, _ in owned} <= {
        p.relative_to(ROOT).as_posix() for p in DOCS.rglob("*.md")
    }


def test_sections_name_their_pages_and_markers() -> None:
    by_name = {s.name: s for s in generated_sections()}
    assert set(by_name) == {
        "fields",
        "status-fields",
        "rules",
        "exit-codes",
        "metrics",
        "presets",
        "cli",
    }
    assert by_name["fields"].page == by_name["status-fields"].page == "docs/reference/api.md"
    assert by_name["cli"].page == CLI_PAGE == "docs/reference/cli.md"
    assert (by_name["rules"].start, by_name["rules"].end) == (
        "<!-- rules:start -->",
        "<!-- rules:end -->",
    )
    # the contract's list holds no CLI section: the contract never imports the CLI
    assert "cli" not in {s.name for s in SECTIONS}


def test_fill_rewrites_only_between_the_markers_and_is_idempotent() -> None:
    section = Section("x", "page.md", lambda: "| a |\n")
    page = "# Title\n\nprose before\n\n<!-- x:start -->\nold\n<!-- x:end -->\n\nprose after\n"
    once = section.fill(page)
    assert (
        once
        == "# Title\n\nprose before\n\n<!-- x:start -->\n| a |\n<!-- x:end -->\n\nprose after\n"
    )
    assert section.fill(once) == once
    assert section.current(once) == "| a |\n"


@pytest.mark.parametrize(
    "page",
    [
        "no markers\n",
        "<!-- x:start -->\n",
        "<!-- x:end -->\n<!-- x:start -->\n",
        "<!-- x:start -->\n<!-- x:start -->\n<!-- x:end -->\n",
        "inline <!-- x:start --> <!-- x:end -->\n",
    ],
)
def test_fill_refuses_missing_doubled_or_misplaced_markers(page: str) -> None:
    with pytest.raises(MarkerError):
        Section("x", "page.md", lambda: "").fill(page)


# --------------------------------------------------------------------------- spec fields


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
        "`lora`, `qlora`, `adalora`, `ia3`, `full`, `freeze`, `prefix`, `prompt`, `p-tuning`, "
        "`vera`, `lora-fa`, `adapter`, `progressive`"
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


# --------------------------------------------------------------------------- status fields


def test_every_status_field_has_a_row(status_rows: dict[str, FieldRow]) -> None:
    for name, info in FineTuneJobStatus.model_fields.items():
        assert f"status.{info.alias or name}" in status_rows
    for path in (
        "status.phase",
        "status.conditions[].reason",
        "status.conditions[].lastTransitionTime",
        "status.progress.percent",
        "status.plan.memoryPerDevice",
        "status.artifacts.files[].sha256",
        "status.trackers",
    ):
        assert path in status_rows, path


def test_status_rows_carry_type_and_values(status_rows: dict[str, FieldRow]) -> None:
    phase = status_rows["status.phase"]
    assert phase.type == "string"
    assert phase.allowed == "`Pending`, `Running`, `Succeeded`, `Failed`, `Suspended`"
    assert status_rows["status.conditions"].type == "[]object"
    assert status_rows["status.conditions[].lastTransitionTime"].type == "string (date-time)"
    assert status_rows["status.progress.percent"].allowed == "≥ 0, ≤ 100"
    assert status_rows["status.trackers"].type == "map[string]string"


def test_status_table_lists_every_status_row_without_a_default_column(
    status_rows: dict[str, FieldRow],
) -> None:
    lines = render_status_table().splitlines()
    assert lines[0] == "| Field | Type | Values | Description |"
    assert [line.split(" | ")[0].removeprefix("| ") for line in lines[2:]] == [
        f"`{path}`" for path in status_rows
    ]
    for line in lines:
        assert len(line.replace("\\|", "").split("|")) == 6, line


# --------------------------------------------------------------------------- CLI reference


def _commands(command: Command, ctx: Context) -> Iterator[tuple[Command, Context]]:
    """The app's command tree as typer builds it, walked here independently."""
    yield command, ctx
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None
            sub_ctx = sub.context_class(sub, info_name=name, parent=ctx, **sub.context_settings)
            yield from _commands(sub, sub_ctx)


def _tree(typer_app: typer.Typer) -> list[tuple[Command, Context]]:
    root = typer.main.get_command(typer_app)
    return list(
        _commands(root, root.context_class(root, info_name="finetune", **root.context_settings))
    )


def _command_sections(markdown: str) -> dict[str, str]:
    """``finetune plan`` -> the text of its section on the page."""
    parts = re.split(r"^### `([^`]+)`$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_the_cli_page_lists_every_command_and_each_of_its_options() -> None:
    page = (ROOT / CLI_PAGE).read_text(encoding="utf-8")
    sections = _command_sections(
        page.split("<!-- cli:start -->", 1)[1].split("<!-- cli:end -->")[0]
    )
    tree = _tree(app)
    assert [ctx.command_path for _, ctx in tree] == list(sections), f"commands differ; {FIX}"
    assert len(tree) > 5
    for command, ctx in tree:
        section = sections[ctx.command_path]
        assert f"```text\n{ctx.command_path} " in section
        for param in command.get_params(ctx):
            if isinstance(param, TyperArgument):  # shown by its metavar, as in the usage
                name = param.metavar or param.name
                assert f"| `{name}" in section, f"{ctx.command_path}: {name} missing; {FIX}"
            for opt in [*param.opts, *param.secondary_opts]:
                if opt.startswith("-"):
                    assert f"`{opt}`" in section, f"{ctx.command_path}: {opt} missing; {FIX}"


def test_the_cli_reference_is_plain_markdown() -> None:
    text = render_cli_reference()
    assert "\x1b" not in text  # no terminal colours
    assert "╭" not in text and "│" not in text  # nor the help formatter's boxes


def _toy() -> typer.Typer:
    toy = typer.Typer(name="toy", help="A toy CLI.", add_completion=False)

    @toy.command()
    def go(
        files: Annotated[list[Path], typer.Argument(help="Inputs.")],
        level: Annotated[int, typer.Option("--level", "-l", min=1, max=9, help="How much.")] = 3,
        tag: Annotated[list[str] | None, typer.Option("--tag", help="Repeat me.")] = None,
        fast: Annotated[bool, typer.Option("--fast/--slow", help="Speed.")] = True,
        dry: Annotated[bool, typer.Option("--dry", help="Pretend.")] = False,
        token: Annotated[str, typer.Option(envvar="TOY_TOKEN", help="A *secret*.")] = "x",
        pair: Annotated[str | None, typer.Option(metavar="K=V", help="[bold]One[/bold].")] = None,
        secret: Annotated[str, typer.Option(hidden=True)] = "",
    ) -> None:
        """Go somewhere.

        Second paragraph, with <angle> and snake_case.
        \f
        Not shown: after the form feed.
        """

    @toy.command(hidden=True)
    def ghost() -> None:
        """Never listed."""

    sub = typer.Typer(help="Nested commands.")

    @sub.command()
    def leaf() -> None:
        """A leaf."""

    toy.add_typer(sub, name="nest")
    return toy


def test_the_cli_reference_renders_usage_arguments_options_and_defaults() -> None:
    sections = _command_sections(render_cli_reference(_toy()))
    assert list(sections) == ["toy", "toy go", "toy nest", "toy nest leaf"]
    go = sections["toy go"]
    assert "```text\ntoy go [OPTIONS] " in go
    assert "Go somewhere.\n\nSecond paragraph, with &lt;angle> and snake\\_case.\n" in go
    assert "form feed" not in go
    assert "| `files...` | list[Path] | required | Inputs. |" in go
    assert "| `-l`, `--level` | int, ≥ 1, ≤ 9 | `3` | How much. |" in go
    assert "| `--tag` | list[str], repeatable |  | Repeat me. |" in go
    assert "| `--fast` / `--slow` | flag | `--fast` | Speed. |" in go
    assert "| `--dry` | flag |  | Pretend. |" in go
    assert "| `--token` | str | `x` | A \\*secret\\*. Environment: $TOY\\_TOKEN. |" in go
    assert "| `--pair` | K=V |  | One. |" in go  # Rich markup shown as the terminal does
    assert "--secret" not in go and "ghost" not in str(sections)
    assert "`--help`" in go
    assert "Nested commands." in sections["toy nest"]


def test_the_metrics_table_lists_every_score_of_the_contract() -> None:
    from finetune_api.docs import render_metrics_table
    from finetune_api.tasks import METRICS

    table = render_metrics_table()
    for name, info in METRICS.items():
        assert f"| `{name}` |" in table
        assert f"| {info.unit} | {info.better} |" in table
