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
EVALUATION_PASSED = "EvaluationPassed"
"""The evaluation gate's verdict: only on a job whose spec has evaluation.gate, once the
trainer has judged it (True, GatePassed; False, GateFailed, and the job Failed)."""
GATE_PASSED = "GatePassed"
GATE_FAILED = "GateFailed"
PLANNED = "Planned"
"""The planner's verdict, written once with the first status (or the refusal) and kept
as it is after that: the plan is of the spec, which does not change."""

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

# The Planned condition's reasons.
FITS = "Fits"
"""Planned True: the peak fits one GPU of resources.gpuType / gpuMemory."""
MEMORY_UNKNOWN = "MemoryUnknown"
"""Planned True: planned, but the device's memory is unknown (no gpuType/gpuMemory)."""
MAY_NOT_FIT = "MayNotFit"
"""Planned True: a CPU job over its resources.memory; not refused (its estimate is an
upper bound without the data, and the kernel's limit decides)."""
WONT_FIT = "WontFit"
"""Planned False, and the job Failed: its GPUs cannot hold it; nothing is created."""
MODEL_CONFIG_UNAVAILABLE = "ModelConfigUnavailable"
"""Planned Unknown: the model's config.json could not be read; the job runs unplanned."""
MODEL_CONFIG_UNREADABLE = "ModelConfigUnreadable"
"""Planned Unknown: config.json was read but could not be planned from."""
