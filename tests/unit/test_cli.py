"""The finished feel of ``finetune``: --version, -h, help a person can read, ``--set``
overrides that go through the manifest's own validation and reach what a run records,
local paths wherever a file:// URI is taken, ``finetune docs FIELD``, shell completion.

No training runs: ``finetune run`` is exercised with the trainer's run_training replaced
by a stand-in that records the TrainerConfig it was given.
"""

from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import typer.core
import yaml
from typer.main import get_command
from typer.testing import CliRunner

from finetune_api.docs import field_rows
from finetune_api.overrides import (
    Override,
    OverrideError,
    apply_overrides,
    check_with_overrides,
    parse_override,
)
from finetune_cli.app import EXIT_INVALID, app, complete_field, complete_set
from finetune_cli.fields import UnknownField, select
from finetune_cli.uris import as_uri

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "manifests" / "valid" / "minimal.yaml"

runner = CliRunner()
COMMANDS = sorted(get_command(app).commands)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- version, help


def test_version_prints_the_installed_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"finetune {metadata.version('finetune-operator')}"


@pytest.mark.parametrize("command", [[], *[[name] for name in COMMANDS]])
def test_h_is_help_on_the_app_and_every_command(command: list[str]) -> None:
    short = runner.invoke(app, [*command, "-h"], env={"COLUMNS": "200"})
    assert short.exit_code == 0, short.output
    assert short.stdout == runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"}).stdout
    assert "Usage: finetune" in short.stdout


# Typer's own labels: {files}..., <list[Path]>, <bool>, <str>, <path>, <int range>.
PLACEHOLDER = re.compile(r"\{\w+\}|<(?:list\[|bool|str|int|float|path|Path)[^>]*>")


@pytest.mark.parametrize("command", [[], *[[name] for name in COMMANDS]])
def test_help_shows_no_python_placeholders(
    command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither in the Rich panels nor in the plain help (``TYPER_USE_RICH=0``)."""
    for rich in (True, False):
        monkeypatch.setattr(typer.core, "HAS_RICH", rich)
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
        for bad in ("{files}", "<list[", "<bool>"):
            assert bad not in result.stdout
        assert PLACEHOLDER.findall(result.stdout) == [], result.stdout


def test_help_names_parameters_by_what_is_typed() -> None:
    shown = {
        name: runner.invoke(app, [name, "--help"], env={"COLUMNS": "200"}).stdout
        for name in ("validate", "verify", "run")
    }
    assert "Usage: finetune validate [OPTIONS] FILE..." in shown["validate"]
    assert "Usage: finetune verify [OPTIONS] URI" in shown["verify"]
    assert "PATH=VALUE" in shown["run"] and "URI" in shown["run"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_shows_examples(command: str) -> None:
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert "Examples:" in result.stdout
    assert f"finetune {command}" in result.stdout.split("Examples:")[1]


def test_a_list_example_survives_rich_markup() -> None:
    """Rich reads ``[q_proj,v_proj]`` as a style tag unless it is escaped."""
    result = runner.invoke(app, ["validate", "--help"], env={"COLUMNS": "300"})
    assert "targetModules=[q_proj,v_proj]" in result.stdout


# --------------------------------------------------------------------------- completion


def test_shell_completion_is_offered() -> None:
    shown = runner.invoke(app, ["--help"], env={"COLUMNS": "200"}).stdout
    assert "--install-completion" in shown and "--show-completion" in shown
    script = runner.invoke(app, ["--show-completion", "bash"])
    assert script.exit_code == 0
    assert "_FINETUNE_COMPLETE" in script.stdout


def test_completion_knows_the_fields() -> None:
    assert complete_set("training.learningR") == ["training.learningRate="]
    assert "metadata.name=" in complete_set("meta")
    assert complete_field("spec.training.learningR") == ["training.learningRate"]


# --------------------------------------------------------------------------- --set, pure


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("training.learningRate=1e-4", 1e-4),
        ("method.lora.r=8", 8),
        ("training.packing=true", True),
        ("method.lora.targetModules=[q_proj,v_proj]", ["q_proj", "v_proj"]),
        ("model.uri=hf://org/name", "hf://org/name"),
        ("model.revision=", None),
    ],
)
def test_a_value_is_read_as_yaml(text: str, value: Any) -> None:
    parsed = parse_override(text).value
    assert parsed == value and type(parsed) is type(value)


def test_the_leading_spec_is_optional_and_names_are_written_by_alias() -> None:
    expected = Override(("spec", "training", "learningRate"), 1e-4)
    assert parse_override("spec.training.learningRate=1e-4") == expected
    assert parse_override("training.learningRate=1e-4") == expected
    assert parse_override("training.learning_rate=1e-4") == expected
    assert parse_override("metadata.name=x").path == ("metadata", "name")


@pytest.mark.parametrize(
    ("text", "named", "hint"),
    [
        ("training.learningRat=1", "spec.training.learningRat", "spec.training.learningRate"),
        ("spec.lora.r=8", "spec.lora.r", "spec.method.lora.r"),
        ("learningRate=1", "spec.learningRate", "spec.training.learningRate"),
    ],
)
def test_an_unknown_path_is_refused_by_name_with_the_closest_field(
    text: str, named: str, hint: str
) -> None:
    with pytest.raises(OverrideError) as caught:
        parse_override(text)
    assert caught.value.field == named
    assert str(caught.value).startswith(f"--set {named}: unknown field")
    assert f"did you mean {hint}?" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("training.learningRate", "write path=value"),
        ("training..epochs=1", "empty name"),
        ("training.learningRate.x=1", "spec.training.learningRate is a value, not a section"),
        ("dataset.mixture.weight=2", "spec.dataset.mixture is a list, not a section"),
        ("training.learningRate=: x", "not valid YAML"),
    ],
)
def test_a_malformed_override_says_what_to_write(text: str, message: str) -> None:
    with pytest.raises(OverrideError, match=re.escape(message)):
        parse_override(text)


def test_apply_creates_missing_sections_and_leaves_the_input_alone() -> None:
    body = yaml.safe_load(MINIMAL.read_text())
    before = json.dumps(body, sort_keys=True)
    out = apply_overrides(
        body,
        [
            parse_override("training.learningRate=1e-4"),
            parse_override("method.lora.r=8"),
            parse_override("training.learningRate=2e-4"),  # the last one wins
        ],
    )
    assert out["spec"]["training"] == {"learningRate": 2e-4}
    assert out["spec"]["method"] == {"lora": {"r": 8}}
    assert json.dumps(body, sort_keys=True) == before


def test_overridden_documents_are_validated_like_the_file() -> None:
    [doc] = check_with_overrides(
        MINIMAL.read_text(), str(MINIMAL), [parse_override("training.learningRate=abc")]
    )
    assert doc.job is None
    assert [p.path for p in doc.problems] == ["spec.training.learningRate"]

    [doc] = check_with_overrides(
        MINIMAL.read_text(), str(MINIMAL), [parse_override("training.epochs=3")]
    )
    assert doc.job is not None and doc.job.spec.training.epochs == 3


# --------------------------------------------------------------------------- --set, CLI


def test_validate_set_type_error_names_the_field_and_exits_2() -> None:
    result = runner.invoke(
        app, ["validate", str(MINIMAL), "--set", "spec.training.learningRate=abc"]
    )
    assert result.exit_code == EXIT_INVALID == 2
    assert "spec.training.learningRate" in result.stderr
    assert "(from --set)" in result.stderr


def test_validate_set_unknown_path_is_named() -> None:
    result = runner.invoke(app, ["validate", str(MINIMAL), "--set", "training.learningRat=1"])
    assert result.exit_code == 2
    assert "spec.training.learningRat: unknown field" in result.stderr
    assert "spec.training.learningRate" in result.stderr


def test_validate_set_breaking_a_bound_is_refused_and_a_good_one_passes() -> None:
    bad = runner.invoke(app, ["validate", str(MINIMAL), "--set", "training.learningRate=2"])
    assert bad.exit_code == 2
    assert "spec.training.learningRate" in bad.stderr
    good = runner.invoke(
        app,
        [
            "validate",
            str(MINIMAL),
            "--set",
            "training.learningRate=1e-4",
            "--set",
            "method.lora.targetModules=[q_proj,v_proj]",
        ],
    )
    assert good.exit_code == 0, good.output


class RecordedRun:
    """Stands in for run_training: keeps the TrainerConfig the run was handed."""

    def __init__(self) -> None:
        self.config: Any = None

    def __call__(self, config: Any, telemetry: Any) -> Any:
        from finetune_trainer.runner import RunResult

        self.config = config
        metrics = {"steps": 1, "trainSeconds": 1.0, "tokensPerSecond": 10.0}
        return RunResult(config.output.uri, metrics)


def test_run_records_the_overridden_spec_and_takes_a_path_for_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer import runner as trainer_runner
    from finetune_trainer.publish import build_manifest

    recorded = RecordedRun()
    monkeypatch.setattr(trainer_runner, "run_training", recorded)
    monkeypatch.chdir(tmp_path)

    result = runner.invoke(
        app,
        [
            "run",
            str(MINIMAL),
            "--output",
            "out/adapter",
            "--set",
            "training.learningRate=1e-4",
            "--set",
            "spec.method.lora.r=8",
            "--set",
            "method.lora.targetModules=[q_proj,v_proj]",
            "--set",
            "training.packing=true",
            "--set",
            "training.metricsPort=0",
        ],
        catch_exceptions=False,
    )

    assert result.exit_code == 0, result.output
    config = recorded.config
    assert config.output.uri == f"file://{tmp_path}/out/adapter"
    # What the run publishes in manifest.json is the spec as overridden.
    spec = build_manifest([], config, {})["spec"]
    assert spec["training"]["learningRate"] == 1e-4
    assert spec["training"]["packing"] is True
    assert spec["method"]["lora"]["r"] == 8
    assert spec["method"]["lora"]["targetModules"] == ["q_proj", "v_proj"]


# --------------------------------------------------------------------------- paths as URIs


def test_a_bare_path_becomes_an_absolute_file_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert as_uri("artifacts/x") == f"file://{tmp_path}/artifacts/x"
    assert as_uri("./artifacts/../x") == f"file://{tmp_path}/x"
    assert as_uri("/data/out") == "file:///data/out"
    assert as_uri("100%") == f"file://{tmp_path}/100%25"
    for uri in ("file://./artifacts/x", "s3://bucket/key", "pvc://claim/x"):
        assert as_uri(uri) == uri


def test_verify_takes_a_relative_path_like_a_file_uri(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from finetune_trainer.publish import file_entries

    published = tmp_path / "artifacts" / "job"
    published.mkdir(parents=True)
    (published / "adapter.bin").write_bytes(b"weights")
    (published / "manifest.json").write_text(json.dumps({"files": file_entries(published)}))
    monkeypatch.chdir(tmp_path)

    for location in ("artifacts/job", "./artifacts/job", "file://./artifacts/job"):
        result = runner.invoke(app, ["verify", location])
        assert result.exit_code == 0, result.output
        assert "every file matches manifest.json" in result.stdout

    (published / "adapter.bin").write_bytes(b"tampered")
    assert runner.invoke(app, ["verify", "artifacts/job"]).exit_code == 1


# --------------------------------------------------------------------------- docs FIELD


def _row(path: str) -> Any:
    return next(row for row in field_rows() if row.path == path)


@pytest.mark.parametrize(
    "query", ["spec.training.learningRate", "training.learningRate", "learningRate"]
)
def test_docs_field_prints_that_row_only(query: str) -> None:
    row = _row("spec.training.learningRate")
    result = runner.invoke(app, ["docs", query])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == row.path
    assert row.default.strip("`") in result.stdout
    assert [line for line in lines if line.startswith("spec.")] == [row.path]


def test_docs_prefix_prints_the_subtree() -> None:
    result = runner.invoke(app, ["docs", "spec.method.lora"])
    assert result.exit_code == 0, result.output
    heads = [line for line in result.stdout.splitlines() if line.startswith("spec.")]
    expected = [
        row.path
        for row in field_rows()
        if row.path == "spec.method.lora" or row.path.startswith("spec.method.lora.")
    ]
    assert heads == expected and "spec.method.lora.r" in heads
    assert len(result.stdout) < 5000


def test_docs_unknown_field_exits_2_with_close_matches() -> None:
    result = runner.invoke(app, ["docs", "training.learningRat"])
    assert result.exit_code == 2
    assert "spec.training.learningRate" in result.stderr
    with pytest.raises(UnknownField):
        select(field_rows(), "nothing.like.this")


def test_export_reports_a_failure_through_the_redaction_layer(tmp_path: Path) -> None:
    """export's error line goes through the same reporter as every command: the exit
    code is the trainer's (2: not a published set), and a credential of this environment
    is never printed."""
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLE"
    missing = tmp_path / secret / "set"
    result = runner.invoke(
        app,
        ["export", str(missing), "--to", str(tmp_path / "out")],
        env={"AWS_SECRET_ACCESS_KEY": secret},
    )
    assert result.exit_code == 2, result.output  # no manifest.json: not a published set
    assert "no manifest.json" in result.output
    assert secret not in result.output and "***" in result.output
