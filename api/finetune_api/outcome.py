"""How a trainer run ends, as both sides read it: the exit code table and the termination
message.

After a trainer container stops, the operator learns why from the pod status alone: the
container's exit code and the short text the trainer left in its termination message
file (``/dev/termination-log``, at most 4096 bytes). Both are defined here, once: the
trainer classifies its ending into an :class:`ExitCode` and writes a
:class:`TerminationMessage` with :meth:`TerminationMessage.to_text`; the operator reads
the message with :meth:`TerminationMessage.parse`, names an exit code with
:func:`exit_reason` and builds the Job's ``podFailurePolicy`` from
:data:`NOT_RETRYABLE_EXIT_CODES`. Nothing else writes these numbers.

====  ====================  =====================================================
code  reason                retry?
====  ====================  =====================================================
0     Succeeded             -
1     Unexpected            maybe (a bug or a crash the trainer did not foresee)
2     InvalidConfig         no: the spec must change
3     InvalidData           no: the dataset must change
4     ModelLoadFailed       maybe (a registry or network hiccup; or a wrong URI)
5     StorageError          no: a refusal (no such bucket or key, access denied)
6     OutOfMemory           no: on the same hardware it fails the same way
7     StorageUnavailable    yes: transient storage errors outlasted the deadline
8     EvaluationGateFailed  no: published, but evaluation.gate was not met
143   Preempted             yes: SIGTERM, a checkpoint was saved; the next attempt resumes
====  ====================  =====================================================
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from typing_extensions import TypedDict  # pydantic refuses typing's before Python 3.12


class ExitCode(IntEnum):
    """The trainer's exit codes; the member's name in CamelCase is its reason."""

    SUCCEEDED = 0
    UNEXPECTED = 1
    INVALID_CONFIG = 2
    INVALID_DATA = 3
    MODEL_LOAD_FAILED = 4
    STORAGE_ERROR = 5
    OUT_OF_MEMORY = 6
    STORAGE_UNAVAILABLE = 7
    EVALUATION_GATE_FAILED = 8
    """The run trained and published, but its metrics missed ``evaluation.gate``."""
    PREEMPTED = 143
    """128 + SIGTERM, what a shell reports for a process killed by TERM."""

    @property
    def reason(self) -> str:
        return EXIT_REASONS[int(self)]


@dataclass(frozen=True)
class ExitInfo:
    """What one exit code means, for the operator (retry or not) and for people."""

    reason: str
    retried: bool
    """Whether the Job retries a pod that exited so (podFailurePolicy)."""
    meaning: str
    retry_advice: str


EXITS: Final[dict[ExitCode, ExitInfo]] = {
    ExitCode.SUCCEEDED: ExitInfo("Succeeded", False, "trained and published", "-"),
    ExitCode.UNEXPECTED: ExitInfo(
        "Unexpected",
        True,
        "an error the trainer did not foresee (its traceback is on stderr)",
        "maybe",
    ),
    ExitCode.INVALID_CONFIG: ExitInfo(
        "InvalidConfig",
        False,
        "the configuration cannot work (e.g. fp16 without a GPU, an unreadable TrainerConfig)",
        "no: change the spec",
    ),
    ExitCode.INVALID_DATA: ExitInfo(
        "InvalidData",
        False,
        "the dataset is unreadable or does not match its declared format",
        "no: fix the data",
    ),
    ExitCode.MODEL_LOAD_FAILED: ExitInfo(
        "ModelLoadFailed",
        True,
        "the base model cannot be found or loaded",
        "maybe (a registry hiccup), usually no",
    ),
    ExitCode.STORAGE_ERROR: ExitInfo(
        "StorageError",
        False,
        "storage refused: no such bucket, key or file, access denied (403), a download that "
        "does not match its checksum",
        "no: fix the URI or the credentials",
    ),
    ExitCode.OUT_OF_MEMORY: ExitInfo(
        "OutOfMemory",
        False,
        "GPU or host memory ran out (`torch.OutOfMemoryError`, `MemoryError`, an "
        'allocator\'s "out of memory"), even when wrapped in another error',
        "no, not with the same spec and hardware: lower `batchSize` or `maxSeqLength`, "
        "enable `gradientCheckpointing`, use `qlora`, or ask for more memory",
    ),
    ExitCode.STORAGE_UNAVAILABLE: ExitInfo(
        "StorageUnavailable",
        True,
        "the store kept failing with transient errors (timeouts, 5xx, throttling) past "
        "`output.retryDeadlineSeconds`",
        "yes",
    ),
    ExitCode.EVALUATION_GATE_FAILED: ExitInfo(
        "EvaluationGateFailed",
        False,
        "trained and published, but the metrics missed a condition of `evaluation.gate` "
        "(manifest.json says `gate.passed: false` and names it)",
        "no: the same data and spec train the same model; change them, or the gate",
    ),
    ExitCode.PREEMPTED: ExitInfo(
        "Preempted",
        True,
        "SIGTERM (eviction, preemption, deletion): a checkpoint was saved",
        "yes: the next attempt resumes",
    ),
}
"""The exit code table; docs/reference/exit-codes.md is generated from it (``make docs``)."""

EXIT_REASONS: Final[dict[int, str]] = {int(code): info.reason for code, info in EXITS.items()}
"""Every exit code's reason, e.g. {3: 'InvalidData'}."""
NOT_RETRYABLE_EXIT_CODES: Final[tuple[int, ...]] = tuple(
    int(code) for code, info in EXITS.items() if code != ExitCode.SUCCEEDED and not info.retried
)
"""The codes the Job's podFailurePolicy fails at once: a retry would fail the same way."""


def exit_reason(code: int) -> str | None:
    """The reason of one of the trainer's exit codes; None for a code it never uses."""
    return EXIT_REASONS.get(code)


# --------------------------------------------------------------------------- the message

MAX_TERMINATION_BYTES: Final = 4096
"""Kubernetes truncates a termination message beyond this."""
_TRUNCATED = " ...[truncated]"

Ending = Literal["Succeeded", "Failed", "Preempted"]

HEADLINE_METRICS: Final = (
    "trainLoss",
    "evalLoss",
    "evalLossBefore",
    "exactMatch",
    "exactMatchBefore",
    "rougeL",
    "bleu",
    "chrF",
    "bertScoreF1",
    "accuracy",
    "accuracyBefore",
    "macroF1",
    "retentionLoss",
    "retentionLossBefore",
    "retentionExactMatch",
    "retentionExactMatchBefore",
    "meanReward",
    "meanRewardBefore",
    "tokensPerSecond",
    "steps",
    "trainSeconds",
)
"""The run metrics a success message carries, when the run has them; each score's unit
and direction is in :data:`finetune_api.tasks.METRICS` (shares are fractions 0-1)."""


class PublishedFile(TypedDict):
    """One published file as the manifest lists it."""

    path: str
    size: int
    sha256: str


class GateOutcome(TypedDict):
    """The evaluation gate's verdict as the termination message carries it."""

    passed: bool
    failed: list[str]
    """Each missed condition with its measured value, e.g. ``exactMatch 0.42 < min 0.9``."""


class TerminationMessage(BaseModel):
    """What the trainer leaves in its termination message: how the run ended and, on
    success, what it published (so the operator fills the FineTuneJob's status from the
    pod alone, without credentials for the output store).

    A message read from a pod may also be the kubelet's stand-in: with
    ``terminationMessagePolicy: FallbackToLogsOnError`` the log's tail is put there when
    the trainer wrote nothing (killed, crashed early). :meth:`parse` returns such text as
    a bare ``message`` with ``outcome`` None (:attr:`structured` is False).
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        frozen=True,
        extra="ignore",
    )

    outcome: Ending | None = None
    """Succeeded, Failed or Preempted; None for text the trainer did not write."""
    reason: str | None = None
    message: str = ""
    exit_code: int | None = None
    last_step: int | None = None
    artifact_uri: str | None = None
    files: tuple[PublishedFile, ...] | None = None
    """Published files on success; None elsewhere."""
    files_omitted: bool = False
    """The file list did not fit in the message (``manifest.json`` still has it)."""
    metrics: dict[str, float] | None = None
    """Headline metrics (:data:`HEADLINE_METRICS`) on success; None elsewhere."""
    trackers: dict[str, str] | None = None
    """Where each experiment tracker shows the run (tracker name to URL), when any does."""
    gate: GateOutcome | None = None
    """The evaluation gate's verdict, when the spec has a gate and the run got to it."""

    @property
    def structured(self) -> bool:
        """Whether the trainer wrote it (not a log tail)."""
        return self.outcome is not None

    # ------------------------------------------------------------------ writing

    def as_dict(self) -> dict[str, Any]:
        """The JSON object the trainer writes (files and metrics only when present)."""
        data: dict[str, Any] = {
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "exitCode": self.exit_code,
            "lastStep": self.last_step,
            "artifactUri": self.artifact_uri,
        }
        if self.files is not None:
            data["files"] = [dict(f) for f in self.files]
        if self.files_omitted:
            data["filesOmitted"] = True
        if self.metrics is not None:
            data["metrics"] = dict(self.metrics)
        if self.trackers:
            data["trackers"] = dict(self.trackers)
        if self.gate is not None:
            data["gate"] = {"passed": self.gate["passed"], "failed": list(self.gate["failed"])}
        return data

    def to_text(self, limit: int = MAX_TERMINATION_BYTES) -> str:
        """The message as compact JSON within ``limit`` bytes.

        What does not fit goes in this order: the file list (``filesOmitted`` is set: the
        operator then says so rather than show an empty list as the truth), the metrics,
        the tracker links, the gate's list of missed conditions (its verdict stays; the
        message names them too), then the message's tail. The first four are all or
        nothing, since a partial list would look complete.

        ASCII JSON, so characters are bytes; a non-ASCII character takes up to 6 of them
        (``\\u00e9``), hence a search for the longest prefix that fits, not arithmetic.
        """
        data = self.as_dict()
        text = _json(data)
        if len(text) <= limit:
            return text
        if "files" in data:
            del data["files"]
            data["filesOmitted"] = True
            text = _json(data)
            if len(text) <= limit:
                return text
        for optional in ("metrics", "trackers"):
            if optional in data:
                del data[optional]
                text = _json(data)
                if len(text) <= limit:
                    return text
        if data.get("gate", {}).get("failed"):
            data["gate"] = {"passed": data["gate"]["passed"], "failed": []}
            text = _json(data)
            if len(text) <= limit:
                return text
        message: str = data["message"]
        fits, too_long = 0, len(message)  # prefix lengths: fits fits, too_long does not
        while too_long - fits > 1:
            middle = (fits + too_long) // 2
            if len(_json({**data, "message": message[:middle] + _TRUNCATED})) <= limit:
                fits = middle
            else:
                too_long = middle
        data["message"] = message[:fits] + _TRUNCATED if fits else ""
        text = _json(data)
        if len(text) > limit:  # only a giant artifact URI could get here
            text = _json({**data, "message": "", "artifactUri": None})
        return text

    # ------------------------------------------------------------------ reading

    @classmethod
    def parse(cls, text: str | None) -> TerminationMessage | None:
        """The trainer's message; any other text (a log tail, garbage) as a bare
        message; None when there is no text. Never raises: a pod's message is input."""
        if not text or not text.strip():
            return None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: a log tail of "[[[[..."
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("outcome"), str):
            return cls(message=text.strip())
        try:
            return cls.model_validate(_tolerant(data))
        except ValidationError:
            return cls(message=str(data.get("message") or text.strip()))


def _tolerant(data: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a structured message that have the right shape; a field of the
    wrong type is dropped rather than discarding what the rest says."""
    out: dict[str, Any] = {"outcome": data["outcome"]}
    if data["outcome"] not in ("Succeeded", "Failed", "Preempted"):
        out["outcome"] = "Failed"
    out["message"] = str(data.get("message") or "")
    for key in ("reason", "artifactUri"):
        if isinstance(data.get(key), str):
            out[key] = data[key]
    for key in ("exitCode", "lastStep"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            out[key] = value
    files = data.get("files")
    if isinstance(files, list):
        out["files"] = [
            {"path": f["path"], "size": f["size"], "sha256": f["sha256"]}
            for f in files
            if _is_file_entry(f)
        ]
    out["filesOmitted"] = data.get("filesOmitted") is True
    metrics = data.get("metrics")
    if isinstance(metrics, dict):
        out["metrics"] = headline_metrics(metrics, only_headline=False)
    trackers = data.get("trackers")
    if isinstance(trackers, dict):
        out["trackers"] = {
            k: v for k, v in trackers.items() if isinstance(k, str) and isinstance(v, str)
        }
    gate = data.get("gate")
    if isinstance(gate, dict) and isinstance(gate.get("passed"), bool):
        failed = gate.get("failed")
        out["gate"] = {
            "passed": gate["passed"],
            "failed": [f for f in failed if isinstance(f, str)] if isinstance(failed, list) else [],
        }
    return out


def _is_file_entry(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("path"), str)
        and isinstance(entry.get("size"), int)
        and not isinstance(entry.get("size"), bool)
        and entry["size"] >= 0
        and isinstance(entry.get("sha256"), str)
    )


def headline_metrics(metrics: Mapping[str, Any], *, only_headline: bool = True) -> dict[str, float]:
    """The finite numbers of ``metrics`` (JSON has no NaN, and lists do not fit), of
    :data:`HEADLINE_METRICS` unless ``only_headline`` is False."""
    names: Iterable[str] = HEADLINE_METRICS if only_headline else list(metrics)
    return {name: metrics[name] for name in names if _is_finite_number(metrics.get(name))}


def _is_finite_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        return False


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))
