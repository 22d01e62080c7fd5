"""`finetune operator`: what it hands kopf (kopf.run itself is replaced here)."""

from __future__ import annotations

from typing import Any

import kopf
import pytest
from typer.testing import CliRunner

import finetune_operator.handlers as handlers
from finetune_cli.app import app


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(kopf, "run", lambda **kw: calls.append(kw))
    monkeypatch.setattr(kopf, "configure", lambda **kw: None)
    from finetune_operator.observation.probes import Readiness

    monkeypatch.setattr(handlers, "start_runtime", lambda s: kopf.Memo(readiness=Readiness()))
    return calls


def invoke(*args: str) -> None:
    result = CliRunner().invoke(app, ["operator", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_peered_replicas_never_share_a_priority(runs: list[dict[str, Any]]) -> None:
    invoke("--peering", "finetune-operator")
    invoke("--peering", "finetune-operator")
    first, second = runs
    assert first["peering_name"] == "finetune-operator" and first["standalone"] is False
    assert first["priority"] != second["priority"]  # kopf pauses peers of equal priority
    invoke("--peering", "finetune-operator", "--priority", "7")
    assert runs[-1]["priority"] == 7


def test_standalone_and_namespaced_by_default_when_namespaces_are_given(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    invoke("-n", "team-a", "-n", "team-b")
    (call,) = runs
    assert call["standalone"] is True and call["priority"] is None
    assert (call["clusterwide"], list(call["namespaces"])) == (False, ["team-a", "team-b"])
    assert call["ready_flag"] is not None

    monkeypatch.setenv("FINETUNE_WATCH_NAMESPACES", "ml, research")
    invoke()
    assert list(runs[-1]["namespaces"]) == ["ml", "research"]
    monkeypatch.delenv("FINETUNE_WATCH_NAMESPACES")
    invoke()
    assert runs[-1]["clusterwide"] is True


def test_liveness_is_served_on_the_health_port_unless_given(
    runs: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    invoke()
    assert runs[-1]["liveness_endpoint"] == "http://0.0.0.0:8080/healthz"
    monkeypatch.setenv("FINETUNE_HEALTH_PORT", "9090")  # what the chart's healthPort sets
    invoke()
    assert runs[-1]["liveness_endpoint"] == "http://0.0.0.0:9090/healthz"
    invoke("--liveness", "http://127.0.0.1:7000/healthz")
    assert runs[-1]["liveness_endpoint"] == "http://127.0.0.1:7000/healthz"
