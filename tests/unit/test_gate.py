"""The evaluation gate: the spec's conditions, the verdict, the termination message, and
what the operator, Argo CD and Prometheus make of a failed gate."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.config import EvaluationSpec, JobSections
from finetune_api.config.gate import GateCondition
from finetune_api.gate import judge
from finetune_api.outcome import NOT_RETRYABLE_EXIT_CODES, ExitCode, TerminationMessage
from finetune_api.rules import _SETTING_CEL, violations
from finetune_api.tasks import METRICS
from finetune_operator.observation.metrics import OperatorMetrics
from finetune_trainer.outcome import published, termination_message

from .test_argocd_health import health
from .test_status import _failed_job, conditions, ftj, job, pod, run, terminated, trainer_message

# --------------------------------------------------------------------------- the spec


def gate(*conditions: dict[str, Any]) -> list[GateCondition]:
    return [GateCondition.model_validate(c) for c in conditions]


def refusal(condition: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as caught:
        GateCondition.model_validate(condition)
    return str(caught.value)


@pytest.mark.parametrize(
    ("condition", "words"),
    [
        ({"metric": "bleuu", "min": 0.2}, "'bleuu' is not a metric a run reports"),
        ({"metric": "accuracy"}, "set exactly one of min, max or minImprovement (found none)"),
        ({"metric": "accuracy", "min": 0.8, "max": 0.9}, "(found min, max); for a range"),
        ({"metric": "evalLoss", "min": 0.5}, "evalLoss is better when lower: bound it with max"),
        ({"metric": "accuracy", "max": 0.5}, "accuracy is better when higher: bound it with min"),
        ({"metric": "exactMatch", "min": 90}, "not a percentage: write 0.9 for 90%"),
        ({"metric": "exactMatch", "minImprovement": 5}, "write 0.05 for 5 points"),
        ({"metric": "perplexity", "max": 0.5}, "perplexity is at least 1; max 0.5 cannot be met"),
        ({"metric": "retentionLossIncrease", "minImprovement": 0.1}, "no Before value"),
    ],
)
def test_a_condition_that_cannot_mean_what_it_says_is_refused(
    condition: dict[str, Any], words: str
) -> None:
    assert words in refusal(condition)


def test_every_metric_setting_has_a_cel_twin() -> None:
    needs = {m.needs for m in METRICS.values() if m.needs is not None}
    assert needs == set(_SETTING_CEL)
    assert needs >= EvaluationSpec().metric_settings()


def facts_of(task: str, **evaluation: Any) -> Any:
    sections = JobSections.model_validate(
        {
            "task": task,
            "model": {"uri": "hf://o/m"},
            "dataset": {
                "train": "s3://data-bucket/t.jsonl",
                **({"format": "classification"} if task != "causal-lm" else {}),
            },
            "method": {"type": "lora"},
            "evaluation": evaluation,
        }
    )
    return sections.rule_facts("auto", "resources.strategy")


def test_the_task_must_report_the_metric() -> None:
    facts = facts_of(
        "sequence-classification",
        gate=[{"metric": "accuracy", "min": 0.9}, {"metric": "bleu", "min": 0.2}],
    )
    (problem,) = violations(facts)
    assert problem.field == "evaluation.gate[1].metric"
    assert "bleu is not reported for task sequence-classification" in problem.message
    assert "macroF1" in problem.message


def test_a_metric_turned_off_cannot_be_gated() -> None:
    (problem,) = violations(
        facts_of("causal-lm", exactMatchSamples=0, gate=[{"metric": "rougeL", "min": 0.5}])
    )
    assert problem.field == "evaluation.gate[0].metric"
    assert "evaluation.exactMatchSamples > 0" in problem.message
    (problem,) = violations(facts_of("causal-lm", gate=[{"metric": "retentionLoss", "max": 3}]))
    assert "evaluation.retention" in problem.message
    assert violations(facts_of("causal-lm", gate=[{"metric": "exactMatch", "min": 0.5}])) == []


# --------------------------------------------------------------------------- the verdict

METRICS_JSON = {
    "exactMatch": 0.5,
    "exactMatchBefore": 0.25,
    "evalLoss": 1.2,
    "evalLossBefore": 2.0,
    "tokenAccuracy": 0.95,
    "tokenAccuracyBefore": 0.9,
    "rougeL": None,
}


def test_absolute_conditions() -> None:
    verdict = judge(
        gate({"metric": "exactMatch", "min": 0.5}, {"metric": "evalLoss", "max": 1.2}),
        METRICS_JSON,
    )
    assert verdict.passed and verdict.failed == ()
    verdict = judge(gate({"metric": "exactMatch", "min": 0.9}), METRICS_JSON)
    assert not verdict.passed
    assert verdict.failed[0].describe() == "exactMatch 0.5 < min 0.9"
    assert verdict.as_manifest() == {
        "passed": False,
        "conditions": [{"metric": "exactMatch", "min": 0.9, "value": 0.5, "passed": False}],
        "failed": ["exactMatch 0.5 < min 0.9"],
    }


def test_relative_conditions_count_improvement_in_the_metrics_own_direction() -> None:
    # higher is better: 0.95 - 0.9 is 0.0499999... in floating point, and passes 0.05
    assert judge(gate({"metric": "tokenAccuracy", "minImprovement": 0.05}), METRICS_JSON).passed
    assert not judge(gate({"metric": "exactMatch", "minImprovement": 0.3}), METRICS_JSON).passed
    # lower is better: the loss fell by 0.8
    loss = judge(gate({"metric": "evalLoss", "minImprovement": 0.8}), METRICS_JSON)
    assert loss.passed and loss.results[0].improvement == pytest.approx(0.8)
    worse = judge(gate({"metric": "evalLoss", "minImprovement": 1.0}), METRICS_JSON)
    (failed,) = worse.failed
    assert failed.describe() == "evalLoss improved by 0.8 (2 -> 1.2) < minImprovement 1"
    # a negative bound: at most that much worse
    assert judge(gate({"metric": "exactMatch", "minImprovement": -0.1}), METRICS_JSON).passed


def test_an_unmeasured_metric_fails_the_gate() -> None:
    verdict = judge(
        gate({"metric": "rougeL", "min": 0.1}, {"metric": "bleu", "minImprovement": 0.0}),
        {**METRICS_JSON, "bleu": 0.3, "bleuBefore": float("nan")},
    )
    assert [r.describe() for r in verdict.failed] == [
        "rougeL min 0.1: not measured",
        "bleu minImprovement 0: not measured (before training)",
    ]


# --------------------------------------------------------------------------- the outcome


def test_exit_8_is_not_retried() -> None:
    assert ExitCode.EVALUATION_GATE_FAILED == 8
    assert ExitCode.EVALUATION_GATE_FAILED.reason == "EvaluationGateFailed"
    assert 8 in NOT_RETRYABLE_EXIT_CODES


def test_a_failed_gate_ends_the_run_failed_with_what_was_published() -> None:
    verdict = judge(gate({"metric": "exactMatch", "min": 0.9}), METRICS_JSON)
    files = [{"path": "adapter_model.safetensors", "size": 3, "sha256": "a" * 64}]
    outcome = published(7, "s3://b/out", "summary", files=files, metrics=METRICS_JSON, gate=verdict)
    assert (outcome.exit_code, outcome.outcome, outcome.reason) == (
        8,
        "Failed",
        "EvaluationGateFailed",
    )
    assert "exactMatch 0.5 < min 0.9" in outcome.message and "s3://b/out" in outcome.message
    message = TerminationMessage.parse(termination_message(outcome))
    assert message is not None
    assert message.gate == {"passed": False, "failed": ["exactMatch 0.5 < min 0.9"]}
    assert message.files and message.metrics and message.artifact_uri == "s3://b/out"

    passed = judge(gate({"metric": "exactMatch", "min": 0.5}), METRICS_JSON)
    ok = published(7, "s3://b/out", files=files, gate=passed)
    assert (ok.exit_code, ok.reason, ok.gate) == (0, "Succeeded", {"passed": True, "failed": []})
    assert published(7, "s3://b/out").gate is None


def test_the_gate_verdict_survives_a_message_too_long() -> None:
    failed = [f"exactMatch 0.{i} < min 0.9" for i in range(300)]
    message = TerminationMessage(
        outcome="Failed",
        reason="EvaluationGateFailed",
        message="evaluation gate failed",
        exit_code=8,
        gate={"passed": False, "failed": failed},
    )
    text = message.to_text()
    assert len(text) <= 4096
    parsed = TerminationMessage.parse(text)
    assert parsed is not None and parsed.gate == {"passed": False, "failed": []}


# --------------------------------------------------------------------------- the operator

SHA = "b" * 64


def gate_message(passed: bool) -> str:
    failed = [] if passed else ["exactMatch 0.42 < min 0.9"]
    return trainer_message(
        outcome="Succeeded" if passed else "Failed",
        reason="Succeeded" if passed else "EvaluationGateFailed",
        message="evaluation gate failed: exactMatch 0.42 < min 0.9 (1 of 1 conditions missed)"
        if not passed
        else "done",
        exitCode=0 if passed else 8,
        lastStep=20,
        artifactUri="s3://models/out/demo",
        files=[{"path": "adapter_model.safetensors", "size": 10, "sha256": SHA}],
        metrics={"exactMatch": 0.42, "evalLoss": 1.5},
        gate={"passed": passed, "failed": failed},
    )


def failed_gate_update() -> Any:
    ended = terminated(8, gate_message(False))
    return run(ftj(), _failed_job(), [pod(phase="Failed", ended=ended)])


def test_a_failed_gate_fails_the_job_with_the_condition_false() -> None:
    update = failed_gate_update()
    found = conditions(update)
    assert update.phase == "Failed"
    assert (found["Failed"]["status"], found["Failed"]["reason"]) == (
        "True",
        "EvaluationGateFailed",
    )
    gate_condition = found["EvaluationPassed"]
    assert (gate_condition["status"], gate_condition["reason"]) == ("False", "GateFailed")
    assert "exactMatch 0.42 < min 0.9" in gate_condition["message"]
    # published for inspection: the status says where, with the measured metrics
    assert update.patch["artifacts"]["uri"] == "s3://models/out/demo"
    assert update.patch["metrics"]["exactMatch"] == 0.42
    assert update.event is not None
    assert (update.event.type, update.event.reason) == ("Warning", "EvaluationGateFailed")
    assert "exactMatch 0.42 < min 0.9" in update.event.message


def test_a_passed_gate_sets_the_condition_true_and_no_gate_sets_none() -> None:
    complete = job({"type": "Complete", "status": "True"}, active=0, succeeded=1)
    passed = run(ftj(), complete, [pod(phase="Succeeded", ended=terminated(0, gate_message(True)))])
    assert passed.phase == "Succeeded"
    found = conditions(passed)["EvaluationPassed"]
    assert (found["status"], found["reason"]) == ("True", "GatePassed")
    plain = trainer_message(outcome="Succeeded", reason="Succeeded", exitCode=0)
    ungated = run(ftj(), complete, [pod(phase="Succeeded", ended=terminated(0, plain))])
    assert "EvaluationPassed" not in conditions(ungated)


def test_argo_cd_shows_a_failed_gate_degraded_with_its_conditions() -> None:
    state, message = health(ftj(failed_gate_update().patch))
    assert state == "Degraded"
    assert message.startswith("EvaluationGateFailed: ") and "exactMatch 0.42 < min 0.9" in message


def test_the_operator_counts_gate_verdicts_once() -> None:
    metrics = OperatorMetrics()
    body = ftj({"phase": "Running", "conditions": []})
    metrics.observe(body)
    update = failed_gate_update()
    metrics.observe(body, patch=update.patch)
    metrics.observe(body, patch=update.patch)  # a repeated derivation counts nothing
    sample = metrics.registry.get_sample_value
    assert sample("finetune_operator_evaluation_gates_total", {"result": "Failed"}) == 1
    assert sample("finetune_operator_evaluation_gates_total", {"result": "Passed"}) == 0
    # after a restart, a job first seen with its verdict is not counted again
    fresh = OperatorMetrics()
    fresh.observe(ftj(update.patch))
    assert (
        fresh.registry.get_sample_value(
            "finetune_operator_evaluation_gates_total", {"result": "Failed"}
        )
        == 0
    )
    json.dumps(update.patch)  # JSON-ready
