"""A FineTuneJob's status, derived from its Job, its pods and its trainer's progress.

Pure: plain dicts in (as the API server returns them), plain JSON-ready dicts out; no
I/O, no kopf, no Kubernetes client, so every rule below is a unit test with dict
fixtures. The handlers read the objects, call :func:`derive` and write
:attr:`StatusUpdate.patch` (a JSON merge patch of ``status``) and
:attr:`StatusUpdate.event`.

Where a verdict comes from, first matching row wins:

=====================================  ===========  ===================================
the objects say                        phase        reason (of the phase's condition)
=====================================  ===========  ===================================
status already Succeeded/Failed, Job   unchanged    unchanged (terminal: a Job removed
gone or not finished                                by ttlSecondsAfterFinished, or an
                                                    invalid spec, stays as it ended)
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

Every other field:

- ``conditions``: all of Validated, Running, Succeeded, Failed, Suspended, always, each
  True or False, so Argo CD's health check and ``kubectl wait --for=condition=X`` read
  them alone. The phase's own condition is True (Running only while training runs);
  the others are False with the same reason. ``lastTransitionTime`` moves only when a
  condition's status does; every condition carries ``observedGeneration``. Reasons are
  made CamelCase-safe, messages capped at the model's limit.
- ``progress``: from the scrape; a missing scrape (None) keeps the last progress, and a
  missing field keeps its last value: a trainer restarting never wipes the column.
  ``percent`` is floor(100 * step / totalSteps). On success step is the last step and
  percent 100.
- ``metrics``: trainLoss and evalLoss live; on success every field of
  :class:`~finetune_api.resource.Metrics` the trainer's message carries.
- ``artifacts``: on success, the URI and files from the trainer's message.
- ``startTime``: first set wins (the Job resets its own on resume): the Job's, else the
  first running container's. ``completionTime``: the Job's, else the condition's time.
- ``restarts``: never decreases; pods beyond the first per completion index (failed
  and preempted ones alike), plus one per index whose newest pod ended while the Job
  goes on (its replacement is coming), and at least the Job's failed count meanwhile.

Events: one when the phase changes, and when an interruption (``Preempted``,
``Retrying``) starts or ends while the phase stays, or when a terminal or suspended
phase's reason changes (Queued -> Suspended). ``Failing`` has none: the Failed event
follows. Warning for Failed and interruptions, Normal otherwise.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, Protocol

from annotated_types import MaxLen

from finetune_api.resource import Condition, Metrics
from finetune_operator import names

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = (
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
)
VALIDATED = "Validated"
CONDITION_TYPES = (VALIDATED, RUNNING, SUCCEEDED, FAILED, SUSPENDED)
TERMINAL = frozenset({SUCCEEDED, FAILED})

# Reasons of our own (the trainer's reasons pass through as they are).
TRAINING = "Training"
PREEMPTED = "Preempted"
RETRYING = "Retrying"
FAILING = "Failing"
RESTARTING = "Restarting"
INTERRUPTIONS = frozenset({PREEMPTED, RETRYING, FAILING, RESTARTING})
EVENTFUL_INTERRUPTIONS = frozenset({PREEMPTED, RETRYING})
INVALID_SPEC = "InvalidSpec"
VALID = "Valid"

EXIT_PREEMPTED = 143
NOT_RETRIED_EXIT_CODES = frozenset({2, 3, 5, 6})
"""The codes the Job's podFailurePolicy fails at once (builders.NOT_RETRYABLE_EXIT_CODES;
a test keeps the two equal)."""
EXIT_REASONS = {
    1: "Unexpected",
    2: "InvalidConfig",
    3: "InvalidData",
    4: "ModelLoadFailed",
    5: "StorageError",
    6: "OutOfMemory",
    7: "StorageUnavailable",
}
"""The trainer's exit codes (README, finetune_trainer.outcome), for a pod whose
termination message is not the trainer's JSON."""
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"}
)
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _max_length(model_field: Any) -> int:
    return next(m.max_length for m in model_field.metadata if isinstance(m, MaxLen))


MAX_MESSAGE = _max_length(Condition.model_fields["message"])
MAX_REASON = _max_length(Condition.model_fields["reason"])
MAX_EVENT_MESSAGE = 1024
"""events.k8s.io's limit on an Event's note; core Events are shown the same way."""
_METRIC_KEYS = tuple(str(f.alias or n) for n, f in Metrics.model_fields.items())
_TRUNCATED = " ...[truncated]"


# --------------------------------------------------------------------------- public types


class ProgressReading(Protocol):
    """What :func:`derive` reads from one scrape of the trainer's gauges; the scraper's
    ``finetune_operator.progress.TrainerProgress`` is one. Unknown values are None."""

    @property
    def step(self) -> int: ...
    @property
    def total_steps(self) -> int | None: ...
    @property
    def epoch(self) -> float | None: ...
    @property
    def train_loss(self) -> float | None: ...
    @property
    def eval_loss(self) -> float | None: ...
    @property
    def tokens_per_second(self) -> float | None: ...
    @property
    def eta_seconds(self) -> float | None: ...


class Event(NamedTuple):
    """A Kubernetes Event to record on the FineTuneJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class StatusUpdate:
    """The whole status the objects imply, to merge-patch (camelCase, JSON-ready, valid
    against FineTuneJobStatus), and the Event to record, if any."""

    patch: dict[str, Any]
    event: Event | None = None

    @property
    def phase(self) -> str | None:
        phase = self.patch.get("phase")
        return phase if isinstance(phase, str) else None

    def changes(self, current: Mapping[str, Any] | None) -> dict[str, Any]:
        """The part of :attr:`patch` that differs from ``current`` (empty: skip it)."""
        current = current or {}
        return {k: v for k, v in self.patch.items() if current.get(k) != v}


@dataclass(frozen=True)
class TerminationMessage:
    """The trainer's termination message (finetune_trainer.outcome), or what stood in
    its place: with ``terminationMessagePolicy: FallbackToLogsOnError`` the kubelet puts
    the log's tail there when the trainer wrote nothing (killed, crashed early)."""

    message: str
    outcome: str | None = None
    reason: str | None = None
    exit_code: int | None = None
    last_step: int | None = None
    artifact_uri: str | None = None
    files: tuple[Mapping[str, Any], ...] = ()
    files_omitted: bool = False
    metrics: Mapping[str, Any] | None = None

    @property
    def structured(self) -> bool:
        """Whether the trainer wrote it (not a log tail)."""
        return self.outcome is not None


# --------------------------------------------------------------------------- entry points


def derive(
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    progress: ProgressReading | None,
    now: datetime,
) -> StatusUpdate:
    """The status of ``ftj`` given its Job (None: not created yet), that Job's pods
    (others in the list are ignored) and the latest scrape (None: none this time)."""
    prev = _prev_status(ftj)
    views = [_view(pod) for pod in own_pods(ftj, job, pods)]
    finished = _job_finished(job)
    if prev.get("phase") in TERMINAL and finished is None:
        return _unchanged(ftj, prev)
    verdict = _verdict(ftj, job, views, prev, finished)
    progress_fields = _progress(prev.get("progress"), progress, verdict)
    if verdict.reason == TRAINING and progress_fields:
        verdict = replace(verdict, message=f"{_steps(progress_fields)}; {verdict.message}")
    patch = _base_patch(ftj, prev, verdict, now, job)
    patch["restarts"] = _restarts(prev, job, views, finished)
    start = prev.get("startTime") or _start_time(job, views)
    if start:
        patch["startTime"] = start
    if verdict.completion_time:
        patch["completionTime"] = prev.get("completionTime") or verdict.completion_time
    if progress_fields:
        patch["progress"] = progress_fields
    metrics = _metrics(prev.get("metrics"), progress, verdict)
    if metrics:
        patch["metrics"] = metrics
    if verdict.artifacts is not None:
        patch["artifacts"] = verdict.artifacts
    elif prev.get("artifacts"):
        patch["artifacts"] = prev["artifacts"]
    return StatusUpdate(patch, _event(prev, patch, verdict))


def invalid_spec(ftj: Mapping[str, Any], message: str, now: datetime) -> StatusUpdate:
    """The spec cannot run: Failed with InvalidSpec, and no pods are created."""
    prev = _prev_status(ftj)
    verdict = _Verdict(FAILED, INVALID_SPEC, message, FAILED)
    patch = _base_patch(ftj, prev, verdict, now, None, validated=(False, INVALID_SPEC, message))
    patch["restarts"] = int(prev.get("restarts") or 0)
    return StatusUpdate(patch, _event(prev, patch, verdict))


def accepted(ftj: Mapping[str, Any], job_name: str, now: datetime) -> StatusUpdate:
    """The spec is valid and the Job ``job_name`` exists: Pending. A status that already
    has a phase keeps it (an operator restart must not turn Running into Pending)."""
    prev = _prev_status(ftj)
    if prev.get("phase"):
        patch = dict(_unchanged(ftj, prev).patch)
        patch["jobName"] = job_name
        return StatusUpdate(patch)
    message = f"created the training Job {job_name}; waiting for its pods"
    verdict = _Verdict(PENDING, "JobCreated", message, None)
    patch = _base_patch(ftj, prev, verdict, now, None)
    patch["jobName"] = job_name
    patch["restarts"] = 0
    return StatusUpdate(patch, _event(prev, patch, verdict))


def own_pods(
    ftj: Mapping[str, Any], job: Mapping[str, Any] | None, pods: Iterable[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """The pods of this FineTuneJob's Job. A pod owned by a Job counts when that Job has
    our Job's name (and uid, when both are known); an unowned one by the job label. The
    caller's list may hold anything: a test API server ignores label selectors."""
    meta = _get(ftj, "metadata")
    ftj_name = str(meta.get("name", ""))
    namespace = meta.get("namespace")
    job_meta = _get(job, "metadata")
    job_name = job_meta.get("name") or names.job_name(ftj_name)
    job_uid = job_meta.get("uid")
    mine = []
    for pod in pods:
        pod_meta = _get(pod, "metadata")
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


def parse_termination_message(text: str | None) -> TerminationMessage | None:
    """The trainer's JSON summary; any other text (a log tail, garbage) as a bare
    message; None when there is no text."""
    if not text or not text.strip():
        return None
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("outcome"), str):
        return TerminationMessage(message=text.strip())
    files = data.get("files")
    metrics = data.get("metrics")
    return TerminationMessage(
        message=str(data.get("message") or ""),
        outcome=data["outcome"],
        reason=_str_or_none(data.get("reason")),
        exit_code=_int_or_none(data.get("exitCode")),
        last_step=_int_or_none(data.get("lastStep")),
        artifact_uri=_str_or_none(data.get("artifactUri")),
        files=tuple(f for f in files if isinstance(f, dict)) if isinstance(files, list) else (),
        files_omitted=data.get("filesOmitted") is True,
        metrics=metrics if isinstance(metrics, dict) else None,
    )


def trainer_container_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    """The trainer container's status (by name; the only one if none is so named)."""
    found = _get(pod, "status").get("containerStatuses") or []
    statuses: list[Mapping[str, Any]] = [s for s in found if isinstance(s, Mapping)]
    named = [s for s in statuses if s.get("name") == names.CONTAINER]
    if named:
        return named[0]
    return statuses[0] if len(statuses) == 1 else {}


# --------------------------------------------------------------------------- pods


@dataclass(frozen=True)
class _Pod:
    """What the rules need of one pod."""

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
        return _int_or_none(self.terminated.get("exitCode"))


def _view(pod: Mapping[str, Any]) -> _Pod:
    meta, status = _get(pod, "metadata"), _get(pod, "status")
    container = trainer_container_status(pod)
    state, last = container.get("state") or {}, container.get("lastState") or {}
    terminated = state.get("terminated") or last.get("terminated") or {}
    running = bool(state.get("running")) and not meta.get("deletionTimestamp")
    message = parse_termination_message(terminated.get("message"))
    code = _int_or_none(terminated.get("exitCode"))
    target = _pod_condition(status, "DisruptionTarget")
    disruption = ""
    if target is not None and target.get("status") == "True":
        disruption = _join(target.get("reason"), target.get("message"))
    elif status.get("reason") in ("Evicted", "Preempting"):
        disruption = _join(status.get("reason"), status.get("message"))
    elif code == EXIT_PREEMPTED or (message is not None and message.outcome == PREEMPTED):
        disruption = "SIGTERM, exit code 143, checkpoint saved"
    elif meta.get("deletionTimestamp") and code != 0 and status.get("phase") != SUCCEEDED:
        disruption = "deleted; its trainer saves a checkpoint on SIGTERM"
    succeeded = code == 0 or status.get("phase") == SUCCEEDED
    failed = not disruption and not succeeded and (status.get("phase") == FAILED or bool(code))
    scheduled = _pod_condition(status, "PodScheduled")
    unscheduled = None
    if scheduled is not None and scheduled.get("status") == "False":
        unscheduled = (
            str(scheduled.get("reason") or "Unschedulable"),
            _s(scheduled.get("message")),
        )
    started = (state.get("running") or {}).get("startedAt") or terminated.get("startedAt")
    return _Pod(
        name=str(meta.get("name", "?")),
        index=_completion_index(meta),
        created=_parse_time(meta.get("creationTimestamp")),
        running=running,
        succeeded=succeeded,
        failed=failed,
        disrupted=bool(disruption),
        terminated=terminated,
        waiting=state.get("waiting") or {},
        unscheduled=unscheduled,
        started_at=_time_str(started) if started else None,
        finished_at=_parse_time(terminated.get("finishedAt") or meta.get("creationTimestamp")),
        message=message,
        pod_reason=_s(status.get("reason")),
        pod_message=_s(status.get("message")),
        disruption=disruption,
    )


def _completion_index(meta: Mapping[str, Any]) -> str:
    for where in ("annotations", "labels"):
        value = (meta.get(where) or {}).get(COMPLETION_INDEX)
        if value is not None:
            return str(value)
    return "0"


def _pod_condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def _by_index(views: Iterable[_Pod]) -> dict[str, list[_Pod]]:
    groups: dict[str, list[_Pod]] = {}
    for view in sorted(views, key=lambda v: (v.created, v.name)):
        groups.setdefault(view.index, []).append(view)
    return groups


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class _Verdict:
    phase: str
    reason: str
    message: str
    true_condition: str | None
    """The condition that is True (besides Validated); None while pending/interrupted."""
    completion_time: str | None = None
    artifacts: dict[str, Any] | None = None
    final: TerminationMessage | None = None


def _verdict(
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    views: list[_Pod],
    prev: Mapping[str, Any],
    finished: tuple[str, Mapping[str, Any]] | None,
) -> _Verdict:
    spec = _get(ftj, "spec")
    if finished is not None and finished[0] == SUCCEEDED:
        return _succeeded(ftj, job, views, finished[1])
    if finished is not None:
        return _failed(views, finished[1])
    if spec.get("suspend") or _job_suspended(job):
        return _suspended(spec, views)
    if job is None:
        name = names.job_name(str(_get(ftj, "metadata").get("name", "")))
        return _Verdict(PENDING, "Creating", f"waiting for the training Job {name}", None)
    return _active(views, prev)


def _succeeded(
    ftj: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    views: list[_Pod],
    condition: Mapping[str, Any],
) -> _Verdict:
    done = [v for v in views if v.succeeded]
    best = max(done, key=_success_rank, default=None)
    final = best.message if best is not None and best.message is not None else None
    uri = (final.artifact_uri if final else None) or _get(_get(ftj, "spec"), "output").get("uri")
    artifacts = None
    if uri:
        artifacts = {
            "uri": str(uri),
            "files": [f for f in map(_file, final.files if final else ()) if f],
        }
    message = final.message if final and final.structured and final.message else ""
    if not message:
        message = f"training finished; artifacts at {uri}" if uri else "training finished"
    if final is not None and final.files_omitted:
        message += "\n(the file list did not fit in the termination message: see manifest.json)"
    completed = _get(job, "status").get("completionTime") or condition.get("lastTransitionTime")
    return _Verdict(
        SUCCEEDED,
        SUCCEEDED,
        message,
        SUCCEEDED,
        completion_time=_time_str(completed) if completed else None,
        artifacts=artifacts,
        final=final if final is not None and final.structured else None,
    )


def _success_rank(view: _Pod) -> tuple[bool, bool, bool, datetime]:
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


def _failed(views: list[_Pod], condition: Mapping[str, Any]) -> _Verdict:
    job_reason = _reason(condition.get("reason"), "JobFailed")
    job_message = _s(condition.get("message")) or "the training Job failed"
    when = condition.get("lastTransitionTime")
    completion = _time_str(when) if when else None

    def verdict(reason: str, message: str) -> _Verdict:
        return _Verdict(FAILED, reason, message, FAILED, completion_time=completion)

    last = max((v for v in views if v.failed), key=lambda v: v.finished_at, default=None)
    if job_reason == "DeadlineExceeded" or last is None:
        return verdict(job_reason, job_message)
    where = f"pod {last.name}, exit code {last.exit_code}"
    note = last.message
    if note is not None and note.structured and note.outcome == FAILED:
        return verdict(_reason(note.reason, job_reason), f"{note.message} ({where})")
    if last.terminated.get("reason") == "OOMKilled":
        return verdict(
            "OOMKilled",
            f"the kernel killed the trainer in pod {last.name} for exceeding its memory limit "
            "(exit code 137): raise resources.memory, or lower training.batchSize or "
            "training.maxSeqLength",
        )
    code = last.exit_code
    if code in EXIT_REASONS:
        tail = note.message if note is not None else ""
        return verdict(EXIT_REASONS[code], _join(f"the trainer exited with code {code}", tail))
    detail = _join(last.pod_reason, last.pod_message) or _s(last.terminated.get("reason"))
    return verdict(
        job_reason, _join(job_message, f"last pod {last.name}: {detail}" if detail else "")
    )


def _suspended(spec: Mapping[str, Any], views: list[_Pod]) -> _Verdict:
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
    return _Verdict(SUSPENDED, reason, message, SUSPENDED)


def _active(views: list[_Pod], prev: Mapping[str, Any]) -> _Verdict:
    running = [v for v in views if v.running]
    interrupted = _interruption(views)
    prev_phase = prev.get("phase")
    if running and interrupted is None:
        names_ = ", ".join(v.name for v in running)
        return _Verdict(RUNNING, TRAINING, f"training in pod {names_}", RUNNING)
    if running:
        assert interrupted is not None
        return _Verdict(RUNNING, interrupted[0], interrupted[1], None)
    waiting = _pending_cause(views)
    if interrupted is None:
        previous = _condition_of(prev, RUNNING)
        if prev_phase in (RUNNING, PENDING) and previous.get("reason") in INTERRUPTIONS:
            interrupted = (str(previous["reason"]), _first_part(_s(previous.get("message"))))
        elif prev_phase == RUNNING:
            interrupted = (RESTARTING, "no trainer runs; waiting for the Job to start a new pod")
    if interrupted is None:
        return _Verdict(PENDING, waiting[0], waiting[1], None)
    phase = RUNNING if prev_phase == RUNNING else PENDING
    message = interrupted[1]
    if waiting[0] not in ("JobCreated", "Starting"):
        message += f" | now {waiting[0]}: {waiting[1]}"
    return _Verdict(phase, interrupted[0], message, None)


def _interruption(views: list[_Pod]) -> tuple[str, str] | None:
    """(reason, message) for the latest ending of an index whose newest pod does not
    run: its trainer was preempted or failed and a replacement is (to be) started."""
    endings = []
    for group in _by_index(views).values():
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
        cause = _join(last.pod_reason or _s(last.terminated.get("reason")) or "Error", detail)
    what = f"pod {last.name} failed (exit code {last.exit_code}; {_cap(cause, 2048)})"
    if last.exit_code in NOT_RETRIED_EXIT_CODES:
        return FAILING, f"{what}; this exit code is not retried: the Job fails"
    return RETRYING, f"{what}; the Job retries (runPolicy.backoffLimit), {resume}"


_PENDING_RANK = {"ImagePullFailed": 0, "Unschedulable": 2}


def _pending_cause(views: list[_Pod]) -> tuple[str, str]:
    """Why the pods that should run do not, most actionable first."""
    current = [g[-1] for g in _by_index(views).values() if not g[-1].ended and not g[-1].succeeded]
    if not views:
        return "JobCreated", "the Job has no pods yet"
    causes: list[tuple[int, str, str]] = []
    for view in current:
        waiting = _s(view.waiting.get("reason"))
        detail = _s(view.waiting.get("message"))
        if waiting in IMAGE_PULL_REASONS:
            causes.append((0, "ImagePullFailed", f"pod {view.name}: {_join(waiting, detail)}"))
        elif waiting.endswith("Error"):
            causes.append((1, _reason(waiting, "ContainerError"), f"pod {view.name}: {detail}"))
        elif view.unscheduled is not None:
            reason = _reason(view.unscheduled[0], "Unschedulable")
            causes.append(
                (_PENDING_RANK.get(reason, 3), reason, f"pod {view.name}: {view.unscheduled[1]}")
            )
        elif waiting:
            causes.append(
                (4, _reason(waiting, "Starting"), f"pod {view.name}: {detail or waiting}")
            )
        else:
            causes.append((5, "Starting", f"pod {view.name} is starting"))
    if not causes:
        return "Starting", "waiting for the Job to start a pod"
    _, reason, message = min(causes, key=lambda c: c[0])
    return reason, message.rstrip(": ")


# --------------------------------------------------------------------------- the Job


def _job_finished(job: Mapping[str, Any] | None) -> tuple[str, Mapping[str, Any]] | None:
    """(Succeeded|Failed, the condition) once the Job controller has decided.
    FailureTarget and SuccessCriteriaMet (Kubernetes 1.31+) come first and are final
    too: the pods are only being terminated."""
    conditions = {
        c.get("type"): c
        for c in _get(job, "status").get("conditions") or []
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


def _job_suspended(job: Mapping[str, Any] | None) -> bool:
    if _get(job, "spec").get("suspend"):
        return True
    return any(
        c.get("type") == "Suspended" and c.get("status") == "True"
        for c in _get(job, "status").get("conditions") or []
    )


def _restarts(
    prev: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    views: list[_Pod],
    finished: tuple[str, Mapping[str, Any]] | None,
) -> int:
    groups = _by_index(views).values()
    beyond_first = sum(len(group) - 1 for group in groups)
    if finished is None:  # an ended newest pod of an unfinished Job: its replacement comes
        beyond_first += sum(1 for group in groups if group[-1].ended)
    failed = _int_or_none(_get(job, "status").get("failed")) or 0
    counted = failed if finished is None and job is not None else 0
    return max(int(prev.get("restarts") or 0), beyond_first, counted)


def _start_time(job: Mapping[str, Any] | None, views: list[_Pod]) -> str | None:
    start = _get(job, "status").get("startTime")
    if start:
        return _time_str(start)
    started = sorted((v.started_at for v in views if v.started_at), key=_parse_time)
    return started[0] if started else None


# --------------------------------------------------------------------------- assembling


def _base_patch(
    ftj: Mapping[str, Any],
    prev: Mapping[str, Any],
    verdict: _Verdict,
    now: datetime,
    job: Mapping[str, Any] | None,
    *,
    validated: tuple[bool, str, str] | None = None,
) -> dict[str, Any]:
    generation = _int_or_none(_get(ftj, "metadata").get("generation"))
    stamp = _time_str(now)
    old = {c.get("type"): c for c in prev.get("conditions") or [] if isinstance(c, dict)}
    if validated is None:
        validated = (True, VALID, "the spec is valid")
    conditions = [_condition(VALIDATED, *validated, old, stamp, generation)]
    for kind in (RUNNING, SUCCEEDED, FAILED, SUSPENDED):
        is_true = verdict.true_condition == kind
        message = verdict.message if is_true or kind == RUNNING else ""
        conditions.append(
            _condition(kind, is_true, verdict.reason, message, old, stamp, generation)
        )
    conditions += [c for t, c in old.items() if t not in CONDITION_TYPES]
    ftj_name = str(_get(ftj, "metadata").get("name", ""))
    patch: dict[str, Any] = {
        "phase": verdict.phase,
        "conditions": conditions,
        "jobName": _get(job, "metadata").get("name")
        or prev.get("jobName")
        or names.job_name(ftj_name),
    }
    if generation is not None:
        patch["observedGeneration"] = generation
    return patch


def _condition(
    kind: str,
    is_true: bool,
    reason: str,
    message: str,
    old: Mapping[Any, Mapping[str, Any]],
    stamp: str,
    generation: int | None,
) -> dict[str, Any]:
    status = "True" if is_true else "False"
    before = old.get(kind) or {}
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    condition: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": _reason(reason, "Unknown"),
        "message": _cap(message, MAX_MESSAGE),
        "lastTransitionTime": since or stamp,
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def _unchanged(ftj: Mapping[str, Any], prev: Mapping[str, Any]) -> StatusUpdate:
    """The status as it is, with the current generation observed."""
    generation = _int_or_none(_get(ftj, "metadata").get("generation"))
    patch = dict(prev)
    if generation is not None:
        patch["observedGeneration"] = generation
        patch["conditions"] = [
            {**c, "observedGeneration": generation} for c in prev.get("conditions") or []
        ]
    return StatusUpdate(patch)


def _progress(
    prev: Mapping[str, Any] | None, reading: ProgressReading | None, verdict: _Verdict
) -> dict[str, Any] | None:
    fields: dict[str, Any] = {
        k: v
        for k, v in (prev or {}).items()
        if k in ("step", "totalSteps", "epoch", "etaSeconds", "tokensPerSecond")
    }
    if reading is not None:
        fields["step"] = max(0, int(reading.step))
        updates = {
            "totalSteps": _whole(reading.total_steps),
            "epoch": _non_negative(reading.epoch),
            "etaSeconds": _whole(reading.eta_seconds),
            "tokensPerSecond": _non_negative(reading.tokens_per_second),
        }
        fields.update({k: v for k, v in updates.items() if v is not None})
    final = verdict.final
    if (
        final is not None
        and final.last_step is not None
        and final.last_step > fields.get("step", 0)
    ):
        fields["step"] = final.last_step
    if verdict.phase == SUCCEEDED:
        fields["etaSeconds"] = 0
    if not fields:
        return None
    fields.setdefault("step", 0)
    total = fields.get("totalSteps")
    if verdict.phase == SUCCEEDED:
        fields["percent"] = 100
    elif total:
        fields["percent"] = max(0, min(100, math.floor(100 * fields["step"] / total)))
    return fields


def _steps(progress: Mapping[str, Any]) -> str:
    """``step 40/100 (40%)``, or ``step 40`` while the total is unknown."""
    total = progress.get("totalSteps")
    if not total:
        return f"step {progress['step']}"
    return f"step {progress['step']}/{total} ({progress.get('percent', 0)}%)"


def _metrics(
    prev: Mapping[str, Any] | None, reading: ProgressReading | None, verdict: _Verdict
) -> dict[str, Any] | None:
    fields = {k: v for k, v in (prev or {}).items() if k in _METRIC_KEYS}
    if reading is not None:
        live = {"trainLoss": _finite(reading.train_loss), "evalLoss": _finite(reading.eval_loss)}
        fields.update({k: v for k, v in live.items() if v is not None})
    final = verdict.final
    if final is not None and final.metrics:
        for key in _METRIC_KEYS:
            value = _finite(final.metrics.get(key))
            if value is not None:
                fields[key] = value
    return fields or None


def _event(prev: Mapping[str, Any], patch: Mapping[str, Any], verdict: _Verdict) -> Event | None:
    if _event_key(prev) == _event_key(patch):
        return None
    warning = verdict.phase == FAILED or verdict.reason in EVENTFUL_INTERRUPTIONS
    old_phase = prev.get("phase")
    if old_phase and old_phase != verdict.phase:
        moved = f"{old_phase} -> {verdict.phase}"
    elif verdict.reason == TRAINING:
        moved = "resumed"
    else:
        moved = verdict.phase
    return Event(
        "Warning" if warning else "Normal",
        _reason(verdict.reason, verdict.phase),
        _cap(f"{moved}: {verdict.message}", MAX_EVENT_MESSAGE),
    )


def _event_key(status: Mapping[str, Any]) -> tuple[Any, str | None]:
    """What an Event marks: the phase, plus an eventful interruption while Pending or
    Running, or the reason of a Failed, Succeeded or Suspended phase."""
    phase = status.get("phase")
    if phase in (RUNNING, PENDING):
        reason = _condition_of(status, RUNNING).get("reason")
        return phase, reason if reason in EVENTFUL_INTERRUPTIONS else None
    if phase in (FAILED, SUCCEEDED, SUSPENDED):
        return phase, _condition_of(status, str(phase)).get("reason")
    return phase, None


# --------------------------------------------------------------------------- small helpers


def _prev_status(ftj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _get(ftj, "status")


def _get(obj: Mapping[str, Any] | None, key: str) -> Mapping[str, Any]:
    value = (obj or {}).get(key)
    return value if isinstance(value, Mapping) else {}


def _condition_of(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    found = next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)
    return found if isinstance(found, Mapping) else {}


def _s(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _join(first: Any, second: Any) -> str:
    return ": ".join(part for part in (_s(first), _s(second)) if part)


def _first_part(message: str) -> str:
    """A kept interruption message without its ' | now ...' suffix (re-derived)."""
    return message.split(" | now ", 1)[0]


_REASON_DROP = re.compile(r"[^A-Za-z0-9_,:]")


def _reason(value: Any, fallback: str) -> str:
    """``value`` fitted to the Condition reason pattern (CamelCase, ``[A-Za-z0-9_,:]``,
    starting with a letter, ending with a letter, digit or _), else ``fallback``."""
    text = _REASON_DROP.sub("", _s(value))
    text = text.lstrip("0123456789_,:")[:MAX_REASON].rstrip(",:")
    return text or fallback


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - len(_TRUNCATED)] + _TRUNCATED


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _non_negative(value: Any) -> float | None:
    finite = _finite(value)
    return finite if finite is not None and finite >= 0 else None


def _whole(value: Any) -> int | None:
    finite = _non_negative(value)
    return None if finite is None else int(finite)


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _time_str(value: Any) -> str:
    """RFC 3339 in UTC at whole seconds, as metav1.Time writes it; strings pass as-is
    (so an unchanged time compares equal to what the API server returned)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return _EPOCH
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return _EPOCH
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
