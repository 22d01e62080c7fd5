"""Failures the trainer classifies, each with the exit code the operator reads.

A pod's exit code is the only thing the operator reliably learns about why a trainer
stopped, so each class of failure has its own code: bad configuration and bad data
must not be retried, storage hiccups may be.
"""

from __future__ import annotations


class TrainerError(Exception):
    """A failure with a message for the user and an exit code for the operator."""

    exit_code = 1
    reason = "TrainerError"


class ConfigError(TrainerError):
    """The TrainerConfig cannot work on this machine (e.g. fp16 without a GPU)."""

    exit_code = 2
    reason = "InvalidConfig"


class DataError(TrainerError):
    """The dataset is unreadable or does not match the declared format."""

    exit_code = 3
    reason = "InvalidData"


class ModelError(TrainerError):
    """The base model cannot be found or loaded."""

    exit_code = 4
    reason = "ModelLoadFailed"


class StorageError(TrainerError):
    """Storage refused the run: no such bucket, key or file, access denied, a damaged
    download. Retrying the same spec will not help."""

    exit_code = 5
    reason = "StorageError"


class StorageUnavailable(StorageError):
    """A store kept failing with transient errors (timeouts, 5xx, throttling) until the
    retry deadline ran out: unlike a refusal (403, 404), a later attempt may succeed."""

    exit_code = 7
    reason = "StorageUnavailable"


class OutOfMemory(TrainerError):
    """GPU or host memory ran out. The same spec on the same hardware fails the same way:
    the fix is a smaller batch or sequence length, gradient checkpointing, quantization
    (qlora) or a bigger machine."""

    exit_code = 6
    reason = "OutOfMemory"


class Preempted(TrainerError):
    """SIGTERM (a pod being evicted, preempted or deleted) stopped the run after a
    checkpoint was saved; the next attempt resumes from it. 143 is 128 + SIGTERM, what
    a process killed by the signal would have returned."""

    exit_code = 143
    reason = "Preempted"
