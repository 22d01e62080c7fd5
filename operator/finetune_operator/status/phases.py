"""The words of a FineTuneJob's status: phases, condition types and the operator's own
reasons. The trainer's reasons (``InvalidData``, ``OutOfMemory``, ...) are the
contract's (:mod:`finetune_api.outcome`) and pass through as they are."""

from __future__ import annotations

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = (
    "Pending",
    "Running",
    "Succeeded",
    "Failed",
    "Suspended",
)
TERMINAL = frozenset({SUCCEEDED, FAILED})
VALIDATED = "Validated"
CONDITION_TYPES = (VALIDATED, RUNNING, SUCCEEDED, FAILED, SUSPENDED)
"""Every condition the status carries, always, in this order."""

# Reasons of our own.
TRAINING = "Training"
PREEMPTED = "Preempted"
RETRYING = "Retrying"
FAILING = "Failing"
RESTARTING = "Restarting"
INTERRUPTIONS = frozenset({PREEMPTED, RETRYING, FAILING, RESTARTING})
EVENTFUL_INTERRUPTIONS = frozenset({PREEMPTED, RETRYING})
"""Interruptions that post an Event when they start or end (``Failing`` has none: the
Failed event follows)."""
INVALID_SPEC = "InvalidSpec"
VALID = "Valid"
