"""Trainer telemetry without a training run: gauges, JSON lines, ranks, ports."""

from __future__ import annotations

import io
import json
import math
import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from finetune_trainer.loop import StepReport
from finetune_trainer.telemetry import (
    GAUGES,
    Progress,
    Telemetry,
    peak_memory_bytes,
    progress_for,
)

LINES = Progress(json_lines=True, bar=False)


def report(step: int = 3, **changes: Any) -> StepReport:
    fields: dict[str, Any] = {
        "step": step,
        "total_steps": 10,
        "epoch": 0.3,
        "loss": 1.25,
        "learning_rate": 2e-4,
        "tokens_per_second": 1234.56,
        "eta_seconds": 42.04,
        "grad_norm": 0.5,
        "samples": 24,
    }
    return StepReport(**{**fields, **changes})


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample on /metrics, by name and labels, parsed by prometheus-client."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[str, Any], name: str) -> float:
    return float(samples[name][()])


def test_step_lines_are_compact_json_with_every_field() -> None:
    out = io.StringIO()
    telemetry = Telemetry(progress=LINES, stream=out)
    telemetry.on_step(report(step=3))
    telemetry.on_step(report(step=4, loss=float("nan"), grad_norm=None))
    first, second = out.getvalue().splitlines()
    assert " " not in first
    line = json.loads(first)
    assert {k: line[k] for k in line if k != "peakMemoryBytes"} == {
        "event": "step",
        "step": 3,
        "totalSteps": 10,
        "epoch": 0.3,
        "loss": 1.25,
        "learningRate": 2e-4,
        "tokensPerSecond": 1234.6,
        "samples": 24,
        "etaSeconds": 42.0,
        "gradNorm": 0.5,
    }
    assert line["peakMemoryBytes"] > 1_000_000  # a Python process with torch loaded
    # NaN has no JSON spelling: a diverged loss is null, and the line still parses.
    later = json.loads(second)
    assert later["loss"] is None and "gradNorm" not in later
    assert telemetry.last_step == 4


def test_eval_lines_carry_the_step_and_measured_scores() -> None:
    out = io.StringIO()
    telemetry = Telemetry(progress=LINES, stream=out)
    telemetry.on_step(report(step=5))
    telemetry.on_eval({"evalLoss": 0.75, "perplexity": 2.117, "tokenAccuracy": None})
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert lines[-1] == {"event": "eval", "step": 5, "evalLoss": 0.75, "perplexity": 2.117}


def test_only_rank_zero_reports_but_every_rank_knows_its_step() -> None:
    out = io.StringIO()
    telemetry = Telemetry(port=0, addr="127.0.0.1", rank=1, progress=LINES, stream=out)
    with telemetry:
        telemetry.on_step(report(step=6))
        telemetry.on_eval({"evalLoss": 1.0})
        assert telemetry.port is None  # nothing served
    assert out.getvalue() == ""
    assert telemetry.last_step == 6


def test_metrics_are_served_on_their_own_registry_and_the_port_freed() -> None:
    first = Telemetry(job_name="job-a", method="lora", task="causal-lm", port=0, addr="127.0.0.1")
    second = Telemetry(job_name="job-b", method="ia3", port=0, addr="127.0.0.1")
    with first, second:
        assert first.port is not None and second.port is not None
        first.on_step(report(step=3))
        a, b = scrape(first.port), scrape(second.port)
        for name in GAUGES:
            assert f"finetune_trainer_{name}" in a, name
        assert value(a, "finetune_trainer_step") == 3
        assert value(a, "finetune_trainer_total_steps") == 10
        assert value(a, "finetune_trainer_train_loss") == 1.25
        assert value(a, "finetune_trainer_learning_rate") == 2e-4
        assert value(a, "finetune_trainer_samples_seen") == 24
        assert value(a, "finetune_trainer_peak_memory_bytes") > 1_000_000
        assert math.isnan(value(a, "finetune_trainer_eval_loss"))  # no evaluation yet
        info = a["finetune_trainer_job_info"]
        assert (("job", "job-a"), ("method", "lora"), ("task", "causal-lm")) in info
        assert value(b, "finetune_trainer_step") == 0  # another run's registry, untouched
        first.on_eval({"evalLoss": 0.5, "perplexity": 1.65})
        a = scrape(first.port)
        assert value(a, "finetune_trainer_eval_loss") == 0.5
        assert a["finetune_trainer_eval_score"][(("name", "perplexity"),)] == 1.65
        port = first.port
    assert first.port is None
    with socket.create_server(("127.0.0.1", port)):  # the port is free again
        pass


def test_a_taken_port_is_a_warning_and_the_run_goes_on(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = io.StringIO()
        with Telemetry(port=port, addr="127.0.0.1", progress=LINES, stream=out) as telemetry:
            telemetry.on_step(report())
            assert telemetry.port is None
    assert f"cannot serve trainer metrics on 127.0.0.1:{port}" in capsys.readouterr().err
    assert json.loads(out.getvalue())["step"] == 3


def test_peak_memory_is_the_process_peak_on_cpu() -> None:
    import psutil  # type: ignore[import-untyped]

    # ru_maxrss trails the current RSS by a page or so while memory grows.
    assert peak_memory_bytes() >= 0.95 * psutil.Process().memory_info().rss


def test_pods_log_json_lines_without_a_bar() -> None:
    assert progress_for(pod=True) == Progress(json_lines=True, bar=False)
    # Under pytest neither stream is a terminal: lines, and no bar to garble a log file.
    assert progress_for(pod=False) == Progress(json_lines=True, bar=False)


def test_the_docs_document_every_metric() -> None:
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "operations" / "metrics.md"
    text = page.read_text()
    for name in [*GAUGES, "eval_score{name}", "step_metric{name}", "job_info{job,method,task}"]:
        assert f"`finetune_trainer_{name}`" in text, name


def test_a_steps_extras_reach_the_json_line_and_a_labelled_gauge() -> None:
    """Reinforcement's per-step numbers (StepReport.extras) are in the step's JSON line
    (NaN as null) and on /metrics as finetune_trainer_step_metric{name}; they never
    replace the loop's own fields."""
    out = io.StringIO()
    extras = {"reward": 0.75, "kl": 0.01, "exactMatch": 0.5, "clipFraction": math.nan, "loss": 9}
    with Telemetry(port=0, addr="127.0.0.1", progress=LINES, stream=out) as telemetry:
        assert telemetry.port is not None
        telemetry.on_step(report(extras=extras))
        metrics = scrape(telemetry.port)
    line = json.loads(out.getvalue())
    assert line["reward"] == 0.75 and line["kl"] == 0.01 and line["exactMatch"] == 0.5
    assert line["clipFraction"] is None
    assert line["loss"] == 1.25  # the loop's loss, not an extra of the same name
    gauge = metrics["finetune_trainer_step_metric"]
    assert gauge[(("name", "reward"),)] == 0.75
    assert gauge[(("name", "exactMatch"),)] == 0.5


def test_the_extras_reach_the_experiment_trackers_finite_only() -> None:
    from finetune_trainer.tracking.base import step_metrics

    series = step_metrics(report(extras={"reward": 0.5, "kl": math.nan, "loss": 7.0}))
    assert series["reward"] == 0.5 and "kl" not in series
    assert series["loss"] == 1.25  # the loop's own loss wins over an extra of its name
