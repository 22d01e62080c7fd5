"""Operator metrics and probes: jobs by phase, histograms once per job, reconcile
timing and errors, the metrics server with /readyz, and kopf's liveness endpoint."""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import kopf
import pytest
from kopf._cogs.structs import ephemera
from kopf._core.engines import indexing, probing
from prometheus_client.parser import text_string_to_metric_families

from finetune_operator.observation.metrics import PHASES, OperatorMetrics
from finetune_operator.observation.probes import (
    LIVENESS_PATH,
    READINESS_PATH,
    STARTUP,
    Readiness,
    liveness_endpoint,
    register_probes,
)

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def sample(metrics: OperatorMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def jobs(metrics: OperatorMetrics) -> dict[str, float]:
    return {p: sample(metrics, "finetune_operator_jobs", phase=p) for p in PHASES}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# --------------------------------------------------------------------------- phases


def test_jobs_by_phase_follow_updates_and_deletions() -> None:
    metrics = OperatorMetrics()
    assert jobs(metrics) == dict.fromkeys(PHASES, 0)  # every phase reported, zeros too
    metrics.observe_phase("ns", "a", None)  # not reconciled yet: Pending
    metrics.observe_phase("ns", "b", "Pending")
    metrics.observe_phase("other", "a", "Running")  # same name, other namespace
    metrics.observe_phase("ns", "a", "Running")
    metrics.observe_phase("ns", "a", "Running")  # a repeat changes nothing
    assert jobs(metrics) == {**dict.fromkeys(PHASES, 0), "Pending": 1, "Running": 2}
    metrics.observe_phase("ns", "a", "Succeeded")
    metrics.forget("ns", "b")
    metrics.forget("ns", "never-seen")
    assert jobs(metrics) == {**dict.fromkeys(PHASES, 0), "Running": 1, "Succeeded": 1}
    assert metrics.phase_counts()["Succeeded"] == 1


def test_time_to_running_is_observed_once_per_job() -> None:
    metrics = OperatorMetrics()
    created = "2025-01-01T12:00:00Z"
    metrics.observe_phase("ns", "a", "Pending", created=created, now=T0)
    metrics.observe_phase("ns", "a", "Running", created=created, now=T0 + timedelta(seconds=90))
    # preempted and back: still the first Running only
    metrics.observe_phase("ns", "a", "Pending", created=created, now=T0 + timedelta(seconds=200))
    metrics.observe_phase("ns", "a", "Running", created=created, now=T0 + timedelta(seconds=300))
    # first seen already Running (an operator restart): not a transition, not observed
    metrics.observe_phase("ns", "b", "Running", created=created, now=T0 + timedelta(hours=1))
    assert sample(metrics, "finetune_operator_time_to_running_seconds_count") == 1
    assert sample(metrics, "finetune_operator_time_to_running_seconds_sum") == 90
    assert sample(metrics, "finetune_operator_time_to_running_seconds_bucket", le="120.0") == 1
    assert sample(metrics, "finetune_operator_time_to_running_seconds_bucket", le="60.0") == 0


def test_job_duration_once_per_job_by_outcome_from_a_body_and_patch() -> None:
    metrics = OperatorMetrics()
    ftj = {
        "metadata": {"namespace": "ns", "name": "a", "creationTimestamp": "2025-01-01T11:00:00Z"},
        "status": {"phase": "Pending"},
    }
    metrics.observe(ftj, now=T0)
    ftj["status"] = {"phase": "Running", "startTime": "2025-01-01T12:00:00Z"}
    metrics.observe(ftj, now=T0)
    metrics.observe(ftj, "Succeeded", {"phase": "Succeeded"}, now=T0 + timedelta(seconds=600))
    metrics.observe(ftj, "Succeeded", now=T0 + timedelta(seconds=900))  # a later resync
    # Without startTime the creation time is the start.
    failed = {"metadata": {"namespace": "ns", "name": "b", "creationTimestamp": T0.isoformat()}}
    metrics.observe(failed, "Pending", now=T0)
    metrics.observe(failed, "Failed", now=T0 + timedelta(seconds=30))
    # First seen finished (after a restart): nothing observed.
    metrics.observe_phase("ns", "c", "Failed", created=T0, now=T0 + timedelta(days=1))
    succeeded = "finetune_operator_job_duration_seconds"
    assert sample(metrics, f"{succeeded}_count", outcome="Succeeded") == 1
    assert sample(metrics, f"{succeeded}_sum", outcome="Succeeded") == 600
    assert sample(metrics, f"{succeeded}_count", outcome="Failed") == 1
    assert sample(metrics, f"{succeeded}_sum", outcome="Failed") == 30
    assert sample(metrics, "finetune_operator_time_to_running_seconds_sum") == 3600


def test_a_deleted_job_recreated_under_its_name_is_observed_afresh() -> None:
    metrics = OperatorMetrics()
    for _ in range(2):
        metrics.observe_phase("ns", "a", "Pending", created=T0, now=T0)
        metrics.observe_phase("ns", "a", "Running", created=T0, now=T0 + timedelta(seconds=5))
        metrics.forget("ns", "a")
    assert sample(metrics, "finetune_operator_time_to_running_seconds_count") == 2
    assert jobs(metrics) == dict.fromkeys(PHASES, 0)


# --------------------------------------------------------------------------- reconciles


def test_timed_observes_every_reconcile_and_counts_errors_by_reason() -> None:
    metrics = OperatorMetrics()

    @metrics.timed("create")
    def create(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x * 2

    @metrics.timed("resume")
    async def resume() -> str:
        raise kopf.TemporaryError("API busy", delay=1)

    async def with_async_block() -> None:
        async with metrics.timed("timer"):
            await asyncio.sleep(0)

    assert create(2) == 4
    assert create.__name__ == "create"
    with pytest.raises(ValueError):
        create(-1)
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(resume())
    asyncio.run(with_async_block())
    with pytest.raises(asyncio.CancelledError), metrics.timed("timer"):
        raise asyncio.CancelledError  # a cancellation is timed, not an error
    metrics.count_error("InvalidSpec")

    duration = "finetune_operator_reconcile_duration_seconds_count"
    assert sample(metrics, duration, handler="create") == 2
    assert sample(metrics, duration, handler="resume") == 1
    assert sample(metrics, duration, handler="timer") == 2
    errors = "finetune_operator_reconcile_errors_total"
    assert sample(metrics, errors, reason="ValueError") == 1
    assert sample(metrics, errors, reason="TemporaryError") == 1
    assert sample(metrics, errors, reason="InvalidSpec") == 1
    assert sample(metrics, errors, reason="CancelledError") == 0


# --------------------------------------------------------------------------- serving


def test_serves_metrics_and_readiness_then_frees_the_port() -> None:
    metrics = OperatorMetrics()
    metrics.observe_phase("ns", "a", "Running")
    with metrics.timed("create"):
        pass
    readiness = Readiness()
    server = metrics.serve(0, addr="127.0.0.1", readiness=readiness)
    port = server.port
    try:
        assert server.alive
        status, text = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert families["finetune_operator_jobs"].type == "gauge"
        running = [s for s in families["finetune_operator_jobs"].samples if s.labels["phase"]]
        assert {s.labels["phase"]: s.value for s in running}["Running"] == 1
        assert families["finetune_operator_reconcile_duration_seconds"].type == "histogram"
        assert families["finetune_operator_reconcile_errors"].type == "counter"
        assert families["finetune_operator_time_to_running_seconds"].type == "histogram"
        assert families["finetune_operator_job_duration_seconds"].type == "histogram"

        status, text = get(f"http://127.0.0.1:{port}{READINESS_PATH}")
        assert (status, text.splitlines()[:2]) == (503, ["not ready", "startup waiting"])
        readiness.flag(STARTUP).set()  # what kopf does with ready_flag after startup
        assert get(f"http://127.0.0.1:{port}{READINESS_PATH}") == (200, "ready\nstartup ok\n")
    finally:
        server.stop()
    assert not server.alive
    # The port is free once stopped: a new server (a test, a restart) can take it.
    metrics.serve(port, addr="127.0.0.1").stop()


def test_readiness_needs_every_gate() -> None:
    readiness = Readiness(gates=(STARTUP, "crd"))
    readiness.mark(STARTUP)
    assert not readiness.ready and readiness.status() == {STARTUP: True, "crd": False}
    readiness.mark("crd")
    assert readiness.ready
    readiness.clear(STARTUP)
    assert readiness.report()[0] is False
    with pytest.raises(ValueError):
        Readiness(gates=())


# --------------------------------------------------------------------------- liveness


async def _probe_kopf(registry: kopf.OperatorRegistry, port: int) -> tuple[int, str]:
    """Run kopf's own health reporter (what kopf.operator(liveness_endpoint=...) starts)
    with our probes and GET its path once."""
    started = asyncio.Event()
    reporter = asyncio.create_task(
        probing.health_reporter(
            liveness_endpoint(port, addr="127.0.0.1"),
            memo=ephemera.AnyMemo(ephemera.Memo()),
            indices=indexing.OperatorIndexers().indices,
            registry=registry,
            settings=kopf.OperatorSettings(),
            ready_flag=started,
        )
    )
    try:
        await asyncio.wait_for(started.wait(), timeout=5)
        return await asyncio.to_thread(get, f"http://127.0.0.1:{port}{LIVENESS_PATH}")
    finally:
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)


def test_kopf_liveness_endpoint_answers_with_our_probes() -> None:
    metrics = OperatorMetrics()
    metrics.observe_phase("ns", "a", "Running")
    readiness = Readiness()
    server = metrics.serve(0, addr="127.0.0.1", readiness=readiness)
    registry = kopf.OperatorRegistry()
    register_probes(readiness=readiness, server=server, metrics=metrics, registry=registry)
    try:
        status, body = asyncio.run(_probe_kopf(registry, free_port()))
        assert status == 200
        report = json.loads(body)
        assert report["metricsServer"] is True
        assert report["ready"] == {STARTUP: False}  # not ready is not dead
        assert report["jobs"]["Running"] == 1
        assert datetime.fromisoformat(report["alive"]).tzinfo is not None
    finally:
        server.stop()
    # A dead metrics server fails liveness: a restart is what brings it back.
    status, _ = asyncio.run(_probe_kopf(registry, free_port()))
    assert status == 500


def test_docs_list_every_operator_metric() -> None:
    page = Path(__file__).resolve().parents[2] / "docs" / "operations" / "metrics.md"
    section = page.read_text(encoding="utf-8").split("## Operator metrics", 1)[1]
    for family in OperatorMetrics().registry.collect():
        suffix = "_total" if family.type == "counter" else ""
        assert f"`{family.name}{suffix}" in section, family.name


def test_liveness_endpoint_url() -> None:
    assert liveness_endpoint(8080) == "http://0.0.0.0:8080/healthz"
