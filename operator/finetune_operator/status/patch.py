"""The whole status patch: the verdict's phase and conditions plus every other field.

The entry points of the status package live here: :func:`derive` (from a Job, its pods
and a progress scrape), :func:`invalid_spec`, :func:`wont_fit` and :func:`accepted`.
Each returns a :class:`StatusUpdate`: the status as a JSON merge patch, valid against
the contract's FineTuneJobStatus, and the Event to record.

Every field besides the phase and the conditions:

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
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from finetune_api.redaction import redact_data
from finetune_api.resource import Metrics
from finetune_operator import names
from finetune_operator.status.conditions import conditions
from finetune_operator.status.events import Event, event
from finetune_operator.status.phases import (
    FAILED,
    GATE_FAILED,
    GATE_PASSED,
    INVALID_SPEC,
    PENDING,
    SUCCEEDED,
    TERMINAL,
    TRAINING,
    WONT_FIT,
)
from finetune_operator.status.planned import Planned, with_planned
from finetune_operator.status.pods import PodView, by_index, own_pods, view
from finetune_operator.status.verdict import Verdict, job_finished, verdict
from finetune_operator.values import (
    EPOCH,
    finite,
    get,
    int_or_none,
    non_negative,
    parse_time,
    time_str,
    whole,
)

_METRIC_KEYS = tuple(str(f.alias or n) for n, f in Metrics.model_fields.items())


class ProgressReading(Protocol):
    """What :func:`derive` reads from one scrape of the trainer's gauges; the scraper's
    ``finetune_operator.observation.progress.TrainerProgress`` is one. Unknown values
    are None."""

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
    @property
    def trackers(self) -> Mapping[str, str]: ...
    @property
    def reward(self) -> float | None: ...


@dataclass(frozen=True)
class StatusUpdate:
    """The whole status the objects imply, to merge-patch (camelCase, JSON-ready, valid
    against FineTuneJobStatus), and the Event to record, if any."""

    patch: dict[str, Any]
    event: Event | None = None

    def __post_init__(self) -> None:
        # Anyone who may read the FineTuneJob reads its status: every text in it passes
        # the redaction layer, whichever field it came from (a tracker link, an artifact
        # URI, a message). Messages were redacted before they were cut (values.cap).
        object.__setattr__(self, "patch", redact_data(self.patch))

    @property
    def phase(self) -> str | None:
        phase = self.patch.get("phase")
        return phase if isinstance(phase, str) else None

    def changes(self, current: Mapping[str, Any] | None) -> dict[str, Any]:
        """The part of :attr:`patch` that differs from ``current`` (empty: skip it)."""
        current = current or {}
        return {k: v for k, v in self.patch.items() if current.get(k) != v}


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
    prev = get(ftj, "status")
    views = [view(pod) for pod in own_pods(ftj, job, pods)]
    finished = job_finished(job)
    if prev.get("phase") in TERMINAL and finished is None:
        return _unchanged(ftj, prev)
    found = verdict(ftj, job, views, prev, finished)
    progress_fields = _progress(prev.get("progress"), progress, found)
    if found.reason == TRAINING and progress_fields:
        found = replace(found, message=f"{_steps(progress_fields)}; {found.message}")
    patch = _base_patch(ftj, prev, found, now, job)
    patch["restarts"] = _restarts(prev, job, views, finished)
    start = prev.get("startTime") or _start_time(job, views)
    if start:
        patch["startTime"] = start
    if found.completion_time:
        patch["completionTime"] = prev.get("completionTime") or found.completion_time
    if progress_fields:
        patch["progress"] = progress_fields
    metrics = _metrics(prev.get("metrics"), progress, found)
    if metrics:
        patch["metrics"] = metrics
    if found.artifacts is not None:
        patch["artifacts"] = found.artifacts
    elif prev.get("artifacts"):
        patch["artifacts"] = prev["artifacts"]
    trackers = _trackers(prev.get("trackers"), progress, found)
    if trackers:
        patch["trackers"] = trackers
    return StatusUpdate(patch, event(prev, patch, found))


def invalid_spec(
    ftj: Mapping[str, Any], message: str, now: datetime, reason: str = INVALID_SPEC
) -> StatusUpdate:
    """The spec cannot run: Failed with InvalidSpec (or the runtime's ``reason``, e.g.
    RuntimeForbids), and no pods are created."""
    prev = get(ftj, "status")
    found = Verdict(FAILED, reason, message, FAILED)
    patch = _base_patch(ftj, prev, found, now, None, validated=(False, reason, message))
    patch["restarts"] = int(prev.get("restarts") or 0)
    return StatusUpdate(patch, event(prev, patch, found))


def accepted(
    ftj: Mapping[str, Any], job_name: str, now: datetime, planned: Planned | None = None
) -> StatusUpdate:
    """The spec is valid and the Job ``job_name`` exists: Pending, with the planner's
    verdict when it was asked (``planned``). A status that already has a phase keeps it
    (an operator restart must not turn Running into Pending)."""
    prev = get(ftj, "status")
    if prev.get("phase"):
        patch = dict(_unchanged(ftj, prev).patch)
        patch["jobName"] = job_name
        return StatusUpdate(patch)
    message = f"created the training Job {job_name}; waiting for its pods"
    found = Verdict(PENDING, "JobCreated", message, None)
    patch = _base_patch(ftj, prev, found, now, None)
    patch["jobName"] = job_name
    patch["restarts"] = 0
    if planned is not None:
        patch = _with_planned(ftj, prev, patch, planned, now)
    return StatusUpdate(patch, event(prev, patch, found))


def wont_fit(ftj: Mapping[str, Any], planned: Planned, now: datetime) -> StatusUpdate:
    """The planner says the job's GPUs cannot hold it: Failed with WontFit (the
    verdict, with the change that would fit, as the message) before any pod is created,
    rather than an out-of-memory crash after the image pull and the model download."""
    prev = get(ftj, "status")
    found = Verdict(FAILED, WONT_FIT, planned.message, FAILED)
    patch = _base_patch(ftj, prev, found, now, None)
    patch["restarts"] = int(prev.get("restarts") or 0)
    patch = _with_planned(ftj, prev, patch, planned, now)
    return StatusUpdate(patch, event(prev, patch, found))


# --------------------------------------------------------------------------- assembling


def _base_patch(
    ftj: Mapping[str, Any],
    prev: Mapping[str, Any],
    found: Verdict,
    now: datetime,
    job: Mapping[str, Any] | None,
    *,
    validated: tuple[bool, str, str] | None = None,
) -> dict[str, Any]:
    """Phase, conditions, jobName and observedGeneration."""
    generation = int_or_none(get(ftj, "metadata").get("generation"))
    ftj_name = str(get(ftj, "metadata").get("name", ""))
    patch: dict[str, Any] = {
        "phase": found.phase,
        "conditions": conditions(
            prev,
            true_condition=found.true_condition,
            reason=found.reason,
            message=found.message,
            stamp=time_str(now),
            generation=generation,
            validated=validated,
            evaluation=_evaluation(found),
        ),
        "jobName": get(job, "metadata").get("name")
        or prev.get("jobName")
        or names.job_name(ftj_name),
    }
    if generation is not None:
        patch["observedGeneration"] = generation
    return patch


def _evaluation(found: Verdict) -> tuple[bool, str, str] | None:
    """The EvaluationPassed condition of the verdict's gate, if it has one."""
    if found.gate is None:
        return None
    passed, message = found.gate
    return passed, GATE_PASSED if passed else GATE_FAILED, message


def _with_planned(
    ftj: Mapping[str, Any],
    prev: Mapping[str, Any],
    patch: dict[str, Any],
    planned: Planned,
    now: datetime,
) -> dict[str, Any]:
    generation = int_or_none(get(ftj, "metadata").get("generation"))
    return with_planned(patch, prev, planned, time_str(now), generation)


def _unchanged(ftj: Mapping[str, Any], prev: Mapping[str, Any]) -> StatusUpdate:
    """The status as it is, with the current generation observed."""
    generation = int_or_none(get(ftj, "metadata").get("generation"))
    patch = dict(prev)
    if generation is not None:
        patch["observedGeneration"] = generation
        patch["conditions"] = [
            {**c, "observedGeneration": generation} for c in prev.get("conditions") or []
        ]
    return StatusUpdate(patch)


def _restarts(
    prev: Mapping[str, Any],
    job: Mapping[str, Any] | None,
    views: list[PodView],
    finished: tuple[str, Mapping[str, Any]] | None,
) -> int:
    groups = by_index(views).values()
    beyond_first = sum(len(group) - 1 for group in groups)
    if finished is None:  # an ended newest pod of an unfinished Job: its replacement comes
        beyond_first += sum(1 for group in groups if group[-1].ended)
    failed = int_or_none(get(job, "status").get("failed")) or 0
    counted = failed if finished is None and job is not None else 0
    return max(int(prev.get("restarts") or 0), beyond_first, counted)


def _start_time(job: Mapping[str, Any] | None, views: list[PodView]) -> str | None:
    start = get(job, "status").get("startTime")
    if start:
        return time_str(start)
    started = sorted((v.started_at for v in views if v.started_at), key=_sort_time)
    return started[0] if started else None


def _sort_time(value: str) -> datetime:
    return parse_time(value) or EPOCH


# --------------------------------------------------------------------------- progress


def _progress(
    prev: Mapping[str, Any] | None, reading: ProgressReading | None, found: Verdict
) -> dict[str, Any] | None:
    fields: dict[str, Any] = {
        k: v
        for k, v in (prev or {}).items()
        if k in ("step", "totalSteps", "epoch", "etaSeconds", "tokensPerSecond", "reward")
    }
    if reading is not None:
        fields["step"] = max(0, int(reading.step))
        updates = {
            "totalSteps": whole(non_negative(reading.total_steps)),
            "epoch": non_negative(reading.epoch),
            "etaSeconds": whole(non_negative(reading.eta_seconds)),
            "tokensPerSecond": non_negative(reading.tokens_per_second),
            "reward": finite(reading.reward),
        }
        fields.update({k: v for k, v in updates.items() if v is not None})
    final = found.final
    if (
        final is not None
        and final.last_step is not None
        and final.last_step > fields.get("step", 0)
    ):
        fields["step"] = final.last_step
    if found.phase == SUCCEEDED:
        fields["etaSeconds"] = 0
    if not fields:
        return None
    fields.setdefault("step", 0)
    total = fields.get("totalSteps")
    if found.phase == SUCCEEDED:
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
    prev: Mapping[str, Any] | None, reading: ProgressReading | None, found: Verdict
) -> dict[str, Any] | None:
    fields = {k: v for k, v in (prev or {}).items() if k in _METRIC_KEYS}
    if reading is not None:
        live = {"trainLoss": finite(reading.train_loss), "evalLoss": finite(reading.eval_loss)}
        fields.update({k: v for k, v in live.items() if v is not None})
    final = found.final
    if final is not None and final.metrics:
        for key in _METRIC_KEYS:
            value = finite(final.metrics.get(key))
            if value is not None:
                fields[key] = value
    return fields or None


# --------------------------------------------------------------------------- trackers

_TRACKER_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
_TRACKER_URL = re.compile(r"^https?://\S{1,2040}$")
MAX_TRACKERS = 8


def _trackers(
    prev: Mapping[str, Any] | None, reading: ProgressReading | None, found: Verdict
) -> dict[str, str] | None:
    """The experiment trackers' pages: kept from before, then the live reading's, then
    the trainer's final message's. Only http(s) links under plain names are shown: the
    text comes from a pod running user code, and the status is shown in dashboards."""
    links: dict[str, str] = dict(prev or {})
    if reading is not None:
        links.update(reading.trackers)
    if found.final is not None and found.final.trackers:
        links.update(found.final.trackers)
    shown = {
        name: url
        for name, url in sorted(links.items())
        if isinstance(url, str) and _TRACKER_NAME.match(name) and _TRACKER_URL.match(url)
    }
    return dict(list(shown.items())[:MAX_TRACKERS]) or None
