"""Trainer pods as the verdict reads them.

A pod as the API server returns it is a deep dict whose interesting parts hide in the
trainer container's ``state`` or ``lastState``, its conditions and its termination
message. :func:`view` reduces one pod to a :class:`PodView`: whether its trainer runs,
ended (failed or disrupted) or succeeded, why, and when; :func:`by_index` groups the
views by completion index, oldest first, so the newest pod of each index is the last.
:func:`own_pods` picks this FineTuneJob's pods out of whatever list the caller has.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finetune_api.outcome import ExitCode, TerminationMessage
from finetune_operator import names
from finetune_operator.status.phases import FAILED, PREEMPTED, SUCCEEDED
from finetune_operator.values import EPOCH, get, int_or_none, join, parse_time, text, time_str


@dataclass(frozen=True)
class PodView:
    """What the verdict needs of one pod."""

    name: str
    index: str
    created: datetime
    running: bool
    succeeded: bool
    failed: bool
    disrupted: bool
    terminated: Mapping[str, Any]
    waiting: Mapping[str, Any]
    unscheduled: tuple[str, str] | None
    started_at: str | None
    finished_at: datetime
    message: TerminationMessage | None
    pod_reason: str
    pod_message: str
    disruption: str

    @property
    def ended(self) -> bool:
        return self.failed or self.disrupted

    @property
    def exit_code(self) -> int | None:
        return int_or_none(self.terminated.get("exitCode"))


def own_pods(
    ftj: Mapping[str, Any], job: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The pods of this FineTuneJob's Job. A pod owned by a Job counts when that Job has
    our Job's name (and uid, when both are known); an unowned one by the job label. The
    caller's list may hold anything: a test API server ignores label selectors."""
    meta = get(ftj, "metadata")
    ftj_name = str(meta.get("name", ""))
    namespace = meta.get("namespace")
    job_meta = get(job, "metadata")
    job_name = job_meta.get("name") or names.job_name(ftj_name)
    job_uid = job_meta.get("uid")
    mine = []
    for pod in pods:
        pod_meta = get(pod, "metadata")
        if namespace and pod_meta.get("namespace") not in (None, namespace):
            continue
        owners = [r for r in pod_meta.get("ownerReferences") or [] if r.get("kind") == "Job"]
        if owners:
            ok = any(
                r.get("name") == job_name
                and (not job_uid or not r.get("uid") or r["uid"] == job_uid)
                for r in owners
            )
        else:
            ok = (pod_meta.get("labels") or {}).get(names.LABEL_JOB) == ftj_name
        if ok:
            mine.append(pod)
    return mine


def trainer_container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The trainer container's status (by name; the only one if none is so named)."""
    found = get(pod, "status").get("containerStatuses") or []
    statuses: list[Mapping[str, Any]] = [s for s in found if isinstance(s, Mapping)]
    named = [s for s in statuses if s.get("name") == names.CONTAINER]
    if named:
        return named[0]
    return statuses[0] if len(statuses) == 1 else {}


def completion_index(pod: Mapping[str, Any]) -> str | None:
    """An Indexed Job's pod index: the annotation, or the label Kubernetes 1.28+ adds;
    None for a pod of a plain Job."""
    meta = get(pod, "metadata")
    for where in ("annotations", "labels"):
        value = (meta.get(where) or {}).get(names.COMPLETION_INDEX)
        if value is not None:
            return str(value)
    return None


def view(pod: Mapping[str, Any]) -> PodView:
    meta, status = get(pod, "metadata"), get(pod, "status")
    container = trainer_container_status(pod)
    state, last = container.get("state") or {}, container.get("lastState") or {}
    terminated = state.get("terminated") or last.get("terminated") or {}
    running = bool(state.get("running")) and not meta.get("deletionTimestamp")
    message = TerminationMessage.parse(terminated.get("message"))
    code = int_or_none(terminated.get("exitCode"))
    succeeded = code == 0 or status.get("phase") == SUCCEEDED
    disruption = _disruption(meta, status, code, message)
    failed = not disruption and not succeeded and (status.get("phase") == FAILED or bool(code))
    started = (state.get("running") or {}).get("startedAt") or terminated.get("startedAt")
    index = completion_index(pod)
    return PodView(
        name=str(meta.get("name", "?")),
        index=index if index is not None else "0",
        created=parse_time(meta.get("creationTimestamp")) or EPOCH,
        running=running,
        succeeded=succeeded,
        failed=failed,
        disrupted=bool(disruption),
        terminated=terminated,
        waiting=state.get("waiting") or {},
        unscheduled=_unscheduled(status),
        started_at=time_str(started) if started else None,
        finished_at=parse_time(terminated.get("finishedAt") or meta.get("creationTimestamp"))
        or EPOCH,
        message=message,
        pod_reason=text(status.get("reason")),
        pod_message=text(status.get("message")),
        disruption=disruption,
    )


def by_index(views: Iterable[PodView]) -> dict[str, list[PodView]]:
    """The views by completion index, each group oldest first."""
    groups: dict[str, list[PodView]] = {}
    for one in sorted(views, key=lambda v: (v.created, v.name)):
        groups.setdefault(one.index, []).append(one)
    return groups


def _disruption(
    meta: Mapping[str, Any],
    status: Mapping[str, Any],
    code: int | None,
    message: TerminationMessage | None,
) -> str:
    """Why the pod was stopped from outside (preemption, eviction, deletion, SIGTERM),
    or empty: a stopped trainer resumes from its checkpoint, it did not fail."""
    target = _pod_condition(status, "DisruptionTarget")
    if target is not None and target.get("status") == "True":
        return join(target.get("reason"), target.get("message"))
    if status.get("reason") in ("Evicted", "Preempting"):
        return join(status.get("reason"), status.get("message"))
    if code == ExitCode.PREEMPTED or (message is not None and message.outcome == PREEMPTED):
        return "SIGTERM, exit code 143, checkpoint saved"
    if meta.get("deletionTimestamp") and code != 0 and status.get("phase") != SUCCEEDED:
        return "deleted; its trainer saves a checkpoint on SIGTERM"
    return ""


def _unscheduled(status: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, scheduler's message) while the pod cannot be scheduled."""
    scheduled = _pod_condition(status, "PodScheduled")
    if scheduled is None or scheduled.get("status") != "False":
        return None
    return str(scheduled.get("reason") or "Unschedulable"), text(scheduled.get("message"))


def _pod_condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)
