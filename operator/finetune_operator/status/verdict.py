"""The verdict: a FineTuneJob's phase, and the reason and message of its conditions,
from its Job and the views of its pods (:mod:`~finetune_operator.status.pods`).

Pure, like the rest of the status package: the rules below are unit tests with dict
fixtures. Exit codes and the trainer's termination message are the contract's
(:mod:`finetune_api.outcome`): the codes the Job's podFailurePolicy fails at once are
:data:`~finetune_api.outcome.NOT_RETRYABLE_EXIT_CODES`, and a code's reason is
:func:`~finetune_api.outcome.exit_reason`.

Where a verdict comes from, first matching row wins (the first row is applied by
:func:`~finetune_operator.status.patch.derive`, before any rule here):

=====================================  ===========  ===================================
the objects say                        phase        reason (of the phase's condition)
=====================================  ===========  ===================================
status already Succeeded/Failed, Job   unchanged    unchanged (terminal: a Job removed
gone or not finished                                by ttlSecondsAfterFinished, or an
                                                    invalid spec or a WontFit, stays
                                                    as it ended)
Job condition Complete (or             Succeeded    ``Succeeded``; artifacts and final
SuccessCriteriaMet) True                            metrics from the trainer's message
Job condition Failed (or               Failed       ``DeadlineExceeded`` if the Job's
FailureTarget) True                                 reason is that (the trainer was only
                                                    stopped), else the last failed pod's
                                                    trainer message reason
                                                    (``InvalidData``, ``OutOfMemory``,
                                                    ...), else ``OOMKilled`` (container
                                                    reason), else the exit code's reason
                                                    (log tail as message), else the
                                                    Job's reason (``BackoffLimitExceeded``
                                                    ...)
spec.suspend, Job spec.suspend or Job  Suspended    ``Queued`` when spec.queueName is set
condition Suspended True                            and the user did not suspend (Kueue
                                                    admits it), else ``Suspended``
no Job                                 Pending      ``Creating``
a trainer container runs (pod not      Running      ``Training`` (message: step/total)
being deleted)
... but another index's newest pod     Running      Running=False ``Preempted`` /
ended (multi-node)                                  ``Retrying`` / ``Failing``
no trainer runs; the newest pod of an  Running if   Running=False: ``Preempted`` (exit
index ended, or an older pod of it     it was,      143, DisruptionTarget, Evicted or
did while the newest waits             else         deleted), ``Failing`` (exit 2, 3, 5,
                                       Pending      6: podFailurePolicy fails the Job),
                                                    else ``Retrying``; the message says
                                                    which pod, why, and that training
                                                    resumes from the last checkpoint
no trainer runs, nothing ended, but    as above     the previous interruption's reason
the last status was interrupted, or                 (kept until a pod runs; its pods may
was Running                                         be gone), else ``Restarting``
pods waiting                           Pending      ``ImagePullFailed`` (ErrImagePull,
                                                    ImagePullBackOff, ...), a waiting
                                                    reason ending in ``Error`` (e.g.
                                                    CreateContainerConfigError: a missing
                                                    Secret), ``Unschedulable`` (scheduler's
                                                    message), other scheduling or waiting
                                                    reasons, else ``Starting``
Job, no pods yet                       Pending      ``JobCreated``
=====================================  ===========  ===================================

"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from finetune_api.outcome import NOT_RETRYABLE_EXIT_CODES, TerminationMessage, exit_reason
from finetune_operator import names
from finetune_operator.status.conditions import condition_of, safe_reason
from finetune_operator.status.phases import (
    FAILED,
    FAILING,
    INTERRUPTIONS,
    PENDING,
    PREEMPTED,
    RESTARTING,
    RETRYING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TRAINING,
)
from finetune_operator.status.pods import PodView, by_index
from finetune_operator.values import cap, get, join, text, time_str

IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)


@dataclass(frozen=True)
class Verdict:
    phase: str
    reason: str
    message: str
    true_condition: str | None
    """The condition that is True (besides Validated); None while pending/interrupted."""
    completion_time: str | None = None
    artifacts: dict[str, Any] | None = None
    final: TerminationMessage | None = None
    """The trainer's own message on success, or on a failed evaluation gate (its last
    step, metrics and published files)."""
    gate: tuple[bool, str] | None = None
    """The evaluation gate's verdict from the trainer's message: (passed, message)."""


def verdict(
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    views: list[PodView],
    prev: Mapping[str, Any],
    finished: tuple[str, Mapping[str, Any]] | None,
) -> Verdict:
    """The verdict for ``ftj`` given its Job, its pods' views, the status it has
    (``prev``) and :func:`job_finished` of the Job."""
    spec = get(ftj, "spec")
    if finished is not None and finished[0] == SUCCEEDED:
        return _succeeded(ftj, job, views, finished[1])
    if finished is not None:
        return _failed(views, finished[1])
    if spec.get("suspend") or job_suspended(job):
        return _suspended(spec, views)
    if job is None:
        name = names.job_name(str(get(ftj, "metadata").get("name", "")))
        return Verdict(PENDING, "Creating", f"waiting for the training Job {name}", None)
    return _active(views, prev)


# --------------------------------------------------------------------------- the Job


def job_finished(job: Mapping[str, Any] | None) -> tuple[str, Mapping[str, Any]] | None:
    """(Succeeded|Failed, the condition) once the Job controller has decided.
    FailureTarget and SuccessCriteriaMet (Kubernetes 1.31+) come first and are final
    too: the pods are only being terminated."""
    conditions = {
        c.get("type"): c
        for c in get(job, "status").get("conditions") or []
        if c.get("status") == "True"
    }
    for kind, phase in (
        ("Complete", SUCCEEDED),
        ("Failed", FAILED),
        ("SuccessCriteriaMet", SUCCEEDED),
        ("FailureTarget", FAILED),
    ):
        if kind in conditions:
            return phase, conditions[kind]
    return None


def job_suspended(job: Mapping[str, Any] | None) -> bool:
    if get(job, "spec").get("suspend"):
        return True
    return any(
        c.get("type") == "Suspended" and c.get("status") == "True"
        for c in get(job, "status").get("conditions") or []
    )


# --------------------------------------------------------------------------- finished


def _succeeded(
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    views: list[PodView],
    condition: Mapping[str, Any],
) -> Verdict:
    done = [v for v in views if v.succeeded]
    best = max(done, key=_success_rank, default=None)
    final = best.message if best is not None and best.message is not None else None
    uri = (final.artifact_uri if final else None) or get(get(ftj, "spec"), "output").get("uri")
    artifacts = None
    if uri:
        files = (final.files if final else None) or ()
        artifacts = {"uri": str(uri), "files": [f for f in map(_file, files) if f]}
    message = final.message if final and final.structured and final.message else ""
    if not message:
        message = f"training finished; artifacts at {uri}" if uri else "training finished"
    if final is not None and final.files_omitted:
        message += "\n(the file list did not fit in the termination message: see manifest.json)"
    completed = get(job, "status").get("completionTime") or condition.get("lastTransitionTime")
    return Verdict(
        SUCCEEDED,
        SUCCEEDED,
        message,
        SUCCEEDED,
        completion_time=time_str(completed) if completed else None,
        artifacts=artifacts,
        final=final if final is not None and final.structured else None,
        gate=_gate(final),
    )


def _gate(message: TerminationMessage | None) -> tuple[bool, str] | None:
    """The gate's verdict as the EvaluationPassed condition shows it."""
    if message is None or message.gate is None:
        return None
    if message.gate["passed"]:
        return True, "every condition of evaluation.gate is met"
    failed = "; ".join(message.gate["failed"]) or "see manifest.json's gate"
    return False, f"missed: {failed}"


def _gate_failed(note: TerminationMessage, completion: str | None, where: str) -> Verdict:
    """Failed by the evaluation gate: the set was published (for inspection), so the
    status keeps its artifacts and final metrics, as a success's would."""
    uri = note.artifact_uri
    files = [f for f in map(_file, note.files or ()) if f]
    return Verdict(
        FAILED,
        safe_reason(note.reason, "EvaluationGateFailed"),
        f"{note.message} ({where})",
        FAILED,
        completion_time=completion,
        artifacts={"uri": uri, "files": files} if uri else None,
        final=note,
        gate=_gate(note),
    )


def _success_rank(view: PodView) -> tuple[bool, bool, bool, datetime]:
    """Rank 0 (index 0) carries the metrics and files; other ranks' messages do not."""
    message = view.message
    rich = message is not None and (message.metrics is not None or bool(message.files))
    return (rich, message is not None and message.structured, view.index == "0", view.finished_at)


def _file(entry: Mapping[str, Any]) -> dict[str, Any] | None:
    path, size, sha = entry.get("path"), entry.get("size"), entry.get("sha256")
    if not isinstance(path, str) or not path:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None
    if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
        return None
    return {"path": path, "size": size, "sha256": sha}


def _failed(views: list[PodView], condition: Mapping[str, Any]) -> Verdict:
    job_reason = safe_reason(condition.get("reason"), "JobFailed")
    job_message = text(condition.get("message")) or "the training Job failed"
    when = condition.get("lastTransitionTime")
    completion = time_str(when) if when else None

    def failed(reason: str, message: str) -> Verdict:
        return Verdict(FAILED, reason, message, FAILED, completion_time=completion)

    last = max((v for v in views if v.failed), key=lambda v: v.finished_at, default=None)
    if job_reason == "DeadlineExceeded" or last is None:
        return failed(job_reason, job_message)
    where = f"pod {last.name}, exit code {last.exit_code}"
    note = last.message
    if note is not None and note.structured and note.outcome == FAILED and note.gate is not None:
        return _gate_failed(note, completion, where)
    if note is not None and note.structured and note.outcome == FAILED:
        return failed(safe_reason(note.reason, job_reason), f"{note.message} ({where})")
    if last.terminated.get("reason") == "OOMKilled":
        return failed(
            "OOMKilled",
            f"the kernel killed the trainer in pod {last.name} for exceeding its memory limit "
            "(exit code 137): raise resources.memory, or lower training.batchSize or "
            "training.maxSeqLength",
        )
    code = last.exit_code
    named = exit_reason(code) if code is not None else None
    if named is not None:
        tail = note.message if note is not None else ""
        return failed(named, join(f"the trainer exited with code {code}", tail))
    detail = join(last.pod_reason, last.pod_message) or text(last.terminated.get("reason"))
    return failed(
        job_reason, join(job_message, f"last pod {last.name}: {detail}" if detail else "")
    )


# --------------------------------------------------------------------------- not finished


def _suspended(spec: Mapping[str, Any], views: list[PodView]) -> Verdict:
    queue = spec.get("queueName")
    stopping = any(v.running or (v.disrupted and not v.terminated) for v in views)
    if queue and not spec.get("suspend"):
        message = f"waiting for Kueue to admit the Job (queue {queue})"
        reason = "Queued"
    else:
        message = (
            "suspended (spec.suspend): no trainer runs; training resumes from the last "
            "checkpoint when spec.suspend is set back to false"
        )
        reason = SUSPENDED
    if stopping:
        message += "; the trainer pods are stopping and saving a checkpoint"
    return Verdict(SUSPENDED, reason, message, SUSPENDED)


def _active(views: list[PodView], prev: Mapping[str, Any]) -> Verdict:
    running = [v for v in views if v.running]
    interrupted = _interruption(views)
    prev_phase = prev.get("phase")
    if running and interrupted is None:
        pods = ", ".join(v.name for v in running)
        return Verdict(RUNNING, TRAINING, f"training in pod {pods}", RUNNING)
    if running:
        assert interrupted is not None
        return Verdict(RUNNING, interrupted[0], interrupted[1], None)
    waiting = _pending_cause(views)
    if interrupted is None:
        previous = condition_of(prev, RUNNING)
        if prev_phase in (RUNNING, PENDING) and previous.get("reason") in INTERRUPTIONS:
            interrupted = (str(previous["reason"]), _first_part(text(previous.get("message"))))
        elif prev_phase == RUNNING:
            interrupted = (RESTARTING, "no trainer runs; waiting for the Job to start a new pod")
    if interrupted is None:
        return Verdict(PENDING, waiting[0], waiting[1], None)
    phase = RUNNING if prev_phase == RUNNING else PENDING
    message = interrupted[1]
    if waiting[0] not in ("JobCreated", "Starting"):
        message += f" | now {waiting[0]}: {waiting[1]}"
    return Verdict(phase, interrupted[0], message, None)


def _first_part(message: str) -> str:
    """A kept interruption message without its ' | now ...' suffix (re-derived)."""
    return message.split(" | now ", 1)[0]


def _interruption(views: list[PodView]) -> tuple[str, str] | None:
    """(reason, message) for the latest ending of an index whose newest pod does not
    run: its trainer was preempted or failed and a replacement is (to be) started."""
    endings = []
    for group in by_index(views).values():
        if group[-1].running or group[-1].succeeded:
            continue
        ended = [v for v in group if v.ended]
        if ended:
            endings.append(max(ended, key=lambda v: v.finished_at))
    if not endings:
        return None
    last = max(endings, key=lambda v: v.finished_at)
    resume = "resuming from the last checkpoint when a new pod runs"
    if last.disrupted:
        return PREEMPTED, f"pod {last.name} was preempted ({last.disruption}); {resume}"
    note = last.message
    if note is not None and note.structured:
        cause = f"{note.reason}: {note.message}"
    elif last.terminated.get("reason") == "OOMKilled":
        cause = "OOMKilled: the kernel killed it for exceeding its memory limit"
    else:
        detail = note.message if note is not None else last.pod_message
        cause = join(last.pod_reason or text(last.terminated.get("reason")) or "Error", detail)
    what = f"pod {last.name} failed (exit code {last.exit_code}; {cap(cause, 2048)})"
    if last.exit_code in NOT_RETRYABLE_EXIT_CODES:
        return FAILING, f"{what}; this exit code is not retried: the Job fails"
    return RETRYING, f"{what}; the Job retries (runPolicy.backoffLimit), {resume}"


_PENDING_RANK = {"ImagePullFailed": 0, "Unschedulable": 2}


def _pending_cause(views: list[PodView]) -> tuple[str, str]:
    """Why the pods that should run do not, most actionable first."""
    current = [g[-1] for g in by_index(views).values() if not g[-1].ended and not g[-1].succeeded]
    if not views:
        return "JobCreated", "the Job has no pods yet"
    causes: list[tuple[int, str, str]] = []
    for view in current:
        waiting = text(view.waiting.get("reason"))
        detail = text(view.waiting.get("message"))
        if waiting in IMAGE_PULL_REASONS:
            causes.append((0, "ImagePullFailed", f"pod {view.name}: {join(waiting, detail)}"))
        elif waiting.endswith("Error"):
            causes.append((1, safe_reason(waiting, "ContainerError"), f"pod {view.name}: {detail}"))
        elif view.unscheduled is not None:
            reason = safe_reason(view.unscheduled[0], "Unschedulable")
            causes.append(
                (_PENDING_RANK.get(reason, 3), reason, f"pod {view.name}: {view.unscheduled[1]}")
            )
        elif waiting:
            causes.append(
                (4, safe_reason(waiting, "Starting"), f"pod {view.name}: {detail or waiting}")
            )
        else:
            causes.append((5, "Starting", f"pod {view.name} is starting"))
    if not causes:
        return "Starting", "waiting for the Job to start a pod"
    _, reason, message = min(causes, key=lambda c: c[0])
    return reason, message.rstrip(": ")
