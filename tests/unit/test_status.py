"""Status derivation: every row of finetune_operator.status.verdict's table, from plain dicts
shaped as the Kubernetes API returns Jobs and Pods."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from finetune_api.outcome import (
    EXIT_REASONS,
    NOT_RETRYABLE_EXIT_CODES,
    ExitCode,
    TerminationMessage,
)
from finetune_api.resource import FineTuneJobStatus
from finetune_operator import builders, names, status
from finetune_operator.status import StatusUpdate

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
EARLIER = "2025-03-01T11:00:00Z"
NOW_STR = "2025-03-01T12:00:00Z"
JOB_UID = "0b7c-job"
SHA = "a" * 64

# --------------------------------------------------------------------------- fixtures


def ftj(
    prev: Mapping[str, Any] | None = None,
    *,
    generation: int = 1,
    suspend: bool = False,
    queue: str | None = None,
    output: str | None = "s3://models/out/demo",
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M"},
        "output": {"uri": output} if output else {},
        "suspend": suspend,
    }
    if queue:
        spec["queueName"] = queue
    body: dict[str, Any] = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo", "namespace": "ml", "uid": "ftj-uid", "generation": generation},
        "spec": spec,
    }
    if prev is not None:
        body["status"] = dict(prev)
    return body


def cond(kind: str, reason: str = "", message: str = "", *, at: str = EARLIER) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastProbeTime": at,
        "lastTransitionTime": at,
    }


def job(
    *conditions: dict[str, Any],
    active: int = 1,
    failed: int = 0,
    succeeded: int = 0,
    suspend: bool = False,
    start: str | None = EARLIER,
    completion: str | None = None,
) -> dict[str, Any]:
    st: dict[str, Any] = {"active": active, "failed": failed, "succeeded": succeeded, "ready": 0}
    if start:
        st["startTime"] = start
    if completion:
        st["completionTime"] = completion
    if conditions:
        st["conditions"] = list(conditions)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "demo",
            "namespace": "ml",
            "uid": JOB_UID,
            "labels": names.labels("demo"),
        },
        "spec": {"suspend": suspend, "completions": 1, "parallelism": 1, "backoffLimit": 3},
        "status": st,
    }


def terminated(
    code: int,
    message: str | None = None,
    *,
    reason: str | None = None,
    finished: str = "2025-03-01T11:50:00Z",
) -> dict[str, Any]:
    state: dict[str, Any] = {
        "exitCode": code,
        "reason": reason or ("Completed" if code == 0 else "Error"),
        "startedAt": "2025-03-01T11:01:00Z",
        "finishedAt": finished,
        "containerID": "containerd://abc",
    }
    if message is not None:
        state["message"] = message
    return state


def pod(
    name: str = "demo-abcde",
    *,
    created: str = "2025-03-01T11:00:05Z",
    phase: str = "Running",
    running: bool = False,
    waiting: tuple[str, str] | None = None,
    ended: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    deleting: bool = False,
    index: int | None = None,
    reason: str | None = None,
    owner_uid: str = JOB_UID,
    owner_name: str = "demo",
) -> dict[str, Any]:
    state: dict[str, Any]
    if running:
        state = {"running": {"startedAt": "2025-03-01T11:01:00Z"}}
    elif ended is not None:
        state = {"terminated": ended}
    elif waiting is not None:
        state = {"waiting": {"reason": waiting[0], "message": waiting[1]}}
    else:
        state = {"waiting": {"reason": "ContainerCreating"}}
    meta: dict[str, Any] = {
        "name": name,
        "namespace": "ml",
        "creationTimestamp": created,
        "labels": {**names.labels("demo"), "batch.kubernetes.io/job-name": "demo"},
        "annotations": {},
        "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": owner_name, "uid": owner_uid}
        ],
    }
    if index is not None:
        meta["annotations"]["batch.kubernetes.io/job-completion-index"] = str(index)
    if deleting:
        meta["deletionTimestamp"] = "2025-03-01T11:55:00Z"
    pod_conditions = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2025-03-01T11:00:06Z"},
        *(conditions or []),
    ]
    st: dict[str, Any] = {
        "phase": phase,
        "conditions": pod_conditions,
        "containerStatuses": [
            {
                "name": "trainer",
                "image": "ghcr.io/x/finetune-trainer:0.1",
                "ready": running,
                "restartCount": 0,
                "state": state,
                "lastState": {},
            }
        ],
    }
    if reason:
        st["reason"] = reason
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "status": st}


def unschedulable(name: str = "demo-abcde") -> dict[str, Any]:
    p = pod(name, phase="Pending")
    p["status"]["conditions"] = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            "lastTransitionTime": "2025-03-01T11:00:06Z",
        }
    ]
    del p["status"]["containerStatuses"]
    return p


def disruption(reason: str = "PreemptionByScheduler") -> dict[str, Any]:
    return {
        "type": "DisruptionTarget",
        "status": "True",
        "reason": reason,
        "message": "Preempted in order to admit critical pod",
        "lastTransitionTime": "2025-03-01T11:40:00Z",
    }


def trainer_message(**fields: Any) -> str:
    data = {
        "outcome": "Failed",
        "reason": "Unexpected",
        "message": "",
        "exitCode": 1,
        "lastStep": 0,
        "artifactUri": None,
        **fields,
    }
    return json.dumps(data, separators=(",", ":"))


SUCCESS_MESSAGE = trainer_message(
    outcome="Succeeded",
    reason="Succeeded",
    message="eval loss: 1.7400 -> 0.9200\ntrained 12 steps in 40s",
    exitCode=0,
    lastStep=12,
    artifactUri="s3://models/out/demo",
    files=[
        {"path": "adapter_model.safetensors", "size": 1234, "sha256": SHA},
        {"path": "metrics.json", "size": 99, "sha256": "b" * 64},
    ],
    metrics={
        "trainLoss": 0.81,
        "evalLoss": 0.92,
        "evalLossBefore": 1.74,
        "exactMatch": 0.625,
        "exactMatchBefore": 0.125,
        "tokensPerSecond": 5310.2,
        "steps": 12,
        "accuracy": 0.5,  # the status model has no field for it: dropped, not an error
    },
)


@dataclass(frozen=True)
class Reading:
    """Stands in for finetune_operator.observation.progress.TrainerProgress (the same
    fields)."""

    step: int
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    samples_seen: int | None = None
    peak_memory_bytes: int | None = None
    trackers: Mapping[str, str] = field(default_factory=dict)
    reward: float | None = None


def run(
    body: dict[str, Any],
    the_job: dict[str, Any] | None,
    pods: list[dict[str, Any]] | None = None,
    progress: Reading | None = None,
    now: datetime = NOW,
) -> StatusUpdate:
    update = status.derive(body, the_job, pods or [], progress, now)
    check(update)
    return update


def check(update: StatusUpdate) -> None:
    """Valid against the CRD's model, every condition present, at most one of the
    phase conditions True (what Argo CD's health check reads)."""
    FineTuneJobStatus.model_validate(update.patch)
    json.dumps(update.patch)  # JSON-ready: no datetimes, no NaN
    kinds = [c["type"] for c in update.patch["conditions"]]
    assert kinds[:5] == ["Validated", "Running", "Succeeded", "Failed", "Suspended"]
    true = [c["type"] for c in update.patch["conditions"][1:5] if c["status"] == "True"]
    assert len(true) <= 1
    if update.phase in ("Succeeded", "Failed", "Suspended"):
        assert true == [update.phase]


def conditions(update: StatusUpdate) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in update.patch["conditions"]}


def after(update: StatusUpdate, generation: int = 1, **changes: Any) -> dict[str, Any]:
    """The FineTuneJob as the API returns it once ``update`` was written."""
    return ftj(update.patch, generation=generation, **changes)


# --------------------------------------------------------------------------- Pending


def test_no_job_yet_is_pending_and_validated() -> None:
    update = run(ftj(), None)
    c = conditions(update)
    assert update.phase == "Pending"
    assert (c["Validated"]["status"], c["Validated"]["reason"]) == ("True", "Valid")
    assert c["Running"]["status"] == "False"
    assert update.patch["jobName"] == "demo"
    assert update.patch["restarts"] == 0


def test_accepted_is_pending_with_an_event() -> None:
    update = status.accepted(ftj(), "demo", NOW)
    check(update)
    assert update.phase == "Pending"
    assert conditions(update)["Running"]["reason"] == "JobCreated"
    assert update.event == ("Normal", "JobCreated", update.event.message if update.event else "")
    assert update.patch["observedGeneration"] == 1


def test_accepted_never_turns_a_running_job_back_to_pending() -> None:
    running = run(ftj(), job(), [pod(running=True)])
    update = status.accepted(after(running), "demo", NOW)
    check(update)
    assert update.phase == "Running"
    assert update.event is None


def test_a_job_without_pods_is_pending() -> None:
    update = run(ftj(), job(active=0))
    assert update.phase == "Pending"
    assert conditions(update)["Running"]["reason"] == "JobCreated"


def test_unschedulable_pod_carries_the_schedulers_message() -> None:
    update = run(ftj(), job(), [unschedulable()])
    running = conditions(update)["Running"]
    assert update.phase == "Pending"
    assert running["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in running["message"]


@pytest.mark.parametrize("waiting", ["ImagePullBackOff", "ErrImagePull", "InvalidImageName"])
def test_image_pull_errors_are_image_pull_failed(waiting: str) -> None:
    p = pod(phase="Pending", waiting=(waiting, 'Back-off pulling image "ghcr.io/x/nope:1"'))
    update = run(ftj(), job(), [p])
    running = conditions(update)["Running"]
    assert (update.phase, running["reason"]) == ("Pending", "ImagePullFailed")
    assert "ghcr.io/x/nope:1" in running["message"]


def test_a_missing_secret_says_so() -> None:
    waiting = ("CreateContainerConfigError", 'secret "hf-creds" not found')
    update = run(ftj(), job(), [pod(phase="Pending", waiting=waiting)])
    running = conditions(update)["Running"]
    assert running["reason"] == "CreateContainerConfigError"
    assert 'secret "hf-creds" not found' in running["message"]


def test_the_most_actionable_pending_cause_wins_across_pods() -> None:
    pods = [
        pod("demo-0-a", index=0, phase="Pending"),  # ContainerCreating
        unschedulable("demo-1-a"),
        pod("demo-2-a", index=2, phase="Pending", waiting=("ImagePullBackOff", "no such image")),
    ]
    pods[1]["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] = "1"
    update = run(ftj(), job(active=3), pods)
    assert conditions(update)["Running"]["reason"] == "ImagePullFailed"


def test_a_creating_container_is_pending() -> None:
    update = run(ftj(), job(), [pod(phase="Pending")])
    assert conditions(update)["Running"]["reason"] == "ContainerCreating"


# --------------------------------------------------------------------------- Running


def test_a_running_trainer_is_running_with_step_and_total() -> None:
    reading = Reading(step=40, total_steps=120, epoch=0.66, train_loss=1.25, eval_loss=1.5)
    update = run(ftj(), job(), [pod(running=True)], reading)
    running = conditions(update)["Running"]
    assert update.phase == "Running"
    assert (running["status"], running["reason"]) == ("True", "Training")
    assert running["message"].startswith("step 40/120 (33%)")
    assert update.patch["progress"] == {"step": 40, "totalSteps": 120, "epoch": 0.66, "percent": 33}
    assert update.patch["metrics"] == {"trainLoss": 1.25, "evalLoss": 1.5}
    assert update.patch["startTime"] == EARLIER


def test_a_pod_being_deleted_is_not_running() -> None:
    update = run(ftj(), job(), [pod(running=True, deleting=True)])
    running = conditions(update)["Running"]
    assert (update.phase, running["status"], running["reason"]) == ("Pending", "False", "Preempted")


def test_progress_is_kept_when_the_scrape_fails() -> None:
    first = run(
        ftj(), job(), [pod(running=True)], Reading(step=5, total_steps=10, eta_seconds=30.7)
    )
    second = run(after(first), job(), [pod(running=True)], None)
    assert second.patch["progress"] == first.patch["progress"]
    assert second.patch["progress"]["etaSeconds"] == 30


def test_a_field_the_trainer_does_not_know_yet_keeps_its_last_value() -> None:
    first = run(ftj(), job(), [pod(running=True)], Reading(step=5, total_steps=10, eval_loss=1.3))
    nan = Reading(step=6, total_steps=None, eval_loss=float("nan"), train_loss=float("inf"))
    second = run(after(first), job(), [pod(running=True)], nan)
    assert second.patch["progress"]["step"] == 6
    assert second.patch["progress"]["totalSteps"] == 10
    assert second.patch["progress"]["percent"] == 60
    assert second.patch["metrics"] == {"evalLoss": 1.3}


def test_a_reinforcement_runs_live_reward_is_in_its_progress() -> None:
    """status.progress.reward beside the loss: the latest step's mean reward, kept when a
    scrape fails or does not know it, absent for tasks without rewards."""
    reading = Reading(step=3, total_steps=10, train_loss=0.2, reward=-0.75)
    first = run(ftj(), job(), [pod(running=True)], reading)
    assert first.patch["progress"]["reward"] == -0.75
    assert first.patch["metrics"] == {"trainLoss": 0.2}
    kept = run(after(first), job(), [pod(running=True)], None)
    assert kept.patch["progress"]["reward"] == -0.75
    unknown = run(after(first), job(), [pod(running=True)], Reading(step=4, reward=float("nan")))
    assert unknown.patch["progress"]["reward"] == -0.75
    other = run(ftj(), job(), [pod(running=True)], Reading(step=3, total_steps=10))
    assert "reward" not in other.patch["progress"]


def test_percent_is_floored_and_capped() -> None:
    update = run(ftj(), job(), [pod(running=True)], Reading(step=199, total_steps=200))
    assert update.patch["progress"]["percent"] == 99
    over = run(ftj(), job(), [pod(running=True)], Reading(step=201, total_steps=200))
    assert over.patch["progress"]["percent"] == 100


def test_steps_are_not_a_phase_change() -> None:
    first = run(ftj(), job(), [pod(running=True)], Reading(step=1, total_steps=10))
    assert first.event is not None and first.event.reason == "Training"
    second = run(after(first), job(), [pod(running=True)], Reading(step=2, total_steps=10))
    assert second.event is None
    assert second.patch["progress"]["step"] == 2


# --------------------------------------------------------------------------- preemption


def _running_status() -> StatusUpdate:
    return run(ftj(), job(), [pod("demo-old", running=True)], Reading(step=30, total_steps=100))


def test_a_preempted_pod_keeps_running_phase_with_running_false() -> None:
    prev = _running_status()
    pods = [
        pod(
            "demo-old",
            phase="Failed",
            ended=terminated(
                143,
                trainer_message(outcome="Preempted", reason="Preempted", exitCode=143, lastStep=30),
            ),
        ),
        pod("demo-new", created="2025-03-01T11:51:00Z", phase="Pending"),
    ]
    update = run(after(prev), job(), pods)
    running = conditions(update)["Running"]
    assert update.phase == "Running"
    assert (running["status"], running["reason"]) == ("False", "Preempted")
    assert "resuming from the last checkpoint" in running["message"]
    assert update.event is not None
    assert (update.event.type, update.event.reason) == ("Warning", "Preempted")
    assert update.patch["progress"]["step"] == 30  # kept
    assert update.patch["restarts"] == 1


def test_disruption_target_counts_as_preemption() -> None:
    prev = _running_status()
    evicted = pod(
        "demo-old",
        phase="Failed",
        conditions=[disruption()],
        reason="Evicted",
        ended=terminated(137, reason="Error"),
    )
    update = run(after(prev), job(), [evicted])
    assert conditions(update)["Running"]["reason"] == "Preempted"
    assert "PreemptionByScheduler" in conditions(update)["Running"]["message"]


def test_preemption_is_kept_until_a_new_pod_runs_even_when_the_old_pod_is_gone() -> None:
    prev = _running_status()
    preempted = run(after(prev), job(), [pod("demo-old", phase="Failed", ended=terminated(143))])
    gone = run(after(preempted), job(), [unschedulable("demo-new")])
    running = conditions(gone)["Running"]
    assert (gone.phase, running["reason"]) == ("Running", "Preempted")
    assert "Insufficient nvidia.com/gpu" in running["message"]
    assert gone.event is None
    assert gone.patch["restarts"] == 1  # never decreases though the old pod is gone
    resumed = run(
        after(gone), job(), [pod("demo-new", running=True)], Reading(step=31, total_steps=100)
    )
    c = conditions(resumed)["Running"]
    assert (resumed.phase, c["status"], c["reason"]) == ("Running", "True", "Training")
    assert resumed.event is not None
    assert (resumed.event.type, resumed.event.reason) == ("Normal", "Training")
    assert resumed.event.message.startswith("resumed")


def test_a_pending_job_whose_pod_was_preempted_stays_pending() -> None:
    update = run(
        ftj(),
        job(),
        [pod("demo-old", phase="Failed", conditions=[disruption()], ended=terminated(143))],
    )
    assert (update.phase, conditions(update)["Running"]["reason"]) == ("Pending", "Preempted")


def test_running_with_no_pod_and_no_evidence_is_restarting() -> None:
    prev = _running_status()
    update = run(after(prev), job(), [])
    assert (update.phase, conditions(update)["Running"]["reason"]) == ("Running", "Restarting")
    assert update.event is None


def test_one_preempted_index_of_a_multi_node_job_while_others_run() -> None:
    pods = [
        pod("demo-0-a", index=0, running=True),
        pod("demo-1-a", index=1, phase="Failed", ended=terminated(143)),
        pod("demo-1-b", index=1, phase="Pending", created="2025-03-01T11:52:00Z"),
    ]
    update = run(ftj(), job(active=2), pods)
    running = conditions(update)["Running"]
    assert (update.phase, running["status"], running["reason"]) == ("Running", "False", "Preempted")
    assert update.patch["restarts"] == 1


# --------------------------------------------------------------------------- retries


def test_a_retryable_failure_is_retrying_with_the_trainers_reason() -> None:
    prev = _running_status()
    message = trainer_message(
        reason="StorageUnavailable", message="s3: 503 past deadline", exitCode=7
    )
    update = run(after(prev), job(failed=1), [pod(phase="Failed", ended=terminated(7, message))])
    running = conditions(update)["Running"]
    assert (update.phase, running["reason"]) == ("Running", "Retrying")
    assert "StorageUnavailable: s3: 503 past deadline" in running["message"]
    assert update.event is not None and update.event.reason == "Retrying"
    assert update.patch["restarts"] == 1  # the Job counted the failure: a new pod comes


def test_a_not_retried_exit_code_is_failing_without_an_event() -> None:
    prev = _running_status()
    message = trainer_message(reason="InvalidData", message="line 2 is not JSON", exitCode=3)
    update = run(after(prev), job(failed=1), [pod(phase="Failed", ended=terminated(3, message))])
    assert conditions(update)["Running"]["reason"] == "Failing"
    assert update.event is None


def test_the_pod_failure_policy_follows_the_contracts_exit_codes() -> None:
    rules = builders.pod_failure_policy()["rules"]
    (fail,) = [r for r in rules if r["action"] == "FailJob"]
    assert set(fail["onExitCodes"]["values"]) == set(NOT_RETRYABLE_EXIT_CODES)
    ignored = [r["onExitCodes"]["values"] for r in rules if "onExitCodes" in r and r is not fail]
    assert ignored == [[ExitCode.PREEMPTED]]


@pytest.mark.parametrize("code", sorted(set(EXIT_REASONS) - {0, ExitCode.PREEMPTED}))
def test_an_ended_pod_is_failing_exactly_for_the_contracts_not_retryable_codes(
    code: int,
) -> None:
    ended = terminated(code, "Traceback ...")
    update = run(after(_running_status()), job(failed=1), [pod(phase="Failed", ended=ended)])
    expected = "Failing" if code in NOT_RETRYABLE_EXIT_CODES else "Retrying"
    assert conditions(update)["Running"]["reason"] == expected


@pytest.mark.parametrize("code", sorted(set(EXIT_REASONS) - {0, ExitCode.PREEMPTED}))
def test_a_failed_pods_exit_code_is_named_by_the_contract(code: int) -> None:
    ended = terminated(code, "Traceback ...")
    update = run(ftj(), _failed_job("BackoffLimitExceeded"), [pod(phase="Failed", ended=ended)])
    assert conditions(update)["Failed"]["reason"] == EXIT_REASONS[code]


# --------------------------------------------------------------------------- Suspended


def test_suspended_by_the_user() -> None:
    prev = _running_status()
    update = run(after(prev, suspend=True), job(suspend=True, active=0))
    suspended = conditions(update)["Suspended"]
    assert update.phase == "Suspended"
    assert (suspended["status"], suspended["reason"]) == ("True", "Suspended")
    assert "spec.suspend" in suspended["message"]
    assert update.event is not None and update.event.reason == "Suspended"


def test_stopping_pods_are_mentioned_while_suspending() -> None:
    update = run(ftj(suspend=True), job(suspend=True), [pod(running=True, deleting=True)])
    assert "saving a checkpoint" in conditions(update)["Suspended"]["message"]


def test_waiting_for_kueue_is_queued() -> None:
    update = run(ftj(queue="gpu-queue"), job(suspend=True, active=0, start=None))
    suspended = conditions(update)["Suspended"]
    assert (update.phase, suspended["reason"]) == ("Suspended", "Queued")
    assert "gpu-queue" in suspended["message"]
    assert "startTime" not in update.patch
    # The user suspending a queued job is a reason change: an Event says so.
    user = run(after(update, suspend=True, queue="gpu-queue"), job(suspend=True, active=0))
    assert conditions(user)["Suspended"]["reason"] == "Suspended"
    assert user.event is not None and user.event.reason == "Suspended"


def test_job_suspended_condition_alone_is_suspended() -> None:
    the_job = job(cond("Suspended", "JobSuspended", "Job suspended"), active=0)
    assert run(ftj(), the_job).phase == "Suspended"


def test_spec_suspend_before_the_job_exists_is_suspended() -> None:
    assert run(ftj(suspend=True), None).phase == "Suspended"


def test_resume_keeps_the_first_start_time() -> None:
    first = run(ftj(), job(), [pod(running=True)])
    suspended = run(after(first, suspend=True), job(suspend=True, active=0, start=None))
    resumed = run(after(suspended), job(start="2025-03-01T11:58:00Z"), [pod("p2", running=True)])
    assert resumed.patch["startTime"] == EARLIER


# --------------------------------------------------------------------------- Succeeded


def _succeeded(
    prev: StatusUpdate | None = None, message: str | None = SUCCESS_MESSAGE
) -> StatusUpdate:
    body = after(prev) if prev else ftj()
    done = job(
        cond("SuccessCriteriaMet", "CompletionsReached", at="2025-03-01T11:50:01Z"),
        cond("Complete", "CompletionsReached", at="2025-03-01T11:50:02Z"),
        active=0,
        succeeded=1,
        completion="2025-03-01T11:50:02Z",
    )
    return run(body, done, [pod(phase="Succeeded", ended=terminated(0, message))])


def test_a_reinforcement_success_reports_its_mean_reward_before_and_after() -> None:
    """The trainer's termination message carries meanReward and meanRewardBefore (headline
    metrics); the status shows them, and keeps the last live reward in its progress."""
    from finetune_api.outcome import headline_metrics

    metrics = {"meanReward": 2.5, "meanRewardBefore": 0.75, "history": [{"reward": 9.0}]}
    carried = headline_metrics(metrics)  # what the trainer's termination message carries
    assert carried == {"meanReward": 2.5, "meanRewardBefore": 0.75}
    message = trainer_message(
        outcome="Succeeded", reason="Succeeded", exitCode=0, lastStep=12, metrics=carried
    )
    prev = run(ftj(), job(), [pod(running=True)], Reading(step=11, total_steps=12, reward=2.0))
    update = _succeeded(prev, message)
    assert update.patch["metrics"]["meanReward"] == 2.5
    assert update.patch["metrics"]["meanRewardBefore"] == 0.75
    assert update.patch["progress"]["reward"] == 2.0


def test_success_carries_artifacts_final_metrics_and_completion_time() -> None:
    prev = run(ftj(), job(), [pod(running=True)], Reading(step=11, total_steps=12, eta_seconds=4))
    update = _succeeded(prev)
    succeeded = conditions(update)["Succeeded"]
    assert update.phase == "Succeeded"
    assert (succeeded["status"], succeeded["reason"]) == ("True", "Succeeded")
    assert "trained 12 steps" in succeeded["message"]
    assert update.patch["artifacts"] == {
        "uri": "s3://models/out/demo",
        "files": [
            {"path": "adapter_model.safetensors", "size": 1234, "sha256": SHA},
            {"path": "metrics.json", "size": 99, "sha256": "b" * 64},
        ],
    }
    assert update.patch["metrics"] == {
        "trainLoss": 0.81,
        "evalLoss": 0.92,
        "evalLossBefore": 1.74,
        "exactMatch": 0.625,
        "exactMatchBefore": 0.125,
        "accuracy": 0.5,
        "tokensPerSecond": 5310.2,
    }
    assert update.patch["completionTime"] == "2025-03-01T11:50:02Z"
    assert update.patch["progress"] == {
        "step": 12,
        "totalSteps": 12,
        "percent": 100,
        "etaSeconds": 0,
    }
    assert update.event is not None
    assert (update.event.type, update.event.reason) == ("Normal", "Succeeded")
    assert update.event.message.startswith("Running -> Succeeded")
    assert len(update.event.message) <= status.MAX_EVENT_MESSAGE


def test_success_without_a_message_falls_back_to_the_spec_output() -> None:
    update = _succeeded(message=None)
    assert update.patch["artifacts"] == {"uri": "s3://models/out/demo", "files": []}
    assert "metrics" not in update.patch


MLFLOW_RUN = "http://mlflow.mlflow:5000/#/experiments/3/runs/abc"


def test_tracker_pages_come_from_the_live_reading_and_stay_to_the_end() -> None:
    live = run(ftj(), job(), [pod(running=True)], Reading(step=3, trackers={"mlflow": MLFLOW_RUN}))
    assert live.patch["trackers"] == {"mlflow": MLFLOW_RUN}
    # A failed scrape keeps them; the trainer's final message adds its own.
    data = json.loads(SUCCESS_MESSAGE)
    data["trackers"] = {"wandb": "https://wandb.ai/team/colours/runs/k1"}
    update = _succeeded(live, message=json.dumps(data))
    assert update.patch["trackers"] == {
        "mlflow": MLFLOW_RUN,
        "wandb": "https://wandb.ai/team/colours/runs/k1",
    }


def test_only_http_links_under_plain_names_reach_the_status() -> None:
    reading = Reading(
        step=1,
        trackers={
            "mlflow": "javascript:alert(1)",
            "Bad Name": "http://x/y",
            "wandb": "https://wandb.ai/t/p/runs/1",
        },
    )
    update = run(ftj(), job(), [pod(running=True)], reading)
    assert update.patch["trackers"] == {"wandb": "https://wandb.ai/t/p/runs/1"}
    assert "trackers" not in run(ftj(), job(), [pod(running=True)], Reading(step=1)).patch


def test_omitted_files_are_said_not_shown_as_empty() -> None:
    data = json.loads(SUCCESS_MESSAGE)
    del data["files"]
    data["filesOmitted"] = True
    update = _succeeded(message=json.dumps(data))
    assert update.patch["artifacts"]["files"] == []
    assert "manifest.json" in conditions(update)["Succeeded"]["message"]


def test_rank_zero_message_wins_in_a_multi_node_job() -> None:
    other = trainer_message(
        outcome="Succeeded",
        reason="Succeeded",
        exitCode=0,
        lastStep=12,
        artifactUri="s3://models/out/demo",
    )
    pods = [
        pod(
            "demo-1-a",
            index=1,
            phase="Succeeded",
            ended=terminated(0, other, finished="2025-03-01T11:50:09Z"),
        ),
        pod("demo-0-a", index=0, phase="Succeeded", ended=terminated(0, SUCCESS_MESSAGE)),
    ]
    update = run(ftj(), job(cond("Complete", "CompletionsReached"), active=0, succeeded=2), pods)
    assert len(update.patch["artifacts"]["files"]) == 2
    assert update.patch["metrics"]["exactMatch"] == 0.625


def test_bad_file_entries_are_dropped() -> None:
    data = json.loads(SUCCESS_MESSAGE)
    data["files"].append({"path": "x", "size": -1, "sha256": SHA})
    data["files"].append({"path": "y", "size": 1, "sha256": "not-a-digest"})
    update = _succeeded(message=json.dumps(data))
    assert [f["path"] for f in update.patch["artifacts"]["files"]] == [
        "adapter_model.safetensors",
        "metrics.json",
    ]


# --------------------------------------------------------------------------- Failed


def _failed_job(reason: str = "PodFailurePolicy", message: str = "") -> dict[str, Any]:
    return job(
        cond("FailureTarget", reason, message, at="2025-03-01T11:50:03Z"),
        cond("Failed", reason, message, at="2025-03-01T11:50:04Z"),
        active=0,
        failed=1,
    )


def test_failure_reason_and_message_come_from_the_trainer() -> None:
    message = trainer_message(
        reason="InvalidData",
        exitCode=3,
        message="dataset.train (s3://d/t.jsonl): line 2 is not valid JSON",
    )
    update = run(ftj(), _failed_job(), [pod(phase="Failed", ended=terminated(3, message))])
    failed = conditions(update)["Failed"]
    assert update.phase == "Failed"
    assert (failed["status"], failed["reason"]) == ("True", "InvalidData")
    assert failed["message"].startswith("dataset.train (s3://d/t.jsonl): line 2 is not valid JSON")
    assert "exit code 3" in failed["message"]
    assert update.patch["completionTime"] == "2025-03-01T11:50:04Z"
    assert update.event is not None
    assert (update.event.type, update.event.reason) == ("Warning", "InvalidData")


def test_failure_target_alone_is_final() -> None:
    the_job = job(cond("FailureTarget", "PodFailurePolicy", "Container trainer exited with 6"))
    message = trainer_message(reason="OutOfMemory", exitCode=6, message="out of memory: CUDA")
    update = run(ftj(), the_job, [pod(phase="Failed", ended=terminated(6, message))])
    assert (update.phase, conditions(update)["Failed"]["reason"]) == ("Failed", "OutOfMemory")


def test_a_kernel_oom_kill_is_oom_killed() -> None:
    # FallbackToLogsOnError: the kubelet put the log's last line where the message goes.
    tail = '{"event":"step","step":6,"totalSteps":12,"loss":1.28}'
    ended = terminated(137, tail, reason="OOMKilled")
    update = run(ftj(), _failed_job("BackoffLimitExceeded"), [pod(phase="Failed", ended=ended)])
    failed = conditions(update)["Failed"]
    assert failed["reason"] == "OOMKilled"
    assert "resources.memory" in failed["message"]


def test_a_log_tail_gets_the_exit_codes_reason() -> None:
    ended = terminated(4, "Traceback ...\nOSError: model not found")
    update = run(ftj(), _failed_job("BackoffLimitExceeded"), [pod(phase="Failed", ended=ended)])
    failed = conditions(update)["Failed"]
    assert failed["reason"] == "ModelLoadFailed"
    assert "OSError: model not found" in failed["message"]


def test_without_a_trainer_message_the_jobs_reason_stands() -> None:
    the_job = _failed_job("BackoffLimitExceeded", "Job has reached the specified backoff limit")
    ended = terminated(137, reason="Error")
    update = run(ftj(), the_job, [pod(phase="Failed", ended=ended)])
    failed = conditions(update)["Failed"]
    assert failed["reason"] == "BackoffLimitExceeded"
    assert failed["message"].startswith("Job has reached the specified backoff limit")


def test_a_deadline_is_the_jobs_reason_not_the_trainers_preemption() -> None:
    the_job = _failed_job("DeadlineExceeded", "Job was active longer than specified deadline")
    preempted = trainer_message(outcome="Preempted", reason="Preempted", exitCode=143)
    earlier = trainer_message(reason="StorageUnavailable", exitCode=7, message="503")
    pods = [
        pod(
            "demo-a", phase="Failed", ended=terminated(7, earlier, finished="2025-03-01T11:10:00Z")
        ),
        pod("demo-b", phase="Failed", ended=terminated(143, preempted)),
    ]
    update = run(ftj(), the_job, pods)
    assert conditions(update)["Failed"]["reason"] == "DeadlineExceeded"


def test_no_pods_left_uses_the_jobs_condition() -> None:
    update = run(ftj(), _failed_job("BackoffLimitExceeded", "backoff"), [])
    assert conditions(update)["Failed"]["reason"] == "BackoffLimitExceeded"


def test_invalid_spec_fails_without_pods() -> None:
    update = status.invalid_spec(ftj(), "spec.training.batchSize: must be at least 1", NOW)
    check(update)
    c = conditions(update)
    assert update.phase == "Failed"
    assert (c["Validated"]["status"], c["Validated"]["reason"]) == ("False", "InvalidSpec")
    assert (c["Failed"]["status"], c["Failed"]["reason"]) == ("True", "InvalidSpec")
    assert "batchSize" in c["Validated"]["message"]
    assert update.event is not None
    assert (update.event.type, update.event.reason) == ("Warning", "InvalidSpec")
    again = status.invalid_spec(after(update), "spec.training.batchSize: must be at least 1", NOW)
    assert again.event is None
    assert again.patch["conditions"] == update.patch["conditions"]


# --------------------------------------------------------------------------- planned

PLAN = {
    "memoryPerDevice": "95.0Gi",
    "device": "L4",
    "fits": False,
    "largestTerm": "activations",
    "trainableParameters": 134515008,
}
TOO_LARGE = status.Planned(
    False,
    "WontFit",
    "does not fit: needs 95.0 GiB of 22.5 GiB per L4 (largest term: activations 60.0 GiB); "
    "turn on gradient checkpointing needs 20.1 GiB",
    PLAN,
)


def test_a_job_that_wont_fit_fails_with_the_planners_verdict() -> None:
    update = status.wont_fit(ftj(), TOO_LARGE, NOW)
    check(update)
    c = conditions(update)
    assert update.phase == "Failed"
    assert (c["Failed"]["status"], c["Failed"]["reason"]) == ("True", "WontFit")
    assert c["Failed"]["message"] == TOO_LARGE.message
    assert c["Validated"]["status"] == "True"  # a valid spec, too large for its GPUs
    assert (c["Planned"]["status"], c["Planned"]["reason"]) == ("False", "WontFit")
    assert update.patch["plan"] == PLAN
    assert update.event == status.Event("Warning", "WontFit", f"Failed: {TOO_LARGE.message}")
    # Derived again (a later event, no Job): it stays as it ended, plan and all.
    again = run(after(update), None)
    assert again.event is None and again.phase == "Failed"
    assert conditions(again)["Planned"] == c["Planned"]
    assert again.patch["plan"] == PLAN


def test_the_plan_goes_with_the_first_status_and_stays() -> None:
    fits = status.Planned(
        True, "Fits", "fits: 17.2 GiB of 79.6 GiB per H100", {**PLAN, "fits": True}
    )
    first = status.accepted(ftj(), "demo", NOW, fits)
    check(first)
    planned = conditions(first)["Planned"]
    assert (planned["status"], planned["reason"], planned["message"]) == (
        "True",
        "Fits",
        fits.message,
    )
    assert planned["observedGeneration"] == 1
    assert first.patch["plan"] == fits.plan
    # What reconcile writes with it: the derivation from the Job keeps the condition, and
    # its patch has no plan to overwrite (status.plan stays as planned).
    running = run(after(first), job(), [pod("demo-abcde", running=True)])
    assert conditions(running)["Planned"] == planned
    assert "plan" not in running.patch


def test_no_plan_is_planned_unknown_and_the_job_goes_on() -> None:
    why = status.Planned(None, "ModelConfigUnavailable", "no plan: the Hub answered HTTP 401")
    update = status.accepted(ftj(), "demo", NOW, why)
    check(update)
    assert update.phase == "Pending"
    planned = conditions(update)["Planned"]
    assert (planned["status"], planned["reason"]) == ("Unknown", "ModelConfigUnavailable")
    assert "plan" not in update.patch
    assert (update.event.type, update.event.reason) == ("Normal", "JobCreated")  # type: ignore[union-attr]


# --------------------------------------------------------------------------- terminal


def test_a_finished_status_survives_its_job_being_deleted() -> None:
    done = _succeeded(_running_status())
    later = run(after(done, generation=2), None, [], now=NOW + timedelta(days=1))
    assert later.event is None
    assert later.patch["phase"] == "Succeeded"
    assert later.patch["artifacts"] == done.patch["artifacts"]
    assert later.patch["observedGeneration"] == 2
    assert {c["observedGeneration"] for c in later.patch["conditions"]} == {2}
    assert (
        later.patch["conditions"][1]["lastTransitionTime"]
        == done.patch["conditions"][1]["lastTransitionTime"]
    )


def test_invalid_spec_stays_failed_when_derived_again() -> None:
    invalid = status.invalid_spec(ftj(), "bad", NOW)
    update = run(after(invalid), None)
    assert update.phase == "Failed"
    assert conditions(update)["Validated"]["status"] == "False"


def test_deriving_a_finished_job_again_changes_nothing() -> None:
    first = _succeeded(_running_status())
    second = _succeeded(first)
    assert second.event is None
    assert second.changes(first.patch) == {}


# --------------------------------------------------------------------------- bookkeeping


def test_last_transition_time_moves_only_with_the_status() -> None:
    pending = run(ftj(), job(), [pod(phase="Pending")], now=NOW)
    later = NOW + timedelta(minutes=5)
    unsched = run(after(pending), job(), [unschedulable()], now=later)
    assert conditions(unsched)["Running"]["lastTransitionTime"] == NOW_STR  # still False
    assert conditions(unsched)["Running"]["reason"] == "Unschedulable"
    running = run(after(unsched), job(), [pod(running=True)], now=later + timedelta(minutes=1))
    assert conditions(running)["Running"]["lastTransitionTime"] == "2025-03-01T12:06:00Z"
    assert conditions(running)["Failed"]["lastTransitionTime"] == NOW_STR


def test_observed_generation_is_on_the_status_and_every_condition() -> None:
    update = run(ftj(generation=3), job(), [pod(running=True)])
    assert update.patch["observedGeneration"] == 3
    assert {c["observedGeneration"] for c in update.patch["conditions"]} == {3}


def test_events_only_on_phase_changes() -> None:
    first = run(ftj(), job(), [pod(phase="Pending")])
    assert first.event is not None and first.event.reason == "ContainerCreating"
    unsched = run(after(first), job(), [unschedulable()])
    assert unsched.event is None  # a Pending reason change is the scheduler's to report
    running = run(after(unsched), job(), [pod(running=True)])
    assert running.event is not None
    assert running.event.message.startswith("Pending -> Running")
    again = run(after(running), job(), [pod(running=True)])
    assert again.event is None


def test_restarts_count_pods_beyond_the_first_and_never_decrease() -> None:
    pods = [
        pod("a", phase="Failed", ended=terminated(1, "boom"), created="2025-03-01T11:00:00Z"),
        pod(
            "b",
            phase="Failed",
            conditions=[disruption()],
            ended=terminated(143),
            created="2025-03-01T11:10:00Z",
        ),
        pod("c", running=True, created="2025-03-01T11:20:00Z"),
    ]
    update = run(ftj(), job(failed=1), pods)
    assert update.patch["restarts"] == 2
    fewer = run(after(update), job(failed=1), pods[2:])
    assert fewer.patch["restarts"] == 2


def test_pods_of_other_jobs_are_ignored() -> None:
    stranger = pod("x", running=True, owner_name="other")
    stale = pod("y", phase="Failed", ended=terminated(1), owner_uid="an-earlier-job")
    unowned = pod("z", running=True, owner_name="other")
    unowned["metadata"]["ownerReferences"] = []
    unowned["metadata"]["labels"][names.LABEL_JOB] = "other"
    update = run(ftj(), job(), [stranger, stale, unowned, pod("mine", phase="Pending")])
    assert update.phase == "Pending"
    assert update.patch["restarts"] == 0


def test_an_unowned_pod_with_our_label_counts() -> None:
    mine = pod(running=True)
    mine["metadata"]["ownerReferences"] = []
    assert run(ftj(), job(), [mine]).phase == "Running"


def test_datetimes_from_a_typed_client_become_rfc3339() -> None:
    the_job = job(start=None)
    the_job["status"]["startTime"] = datetime(2025, 3, 1, 11, 0, 0, 123, tzinfo=UTC)
    update = run(ftj(), the_job, [pod(running=True)])
    assert update.patch["startTime"] == "2025-03-01T11:00:00Z"


def test_start_time_from_the_first_running_container_when_the_job_has_none() -> None:
    update = run(ftj(), job(start=None), [pod(running=True)])
    assert update.patch["startTime"] == "2025-03-01T11:01:00Z"


def test_reasons_are_made_camel_case_and_messages_capped() -> None:
    message = trainer_message(reason="bad reason!", exitCode=1, message="x" * 40_000)
    update = run(ftj(), _failed_job(), [pod(phase="Failed", ended=terminated(1, message))])
    failed = conditions(update)["Failed"]
    assert failed["reason"] == "badreason"
    assert len(failed["message"]) == status.MAX_MESSAGE
    assert failed["message"].endswith("[truncated]")
    assert update.event is not None and len(update.event.message) == status.MAX_EVENT_MESSAGE


def test_changes_lists_only_what_differs() -> None:
    update = run(ftj(), job(), [pod(running=True)])
    assert update.changes(update.patch) == {}
    assert set(update.changes({**update.patch, "restarts": 9})) == {"restarts"}


# --------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("text", "structured", "reason", "message"),
    [
        (trainer_message(reason="InvalidData", message="bad row"), True, "InvalidData", "bad row"),
        ("not json at all", False, None, "not json at all"),
        ('{"event":"step","step":3}', False, None, '{"event":"step","step":3}'),
        ("[1, 2]", False, None, "[1, 2]"),
    ],
)
def test_termination_messages_parse_and_garbage_is_a_message(
    text: str, structured: bool, reason: str | None, message: str
) -> None:
    parsed = TerminationMessage.parse(text)
    assert parsed is not None
    assert (parsed.structured, parsed.reason, parsed.message) == (structured, reason, message)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 4000,  # a log tail json.loads gives up on (RecursionError)
        '{"outcome":"Succeeded","metrics":{"trainLoss":1' + "0" * 400 + "}}",  # no float
    ],
)
def test_a_pathological_termination_message_neither_raises_nor_breaks_the_status(
    text: str,
) -> None:
    assert TerminationMessage.parse(text) is not None
    done = job(cond("Complete"), active=0, succeeded=1, completion="2025-03-01T11:50:05Z")
    update = run(ftj(), done, [pod(phase="Succeeded", ended=terminated(0, text))])
    assert update.phase == "Succeeded"
    assert "trainLoss" not in update.patch.get("metrics", {})


def test_an_empty_termination_message_is_none() -> None:
    assert TerminationMessage.parse(None) is None
    assert TerminationMessage.parse("  \n") is None


def test_the_trainers_own_success_message_round_trips() -> None:
    from finetune_trainer.outcome import succeeded, termination_message

    files = [{"path": "adapter_model.safetensors", "size": 3, "sha256": SHA}]
    text = termination_message(
        succeeded(7, "s3://b/o", "ok", files=files, metrics={"evalLoss": 0.5})
    )
    parsed = TerminationMessage.parse(text)
    assert parsed is not None
    assert (parsed.outcome, parsed.last_step, parsed.artifact_uri) == ("Succeeded", 7, "s3://b/o")
    assert list(parsed.files) == files
    assert parsed.metrics == {"evalLoss": 0.5}


def test_the_module_stays_pure() -> None:
    probe = (
        "import sys, json; import finetune_operator.status\n"
        "print(json.dumps(sorted(m for m in ('kopf', 'kubernetes', 'torch', 'transformers', "
        "'peft', 'urllib.request', 'http.client') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
