"""The evaluation gate end to end on the tiny model: a gate that cannot pass publishes a
complete, verifiable set whose manifest says so, and the run fails with exit 8; one that
passes ends as a success with the verdict recorded."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from finetune_api.manifests import check_documents
from finetune_api.outcome import ExitCode, TerminationMessage
from finetune_api.render import render_trainer_config
from finetune_cli.app import app
from finetune_trainer.publish import verify_manifest

runner = CliRunner()

# Perplexity is exp(loss) and never reaches 1 on real data: a gate nobody passes.
IMPOSSIBLE = {"metric": "perplexity", "max": 1.0}
EASY = {"metric": "evalLoss", "max": 1000.0}


def run_cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_a_failed_gate_publishes_then_fails_with_exit_8(make_job: Any, tmp_path: Path) -> None:
    """The pod's path: `finetune train` writes the termination message the operator reads."""
    job_path = make_job(training={"maxSteps": 2}, evaluation={"gate": [EASY, IMPOSSIBLE]})
    [doc] = check_documents(job_path.read_text(), str(job_path))
    assert doc.job is not None
    config_file = tmp_path / "trainer.json"
    config_file.write_text(render_trainer_config(doc.job).to_json())
    log = tmp_path / "termination-log"
    result = run_cli("train", "--config", str(config_file), "--termination-log", str(log))

    assert result.exit_code == ExitCode.EVALUATION_GATE_FAILED == 8, result.output
    assert "evaluation gate failed: perplexity" in result.output
    assert "> max 1" in result.output
    out = job_path.parent / "out"
    # Published in full, so the failed model can be inspected, and vouched for as such.
    assert verify_manifest(out) == []
    assert run_cli("verify", f"file://{out}").exit_code == 0
    gate = json.loads((out / "manifest.json").read_text())["gate"]
    assert gate["passed"] is False
    measured = json.loads((out / "metrics.json").read_text())["perplexity"]
    by_metric = {c["metric"]: c for c in gate["conditions"]}
    assert by_metric["perplexity"] == {
        "metric": "perplexity",
        "max": 1.0,
        "value": measured,
        "passed": False,
    }
    assert by_metric["evalLoss"]["passed"] is True
    assert len(gate["failed"]) == 1 and gate["failed"][0].startswith("perplexity ")

    message = TerminationMessage.parse(log.read_text())
    assert message is not None
    assert (message.outcome, message.reason, message.exit_code) == (
        "Failed",
        "EvaluationGateFailed",
        8,
    )
    assert message.gate == {"passed": False, "failed": gate["failed"]}
    assert message.artifact_uri == f"file://{out}"
    assert message.files and message.metrics and "perplexity" in message.message


def test_a_passed_gate_is_a_success_with_its_verdict(make_job: Any) -> None:
    job = make_job(
        training={"maxSteps": 1},
        evaluation={"gate": [EASY, {"metric": "tokenAccuracy", "min": 0.0}]},
    )
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    assert "evaluation gate passed (2 conditions met)" in result.output
    manifest = json.loads((job.parent / "out" / "manifest.json").read_text())
    assert manifest["gate"]["passed"] is True and manifest["gate"]["failed"] == []


def test_no_gate_no_verdict(make_job: Any) -> None:
    job = make_job(training={"maxSteps": 1})
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    assert "evaluation gate" not in result.output
    assert "gate" not in json.loads((job.parent / "out" / "manifest.json").read_text())
