"""A FineTuneJob's status, derived from its Job, its pods and its trainer's progress.

Pure: plain dicts in (as the API server returns them), plain JSON-ready dicts out; no
I/O, no kopf, no Kubernetes client, so every rule is a unit test with dict fixtures.
The reconciler reads the objects, calls :func:`derive` and writes
:attr:`StatusUpdate.patch` (a JSON merge patch of ``status``) and
:attr:`StatusUpdate.event`.

By concern, each module saying its rules:

- :mod:`.pods`: a trainer pod reduced to what the rules need (running, ended, why);
- :mod:`.verdict`: the phase and its reason, from the Job and the pod views (the
  table of rules);
- :mod:`.conditions`: the five conditions, always present, True or False;
- :mod:`.planned`: the Planned condition and ``plan``, written once, at creation;
- :mod:`.events`: the Event that goes with a change;
- :mod:`.patch`: the entry points and every other field (progress, metrics,
  artifacts, times, restarts);
- :mod:`.phases`: the words (phases, condition types, reasons).

Value helpers shared with the observation side are :mod:`finetune_operator.values`;
exit codes and the trainer's termination message are the contract's
(:mod:`finetune_api.outcome`).
"""

from __future__ import annotations

from finetune_operator.status.conditions import MAX_MESSAGE, MAX_REASON
from finetune_operator.status.events import MAX_EVENT_MESSAGE, Event
from finetune_operator.status.patch import (
    ProgressReading,
    StatusUpdate,
    accepted,
    derive,
    invalid_spec,
    wont_fit,
)
from finetune_operator.status.phases import (
    CONDITION_TYPES,
    FAILED,
    PENDING,
    PLANNED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    TERMINAL,
    VALIDATED,
)
from finetune_operator.status.planned import Planned
from finetune_operator.status.pods import own_pods

__all__ = [
    "CONDITION_TYPES",
    "FAILED",
    "MAX_EVENT_MESSAGE",
    "MAX_MESSAGE",
    "MAX_REASON",
    "PENDING",
    "PLANNED",
    "RUNNING",
    "SUCCEEDED",
    "SUSPENDED",
    "TERMINAL",
    "VALIDATED",
    "Event",
    "Planned",
    "ProgressReading",
    "StatusUpdate",
    "accepted",
    "derive",
    "invalid_spec",
    "own_pods",
    "wont_fit",
]
