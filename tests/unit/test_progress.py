"""The operator reads a running trainer's progress from its /metrics.

The endpoint scraped here is the trainer's own Telemetry (the class a trainer pod runs),
so renaming a trainer metric breaks this test rather than the status of live jobs.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from finetune_operator.names import COMPLETION_INDEX
from finetune_operator.observation.progress import (
    TrainerProgress,
    metrics_url,
    parse,
    rank0_pod,
    scrape,
)
from finetune_trainer.loop import StepReport
from finetune_trainer.telemetry import Telemetry


def report(step: int, **changes: Any) -> StepReport:
    fields: dict[str, Any] = {
        "step": step,
        "total_steps": 40,
        "epoch": step / 20,
        "loss": 2.0 / step,
        "learning_rate": 1e-4,
        "tokens_per_second": 2500.0,
        "eta_seconds": float(40 - step),
        "grad_norm": 0.7,
        "samples": step * 8,
    }
    return StepReport(**{**fields, **changes})


@pytest.fixture
def trainer() -> Iterator[Telemetry]:
    with Telemetry(job_name="demo", method="lora", task="causal-lm", port=0, addr="127.0.0.1") as t:
        assert t.port is not None
        yield t


def test_scrapes_the_real_trainer_telemetry(trainer: Telemetry) -> None:
    url = f"http://127.0.0.1:{trainer.port}/metrics"
    before = scrape(url)
    assert before is not None
    assert (before.step, before.eval_loss, before.job_name) == (0, None, "demo")

    for step in (1, 2, 3, 4):
        trainer.on_step(report(step))
    trainer.on_eval({"evalLoss": 1.5, "perplexity": 4.48, "accuracy": None})
    progress = scrape(url)

    assert progress is not None
    assert progress == TrainerProgress(
        step=4,
        total_steps=40,
        epoch=0.2,
        train_loss=0.5,
        eval_loss=1.5,
        learning_rate=1e-4,
        tokens_per_second=2500.0,
        eta_seconds=36.0,
        samples_seen=32,
        peak_memory_bytes=progress.peak_memory_bytes,
        eval_scores={"evalLoss": 1.5, "perplexity": 4.48},
        job_name="demo",
    )
    assert progress.peak_memory_bytes is not None and progress.peak_memory_bytes > 0
    assert progress.percent == 10


def test_a_steps_extras_are_read_and_the_reward_is_the_live_one(trainer: Telemetry) -> None:
    trainer.on_step(report(2, extras={"reward": 1.25, "kl": 0.02, "clipFraction": float("nan")}))
    progress = scrape(f"http://127.0.0.1:{trainer.port}/metrics")
    assert progress is not None
    assert progress.step_metrics == {"reward": 1.25, "kl": 0.02}  # NaN: not known
    assert progress.reward == 1.25
    assert TrainerProgress(step=1).reward is None


def test_a_diverged_loss_is_none(trainer: Telemetry) -> None:
    trainer.on_step(report(5, loss=float("nan"), eta_seconds=float("inf")))
    progress = scrape(f"http://127.0.0.1:{trainer.port}/metrics")
    assert progress is not None
    assert (progress.step, progress.train_loss, progress.eta_seconds) == (5, None, None)


def test_percent_is_clamped_and_unknown_without_a_total() -> None:
    assert TrainerProgress(step=3).percent is None
    assert TrainerProgress(step=50, total_steps=40).percent == 100
    assert TrainerProgress(step=0, total_steps=40).percent == 0


# --------------------------------------------------------------------------- failures


class _Canned(BaseHTTPRequestHandler):
    body = b""
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_canned(status: int, body: bytes) -> ThreadingHTTPServer:
    handler = type("Handler", (_Canned,), {"status": status, "body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True).start()
    return server


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"<html><body>not metrics</body></html>"),
        (200, b"\xff\xfe\x00garbage"),
        (200, b"# TYPE other_thing gauge\nother_thing 1.0\n"),  # metrics, not a trainer's
        (404, b"finetune_trainer_step 3.0\n"),
        (500, b""),
    ],
)
def test_anything_but_trainer_metrics_is_none(status: int, body: bytes) -> None:
    server = serve_canned(status, body)
    try:
        assert scrape(f"http://127.0.0.1:{server.server_port}/metrics", timeout=2) is None
    finally:
        server.shutdown()
        server.server_close()


def test_refused_connection_is_none_at_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    started = time.monotonic()
    assert scrape(f"http://127.0.0.1:{port}/metrics", timeout=2) is None
    assert time.monotonic() - started < 1


def test_a_silent_trainer_times_out_to_none() -> None:
    with socket.socket() as listener:  # accepts connections (backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        started = time.monotonic()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
        assert scrape(url, timeout=0.3) is None
        assert time.monotonic() - started < 2


def test_bad_urls_are_none() -> None:
    assert scrape("not a url") is None
    assert scrape("http://[::1") is None


def test_parse_ignores_other_programs_metrics() -> None:
    text = "process_cpu_seconds_total 1.0\nfinetune_trainer_step 7.0\n"
    assert parse(text) == TrainerProgress(step=7)


# --------------------------------------------------------------------------- pods


def pod(
    name: str,
    phase: str = "Running",
    *,
    index: str | None = None,
    label: bool = False,
    created: str = "2025-01-01T12:00:00Z",
    ip: str | None = "10.0.0.7",
    deleting: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "creationTimestamp": created}
    if index is not None:
        metadata["labels" if label else "annotations"] = {COMPLETION_INDEX: index}
    if deleting:
        metadata["deletionTimestamp"] = "2025-01-01T13:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip is not None:
        status["podIP"] = ip
    return {"metadata": metadata, "status": status}


def names(chosen: dict[str, Any] | None) -> str | None:
    return None if chosen is None else str(chosen["metadata"]["name"])


def test_metrics_url_from_the_pod_ip() -> None:
    assert metrics_url(pod("a"), 9090) == "http://10.0.0.7:9090/metrics"
    assert metrics_url(pod("a", ip="fd00::12"), 9090) == "http://[fd00::12]:9090/metrics"
    assert metrics_url(pod("a", "Pending", ip=None), 9090) is None
    assert metrics_url({}, 9090) is None


def test_rank0_is_completion_index_zero_of_an_indexed_job() -> None:
    pods = [pod("w1", index="1"), pod("w0", index="0"), pod("w2", index="2", label=True)]
    assert names(rank0_pod(pods)) == "w0"
    # index 0 by label (Kubernetes 1.28+) counts the same as the annotation
    assert names(rank0_pod([pod("w1", index="1"), pod("w0", index="0", label=True)])) == "w0"
    # rank 0 not running yet: no other rank reports, so nothing to scrape
    assert rank0_pod([pod("w0", "Pending", index="0"), pod("w1", index="1")]) is None


def test_rank0_of_a_plain_job_is_its_newest_running_pod() -> None:
    assert names(rank0_pod([pod("only")])) == "only"
    old = pod("old", created="2025-01-01T12:00:00Z")
    new = pod("new", created="2025-01-01T12:05:00Z")
    assert names(rank0_pod([new, old])) == "new"
    assert names(rank0_pod([pod("failed", "Failed"), old])) == "old"
    assert names(rank0_pod([pod("leaving", deleting=True), old])) == "old"
    replaced = [pod("w0-old", index="0"), pod("w0-new", index="0", created="2025-01-02T00:00:00Z")]
    assert names(rank0_pod(replaced)) == "w0-new"
    assert rank0_pod([]) is None
    assert rank0_pod([pod("p", "Pending")]) is None
