"""Failures the trainer classifies, each with the exit code the operator reads.

A pod's exit code is the only thing the operator reliably learns about why a trainer
stopped, so each class of failure has its own code: bad configuration and bad data
must not be retried, storage hiccups may be. The codes and reasons are the contract's
table (:class:`finetune_api.outcome.ExitCode`); each class here names its entry.
"""

from __future__ import annotations

from finetune_api.outcome import ExitCode


class TrainerError(Exception):
    """A failure with a message for the user and an exit code for the operator."""

    exit_code: int = ExitCode.UNEXPECTED
    reason: str = "TrainerError"


class ConfigError(TrainerError):
    """The TrainerConfig cannot work on this machine (e.g. fp16 without a GPU)."""

    exit_code: int = ExitCode.INVALID_CONFIG
    reason: str = ExitCode.INVALID_CONFIG.reason


class DataError(TrainerError):
    """The dataset is unreadable or does not match the declared format."""

    exit_code: int = ExitCode.INVALID_DATA
    reason: str = ExitCode.INVALID_DATA.reason


class ModelError(TrainerError):
    """The base model cannot be found or loaded."""

    exit_code: int = ExitCode.MODEL_LOAD_FAILED
    reason: str = ExitCode.MODEL_LOAD_FAILED.reason


class StorageError(TrainerError):
    """Storage refused the run: no such bucket, key or file, access denied, a damaged
    download. Retrying the same spec will not help."""

    exit_code: int = ExitCode.STORAGE_ERROR
    reason: str = ExitCode.STORAGE_ERROR.reason


class StorageUnavailable(StorageError):
    """A store kept failing with transient errors (timeouts, 5xx, throttling) until the
    retry deadline ran out: unlike a refusal (403, 404), a later attempt may succeed."""

    exit_code: int = ExitCode.STORAGE_UNAVAILABLE
    reason: str = ExitCode.STORAGE_UNAVAILABLE.reason


class OutOfMemory(TrainerError):
    """GPU or host memory ran out. The same spec on the same hardware fails the same way:
    the fix is a smaller batch or sequence length, gradient checkpointing, quantization
    (qlora) or a bigger machine."""

    exit_code: int = ExitCode.OUT_OF_MEMORY
    reason: str = ExitCode.OUT_OF_MEMORY.reason


class Preempted(TrainerError):
    """SIGTERM (a pod being evicted, preempted or deleted) stopped the run after a
    checkpoint was saved; the next attempt resumes from it. 143 is 128 + SIGTERM, what
    a process killed by the signal would have returned."""

    exit_code: int = ExitCode.PREEMPTED
    reason: str = ExitCode.PREEMPTED.reason
