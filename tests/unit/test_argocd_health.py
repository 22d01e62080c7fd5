"""The Argo CD health check in docs/how-to/gitops.md, run by a real Lua interpreter (lupa)
against statuses the operator's own status derivation produces."""

from __future__ import annotations

import datetime
import re
from pathlib import Path
from typing import Any

import pytest

from finetune_operator import status

lupa = pytest.importorskip("lupa")

GITOPS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "how-to" / "gitops.md"
NOW = datetime.datetime(2026, 11, 22, 12, 0, tzinfo=datetime.UTC)


def health_lua() -> str:
    section = GITOPS_PAGE.read_text().split("## Argo CD health", 1)[1]
    match = re.search(r"```lua\n(.*?)```", section, re.S)
    assert match, "docs/how-to/gitops.md: no lua block under 'Argo CD health'"
    return match.group(1)


def health(obj: dict[str, Any]) -> tuple[str, str]:
    """What Argo CD would report: the script sees the object as the global ``obj``."""
    runtime = lupa.LuaRuntime(unpack_returned_tuples=True)
    runtime.globals().obj = to_lua(runtime, obj)
    result = runtime.execute(health_lua())
    return str(result["status"]), str(result["message"])


def to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, dict):
        return runtime.table_from({k: to_lua(runtime, v) for k, v in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, v) for v in value])
    return value


def ftj(**status_fields: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "sft", "namespace": "ml", "generation": 1, "uid": "u"},
        "spec": {"model": {"uri": "hf://o/m"}, "dataset": {"train": "s3://bucket-a/t.jsonl"}},
    }
    if status_fields:
        obj["status"] = status_fields
    return obj


def job(**status_fields: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "sft", "namespace": "ml", "uid": "j"},
        "spec": {},
        "status": status_fields,
    }


def test_a_new_job_is_progressing() -> None:
    assert health(ftj())[0] == "Progressing"
    accepted = status.accepted(ftj(), "sft", NOW).patch
    assert health(ftj(**accepted))[0] == "Progressing"


def test_an_invalid_spec_is_degraded_with_its_reason() -> None:
    patch = status.invalid_spec(ftj(), "spec.method.lora.r: must be >= 1", NOW).patch
    state, message = health(ftj(**patch))
    assert state == "Degraded"
    assert message.startswith("InvalidSpec") and "spec.method.lora.r" in message


def test_a_job_that_wont_fit_is_degraded_with_the_planners_verdict() -> None:
    verdict = (
        "does not fit: needs 95.0 GiB of 22.5 GiB per L4 (largest term: activations 60.0 "
        "GiB); turn on gradient checkpointing needs 20.1 GiB"
    )
    planned = status.Planned(False, "WontFit", verdict, None)
    state, message = health(ftj(**status.wont_fit(ftj(), planned, NOW).patch))
    assert state == "Degraded"
    assert message == f"WontFit: {verdict}"


def test_a_job_without_a_plan_is_progressing() -> None:
    planned = status.Planned(None, "ModelConfigUnavailable", "no plan: HTTP 404")
    accepted = status.accepted(ftj(), "sft", NOW, planned).patch
    assert health(ftj(**accepted))[0] == "Progressing"


def test_succeeded_is_healthy_and_failed_is_degraded() -> None:
    done = status.derive(
        ftj(), job(succeeded=1, conditions=[{"type": "Complete", "status": "True"}]), [], None, NOW
    ).patch
    assert health(ftj(**done))[0] == "Healthy"
    failed = status.derive(
        ftj(),
        job(
            failed=4,
            conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}],
        ),
        [],
        None,
        NOW,
    ).patch
    state, message = health(ftj(**failed))
    assert state == "Degraded" and "BackoffLimitExceeded" in message


def test_a_suspended_job_is_suspended() -> None:
    suspended = status.derive(
        ftj(), job(conditions=[{"type": "Suspended", "status": "True"}]), [], None, NOW
    ).patch
    assert health(ftj(**suspended))[0] == "Suspended"
