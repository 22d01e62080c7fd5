"""What a running trainer tells the world, on a tiny random Llama: /metrics scraped in
the middle of a real run, JSON progress lines, exit codes and the termination message."""

from __future__ import annotations

import json
import math
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from finetune_api.manifests import check_documents
from finetune_api.render import render_trainer_config
from finetune_cli.app import app
from finetune_trainer import loop
from finetune_trainer.loop import StepReport
from finetune_trainer.telemetry import Telemetry

runner = CliRunner()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def trainer_config_file(job: Path) -> Path:
    """The job rendered as the operator would render it for a pod."""
    [doc] = check_documents(job.read_text(), str(job))
    assert doc.job is not None
    path = job.parent / "trainer.json"
    path.write_text(render_trainer_config(doc.job).to_json())
    return path


def train_cli(config: Path, termination_log: Path) -> Any:
    args = ["train", "--config", str(config), "--termination-log", str(termination_log)]
    return runner.invoke(app, args, catch_exceptions=False)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples.setdefault(sample.name, {})[labels] = sample.value
    return samples


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_metrics_mid_run_json_lines_and_success_message(
    make_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`finetune train` on the pod's path: scraped while paused after step 6 of 12."""
    port = free_port()
    job = make_job(training={"metricsPort": port}, evaluation={"everySteps": 3})
    paused, resume = threading.Event(), threading.Event()
    on_step = Telemetry.on_step

    def pausing(self: Telemetry, report: StepReport) -> None:
        on_step(self, report)
        if report.step == 6:
            paused.set()
            resume.wait(60)

    monkeypatch.setattr(Telemetry, "on_step", pausing)
    results: list[Any] = []
    log = tmp_path / "termination-log"
    worker = threading.Thread(
        target=lambda: results.append(train_cli(trainer_config_file(job), log))
    )
    worker.start()
    try:
        assert paused.wait(120), "the run never reached step 6"
        mid = scrape(port)
    finally:
        resume.set()
        worker.join(120)
    [result] = results
    assert result.exit_code == 0, result.output

    def gauge(name: str) -> float:
        return float(mid[f"finetune_trainer_{name}"][()])

    # Cleaning leaves 4 distinct training examples: one batch, so one epoch, per step.
    assert (gauge("step"), gauge("total_steps"), gauge("epoch")) == (6, 12, 6.0)
    assert gauge("samples_seen") == 6 * 4
    assert 0 < gauge("train_loss") < 20
    assert gauge("learning_rate") > 0
    assert gauge("tokens_per_second") > 0 and gauge("eta_seconds") > 0
    assert gauge("peak_memory_bytes") > 50 * 2**20  # torch alone is more than this
    assert (("job", "tiny"), ("method", "lora"), ("task", "causal-lm")) in mid[
        "finetune_trainer_job_info"
    ]
    metrics = json.loads((job.parent / "out" / "metrics.json").read_text())
    # Paused before step 6's evaluation: the gauge holds step 3's.
    assert gauge("eval_loss") == pytest.approx(metrics["evalHistory"][0]["evalLoss"])
    history = {h["step"]: h for h in metrics["history"]}
    assert gauge("train_loss") == pytest.approx(history[6]["loss"])

    lines = json_lines(result.stdout)
    steps = [line for line in lines if line["event"] == "step"]
    assert [line["step"] for line in steps] == list(range(1, 13))
    assert all(line["totalSteps"] == 12 for line in steps)
    assert [line["loss"] for line in steps] == pytest.approx([h["loss"] for h in history.values()])
    evals = [line for line in lines if line["event"] == "eval"]
    assert [line["step"] for line in evals] == [3, 6, 9, 12]
    assert all(math.isfinite(line["evalLoss"]) for line in evals)
    assert "\r" not in result.output  # no progress bar in a pod's log

    message = json.loads(log.read_text())
    assert "trained 12 steps" in message.pop("message")
    # The published files travel in the message, so the operator needs no storage access.
    published = {f["path"]: f for f in message.pop("files")}
    manifest = json.loads((job.parent / "out" / "manifest.json").read_text())
    assert published == {f["path"]: f for f in manifest["files"]}
    assert message.pop("metrics")["steps"] == 12
    assert message == {
        "outcome": "Succeeded",
        "reason": "Succeeded",
        "exitCode": 0,
        "lastStep": 12,
        "artifactUri": f"file://{job.parent / 'out'}",
    }
    with pytest.raises(urllib.error.URLError):  # the server went away with the run
        scrape(port)


def test_a_taken_metrics_port_warns_and_the_run_succeeds(make_job: Callable[..., Path]) -> None:
    with socket.create_server(("0.0.0.0", 0)) as taken:
        port = taken.getsockname()[1]
        job = make_job(training={"metricsPort": port, "maxSteps": 2})
        result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"cannot serve trainer metrics on 127.0.0.1:{port}" in result.stderr
    assert [line["step"] for line in json_lines(result.stdout)] == [1, 2]


def test_invalid_data_exits_3_with_a_termination_message(
    make_job: Callable[..., Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    job = make_job(dataset={"train": f"file://{bad}"})
    log = tmp_path / "termination-log"
    result = train_cli(trainer_config_file(job), log)
    assert result.exit_code == 3, result.output
    message = json.loads(log.read_text())
    assert (message["outcome"], message["reason"], message["exitCode"]) == (
        "Failed",
        "InvalidData",
        3,
    )
    assert message["message"] == (
        f"dataset.train (file://{bad}): line 2 is not valid JSON (Expecting value at column 1)"
    )
    assert (message["lastStep"], message["artifactUri"]) == (0, None)
    assert "line 2 is not valid JSON" in result.stderr
    assert "Traceback" not in result.output


def test_an_unreadable_trainer_config_exits_2_with_a_termination_message(tmp_path: Path) -> None:
    config = tmp_path / "trainer.json"
    config.write_text('{"apiVersion": "trainer.finetune-operator.io/v1alpha1"}')
    log = tmp_path / "termination-log"
    result = train_cli(config, log)
    assert result.exit_code == 2, result.output
    message = json.loads(log.read_text())
    assert message["reason"] == "InvalidConfig"
    assert "not a valid TrainerConfig" in message["message"]


def test_out_of_memory_mid_run_exits_6_and_says_how_far_it_got(
    make_job: Callable[..., Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An allocation fails in the 4th step's forward pass, as a too-big batch would."""
    real_train = loop.train

    def train_until_oom(*args: Any, hooks: loop.TrainHooks, **kwargs: Any) -> Any:
        compute_loss, calls = hooks.compute_loss, [0]

        def loss(model: Any, batch: Any, weight: int) -> Any:
            calls[0] += 1
            if calls[0] == 4:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")
            return compute_loss(model, batch, weight)

        hooks.compute_loss = loss
        return real_train(*args, hooks=hooks, **kwargs)

    monkeypatch.setattr(loop, "train", train_until_oom)
    job = make_job()
    log = tmp_path / "termination-log"
    result = train_cli(trainer_config_file(job), log)
    assert result.exit_code == 6, result.output
    message = json.loads(log.read_text())
    assert (message["reason"], message["lastStep"]) == ("OutOfMemory", 3)
    assert "Tried to allocate 8.00 GiB" in message["message"]
    assert "training.batchSize" in message["message"]
    assert "out of memory" in result.stderr
    assert not (job.parent / "out" / "manifest.json").exists()
