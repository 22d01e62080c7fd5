"""The Kubernetes Event that goes with a status change, if any.

One when the phase changes, and when an interruption (``Preempted``, ``Retrying``)
starts or ends while the phase stays, or when a terminal or suspended phase's reason
changes (Queued -> Suspended). ``Failing`` has none: the Failed event follows. Warning
for Failed and interruptions, Normal otherwise. Comparing what an Event marks (the
phase and such a reason) in the status before and after, rather than remembering what
was posted, makes a repeated derivation post nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from finetune_operator.status.conditions import condition_of, safe_reason
from finetune_operator.status.phases import (
    EVENTFUL_INTERRUPTIONS,
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TRAINING,
)
from finetune_operator.status.verdict import Verdict
from finetune_operator.values import cap

MAX_EVENT_MESSAGE = 1024
"""events.k8s.io's limit on an Event's note; core Events are shown the same way."""


class Event(NamedTuple):
    """A Kubernetes Event to record on the FineTuneJob."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def event(prev: Mapping[str, Any], patch: Mapping[str, Any], verdict: Verdict) -> Event | None:
    """The Event for going from status ``prev`` to ``patch`` by ``verdict``; None when
    nothing an Event marks changed."""
    if event_key(prev) == event_key(patch):
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
        safe_reason(verdict.reason, verdict.phase),
        cap(f"{moved}: {verdict.message}", MAX_EVENT_MESSAGE),
    )


def event_key(status: Mapping[str, Any]) -> tuple[Any, str | None]:
    """What an Event marks: the phase, plus an eventful interruption while Pending or
    Running, or the reason of a Failed, Succeeded or Suspended phase."""
    phase = status.get("phase")
    if phase in (RUNNING, PENDING):
        reason = condition_of(status, RUNNING).get("reason")
        return phase, reason if reason in EVENTFUL_INTERRUPTIONS else None
    if phase in (FAILED, SUCCEEDED, SUSPENDED):
        return phase, condition_of(status, str(phase)).get("reason")
    return phase, None
