"""How a run ended, in the two forms Kubernetes keeps: an exit code and a termination message.

After a trainer container stops, the operator learns why from the pod status alone: the
container's exit code and the short text it left in its termination message file
(``/dev/termination-log``, at most 4096 bytes). So every ending is classified here, by
pure functions, into a code from a documented table and a small JSON summary:

====  ==================  =====================================================
code  reason              retry?
====  ==================  =====================================================
0     Succeeded           -
1     Unexpected          maybe (a bug or a crash the trainer did not foresee)
2     InvalidConfig       no: the spec must change
3     InvalidData         no: the dataset must change
4     ModelLoadFailed     maybe (a registry or network hiccup; or a wrong URI)
5     StorageError        no: a refusal (no such bucket or key, access denied)
6     OutOfMemory         no: on the same hardware it fails the same way
7     StorageUnavailable  yes: transient storage errors outlasted the deadline
143   Preempted           yes: SIGTERM, a checkpoint was saved; the next attempt resumes
====  ==================  =====================================================

A :class:`~finetune_trainer.errors.TrainerError` is classified by its own ``exit_code`` and
``reason`` attributes, so a new failure class needs no change here. Out-of-memory is
recognised wherever it sits in the exception chain (a loader may wrap it in ModelError):
its fix is the same whatever raised it.

The message goes to the pod status, which anyone who can read pods sees: it carries the
exception's own message only (never the environment or the config), with URL passwords,
``token=...``-style values and the values of secret-looking environment variables masked.

A success also carries what was published: the manifest's ``files`` (path, size, sha256)
and the headline ``metrics``, so the operator fills the FineTuneJob's status from the pod
alone, without credentials for the output store. Within the 4096 bytes the file list
goes first (``"filesOmitted": true`` says so; ``manifest.json`` still has it), then the
metrics, then the tail of the message.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetune_trainer.errors import OutOfMemory, TrainerError

SUCCEEDED, FAILED, PREEMPTED = "Succeeded", "Failed", "Preempted"
EXIT_SUCCESS = 0
EXIT_UNEXPECTED = 1
EXIT_OUT_OF_MEMORY = OutOfMemory.exit_code
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a process killed by TERM

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_LOG_ENV = "FINETUNE_TERMINATION_LOG"
MAX_TERMINATION_BYTES = 4096  # Kubernetes truncates a termination message beyond this
_TRUNCATED = " ...[truncated]"

OOM_HINT = (
    "reduce training.batchSize or training.maxSeqLength (raise gradientAccumulation to keep "
    "the effective batch), enable training.gradientCheckpointing, use method.type qlora, or "
    "request more memory"
)


@dataclass(frozen=True)
class Outcome:
    """How a run ended: what the CLI exits with and writes to the termination log."""

    exit_code: int
    outcome: str
    reason: str
    message: str
    last_step: int = 0
    artifact_uri: str | None = None
    files: tuple[Mapping[str, Any], ...] | None = None
    """Published files (path, size, sha256) on success; None elsewhere."""
    metrics: Mapping[str, float] | None = None
    """Headline metrics (:data:`HEADLINE_METRICS`) on success; None elsewhere."""

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "outcome": self.outcome,
            "reason": self.reason,
            "message": self.message,
            "exitCode": self.exit_code,
            "lastStep": self.last_step,
            "artifactUri": self.artifact_uri,
        }
        if self.files is not None:
            data["files"] = [dict(entry) for entry in self.files]
        if self.metrics is not None:
            data["metrics"] = dict(self.metrics)
        return data


HEADLINE_METRICS = (
    "trainLoss",
    "evalLoss",
    "evalLossBefore",
    "exactMatch",
    "exactMatchBefore",
    "accuracy",
    "accuracyBefore",
    "macroF1",
    "tokensPerSecond",
    "steps",
    "trainSeconds",
)
"""The run metrics a success message carries, when the run has them."""


def succeeded(
    last_step: int,
    artifact_uri: str,
    summary: str = "",
    *,
    files: Iterable[Mapping[str, Any]] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> Outcome:
    """A published run. ``files`` are the manifest's entries; ``metrics`` the run's
    metrics, of which the finite numbers named in :data:`HEADLINE_METRICS` are kept."""
    return Outcome(
        EXIT_SUCCESS,
        SUCCEEDED,
        SUCCEEDED,
        summary,
        last_step,
        artifact_uri,
        files=None if files is None else tuple(_file_entry(entry) for entry in files),
        metrics=None if metrics is None else headline_metrics(metrics),
    )


def _file_entry(entry: Mapping[str, Any]) -> dict[str, Any]:
    return {"path": entry["path"], "size": entry["size"], "sha256": entry["sha256"]}


def headline_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The headline numbers of ``metrics``: JSON has no NaN, and lists do not fit."""
    return {
        name: metrics[name]
        for name in HEADLINE_METRICS
        if isinstance(metrics.get(name), int | float)
        and not isinstance(metrics[name], bool)
        and math.isfinite(metrics[name])
    }


def failed(exc: BaseException, last_step: int = 0) -> Outcome:
    """Classify the exception that ended a run (see the module's table)."""
    chain = exception_chain(exc)
    oom = next((e for e in chain if is_out_of_memory(e)), None)
    if oom is not None:
        message = f"out of memory: {_first_line(oom) or type(oom).__name__}; {OOM_HINT}"
        return Outcome(EXIT_OUT_OF_MEMORY, FAILED, OutOfMemory.reason, redact(message), last_step)
    known = next((e for e in chain if isinstance(e, TrainerError)), None)
    if known is not None:
        code = known.exit_code
        kind = PREEMPTED if code == EXIT_PREEMPTED else FAILED
        return Outcome(code, kind, known.reason, redact(str(known)), last_step)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Outcome(EXIT_UNEXPECTED, FAILED, "Unexpected", redact(message), last_step)


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it, outermost first, as Python's traceback shows it
    (``raise ... from None`` hides the context)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return chain


_OOM_TEXT = re.compile(r"out of memory|can't allocate memory|cannot allocate memory", re.I)


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OutOfMemoryError (CUDA), MemoryError, our own OutOfMemory, and the
    RuntimeErrors other allocators raise (CPU: "can't allocate memory", MPS: "out of
    memory"). torch is looked up, not imported: unloaded, it cannot have raised."""
    if isinstance(exc, MemoryError | OutOfMemory):
        return True
    torch = sys.modules.get("torch")
    oom_class = getattr(torch, "OutOfMemoryError", None) if torch is not None else None
    if oom_class is not None and isinstance(exc, oom_class):
        return True
    return type(exc) is RuntimeError and bool(_OOM_TEXT.search(str(exc)))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# --------------------------------------------------------------------------- redaction

_SECRET_NAME = re.compile(r"secret|token|passw|credential|api_?key|access_?key|auth", re.I)
_URL_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.I)
_KEY_VALUE = re.compile(
    r"(?i)\b([\w-]*(?:secret[_-]?(?:access[_-]?)?key|token|password|passwd|api[_-]?key)"
    r"[\"']?\s*[=:]\s*[\"']?)[^\s\"',;&]+"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")
MASK = "***"


def redact(text: str, environ: dict[str, str] | None = None) -> str:
    """``text`` without the credentials it might quote: values of secret-looking
    environment variables (AWS_SECRET_ACCESS_KEY, HF_TOKEN, ...), URL user:password@,
    ``password=...``/``token: ...`` pairs and Authorization header values."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        if len(value) >= 8 and _SECRET_NAME.search(name):
            text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(rf"\g<1>{MASK}@", text)
    text = _KEY_VALUE.sub(rf"\g<1>{MASK}", text)
    return _BEARER.sub(rf"\g<1> {MASK}", text)


# --------------------------------------------------------------------------- termination log


def termination_message(outcome: Outcome, limit: int = MAX_TERMINATION_BYTES) -> str:
    """The outcome as compact JSON within ``limit`` bytes.

    What does not fit goes in this order: the file list (``filesOmitted`` is set: the
    operator then says so rather than show an empty list as the truth), the metrics,
    then the message's tail. The first two are all or nothing, since a partial list
    would look complete.

    ASCII JSON, so characters are bytes; a non-ASCII character takes up to 6 of them
    (``\\u00e9``), hence a search for the longest prefix that fits, not arithmetic.
    """
    data = outcome.as_dict()
    text = _json(data)
    if len(text) <= limit:
        return text
    if "files" in data:
        del data["files"]
        data["filesOmitted"] = True
        text = _json(data)
        if len(text) <= limit:
            return text
    if "metrics" in data:
        del data["metrics"]
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


def _json(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"))


def termination_log_path(option: Path | None) -> tuple[Path, bool]:
    """Where to write, and whether that place was asked for (option or environment)
    rather than being the default."""
    if option is not None:
        return option, True
    env = os.environ.get(TERMINATION_LOG_ENV)
    if env:
        return Path(env), True
    return DEFAULT_TERMINATION_LOG, False


def write_termination_message(outcome: Outcome, path: Path, *, explicit: bool) -> str | None:
    """Write the message; return a warning instead of raising (the exit code matters more).

    The default path is written only when it exists: the kubelet creates it in a pod,
    while on a laptop /dev exists too and creating files there is not ours to do. A path
    asked for explicitly is written when its directory exists.
    """
    if not (path.exists() if not explicit else path.parent.is_dir()):
        return None
    try:
        path.write_text(termination_message(outcome), encoding="utf-8")
    except OSError as exc:
        return f"warning: cannot write the termination message to {path}: {exc.strerror or exc}"
    return None
