"""How a run ended, in the two forms Kubernetes keeps: an exit code and a termination message.

The codes, their reasons and the termination message's shape are the contract's
(:mod:`finetune_api.outcome`), which the operator reads with the same model; this module
classifies an ending into them and writes the message where the kubelet looks.

A :class:`~finetune_trainer.errors.TrainerError` is classified by its own ``exit_code`` and
``reason`` attributes, so a new failure class needs no change here. Out-of-memory is
recognised wherever it sits in the exception chain (a loader may wrap it in ModelError):
its fix is the same whatever raised it.

The message goes to the pod status, which anyone who can read pods sees: it carries the
exception's own message only (never the environment or the config), passed through the
redaction layer (:mod:`finetune_api.redaction`): registered secrets, URL passwords,
``token=...``-style values and the values of secret-looking environment variables masked.

A success also carries what was published: the manifest's ``files`` (path, size, sha256)
and the headline ``metrics``, so the operator fills the FineTuneJob's status from the pod
alone, without credentials for the output store.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api import redaction
from finetune_api.outcome import (
    MAX_TERMINATION_BYTES,
    Ending,
    ExitCode,
    GateOutcome,
    PublishedFile,
    TerminationMessage,
    headline_metrics,
)
from finetune_trainer.errors import OutOfMemory, TrainerError

if TYPE_CHECKING:
    from finetune_api.gate import GateVerdict

__all__ = [
    "MAX_TERMINATION_BYTES",
    "Outcome",
    "failed",
    "headline_metrics",
    "published",
    "succeeded",
]

SUCCEEDED: Ending = "Succeeded"
FAILED: Ending = "Failed"
PREEMPTED: Ending = "Preempted"

DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
TERMINATION_LOG_ENV = "FINETUNE_TERMINATION_LOG"

OOM_HINT = (
    "reduce training.batchSize or training.maxSeqLength (raise gradientAccumulation to keep "
    "the effective batch), enable training.gradientCheckpointing, use method.type qlora, or "
    "request more memory"
)


@dataclass(frozen=True)
class Outcome:
    """How a run ended: what the CLI exits with and writes to the termination log."""

    exit_code: int
    outcome: Ending
    reason: str
    message: str
    last_step: int = 0
    artifact_uri: str | None = None
    files: tuple[PublishedFile, ...] | None = None
    """Published files (path, size, sha256) on success; None elsewhere."""
    metrics: Mapping[str, float] | None = None
    """Headline metrics (finetune_api.outcome.HEADLINE_METRICS) on success; None elsewhere."""
    trackers: Mapping[str, str] | None = None
    """Where each experiment tracker shows the run, on success."""
    gate: GateOutcome | None = None
    """The evaluation gate's verdict, when the spec has a gate."""

    def as_message(self) -> TerminationMessage:
        """The contract's termination message for this ending.

        The pod's status is readable by anyone who can read pods, so every text in it
        passes the redaction layer here, before it is cut to fit: a secret cut in half
        would no longer be recognised."""
        return TerminationMessage(
            outcome=self.outcome,
            reason=redact(self.reason),
            message=redact(self.message),
            exit_code=self.exit_code,
            last_step=self.last_step,
            artifact_uri=None if self.artifact_uri is None else redact(self.artifact_uri),
            files=self.files,
            metrics=None if self.metrics is None else dict(self.metrics),
            trackers={k: redact(v) for k, v in self.trackers.items()} if self.trackers else None,
            gate=self.gate,
        )


def succeeded(
    last_step: int,
    artifact_uri: str,
    summary: str = "",
    *,
    files: Iterable[Mapping[str, Any]] | None = None,
    metrics: Mapping[str, Any] | None = None,
    trackers: Mapping[str, str] | None = None,
) -> Outcome:
    """A published run. ``files`` are the manifest's entries; ``metrics`` the run's
    metrics, of which the finite numbers named in :data:`HEADLINE_METRICS` are kept;
    ``trackers`` the experiment trackers' pages of the run."""
    return Outcome(
        ExitCode.SUCCEEDED,
        SUCCEEDED,
        SUCCEEDED,
        summary,
        last_step,
        artifact_uri,
        files=None if files is None else tuple(_file_entry(entry) for entry in files),
        metrics=None if metrics is None else headline_metrics(metrics),
        trackers=trackers or None,
    )


def published(
    last_step: int,
    artifact_uri: str,
    summary: str = "",
    *,
    files: Iterable[Mapping[str, Any]] | None = None,
    metrics: Mapping[str, Any] | None = None,
    trackers: Mapping[str, str] | None = None,
    gate: GateVerdict | None = None,
) -> Outcome:
    """A run that published: :func:`succeeded`, with the gate's verdict when there is one.

    A failed gate is a failed run (``EvaluationGateFailed``, exit 8, not retried): the
    phase a pipeline or ``kubectl wait --for=condition=Succeeded`` reads must never say
    Succeeded for a model that missed its bar. It still carries what was published
    (files, metrics), so the status shows where to inspect it; the message names each
    missed condition with its measured value."""
    outcome = succeeded(
        last_step, artifact_uri, summary, files=files, metrics=metrics, trackers=trackers
    )
    if gate is None:
        return outcome
    if gate.passed:
        return replace(outcome, gate=gate.as_outcome())
    code = ExitCode.EVALUATION_GATE_FAILED
    message = f"{gate.summary()}; the artifacts are published at {artifact_uri} for inspection"
    return replace(
        outcome,
        exit_code=code,
        outcome=FAILED,
        reason=code.reason,
        message=redact(message),
        gate=gate.as_outcome(),
    )


def _file_entry(entry: Mapping[str, Any]) -> PublishedFile:
    return {"path": entry["path"], "size": entry["size"], "sha256": entry["sha256"]}


def failed(exc: BaseException, last_step: int = 0) -> Outcome:
    """Classify the exception that ended a run into the contract's exit codes."""
    chain = exception_chain(exc)
    oom = next((e for e in chain if is_out_of_memory(e)), None)
    if oom is not None:
        message = f"out of memory: {_first_line(oom) or type(oom).__name__}; {OOM_HINT}"
        return Outcome(
            ExitCode.OUT_OF_MEMORY, FAILED, OutOfMemory.reason, redact(message), last_step
        )
    known = next((e for e in chain if isinstance(e, TrainerError)), None)
    if known is not None:
        code = known.exit_code
        kind = PREEMPTED if code == ExitCode.PREEMPTED else FAILED
        return Outcome(code, kind, known.reason, redact(str(known)), last_step)
    message = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return Outcome(
        ExitCode.UNEXPECTED, FAILED, ExitCode.UNEXPECTED.reason, redact(message), last_step
    )


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

MASK = redaction.MASK


def redact(text: str, environ: Mapping[str, str] | None = None) -> str:
    """``text`` without the credentials it might quote: the redaction layer
    (:func:`finetune_api.redaction.redact`: registered secrets, URL user:password@,
    ``password=...``/``token: ...`` pairs, Authorization header values), fed also with
    the secrets of ``environ`` (default: this process's environment), since an exception
    may quote a variable nothing registered."""
    env = os.environ if environ is None else environ
    return redaction.redact(text, redaction.environment_secrets(env))


# --------------------------------------------------------------------------- termination log


def termination_message(outcome: Outcome, limit: int = MAX_TERMINATION_BYTES) -> str:
    """The outcome as the contract's JSON within ``limit`` bytes (what does not fit goes
    first: see :meth:`finetune_api.outcome.TerminationMessage.to_text`)."""
    return outcome.as_message().to_text(limit)


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
