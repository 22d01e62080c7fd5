"""What every experiment tracker does, and what they share: the run's identity, its
parameters as flat keys, the metric names, and failing softly.

A tracker sees a run in four moments: it starts (parameters), each optimizer step and
each periodic evaluation (metric series), the staging of the published set (files of
its own, e.g. TensorBoard's event files), and the end (final scores, the artifact's
location, how the run ended). A tracker that fails is switched off with one warning:
a tracking server that is down must not cost a training run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.outcome import Ending, headline_metrics
from finetune_api.redaction import redact

if TYPE_CHECKING:
    from finetune_api.config import TrainerConfig
    from finetune_trainer.state import StepReport

log = logging.getLogger("finetune.trainer")


def scrub(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """``text`` without credentials: the redaction layer, told also the tracker's own
    ``secrets`` (:func:`finetune_api.redaction.redact`)."""
    return redact(text, secrets)


@dataclass(frozen=True)
class RunIdentity:
    """Who the run is to a tracker: its names and a key stable across restarts.

    ``key`` digests the job, the output and the configuration sections that shape
    training (the checkpoint fingerprint), so a pod restarted after preemption, which
    resumes from its checkpoint, continues the same tracker run, while a changed job is a
    new run."""

    job_name: str
    method: str
    task: str
    output_uri: str
    key: str

    @classmethod
    def of(cls, config: TrainerConfig) -> RunIdentity:
        from finetune_trainer.checkpoint import fingerprint

        identity = json.dumps(
            [config.job_name, scrub(config.output.uri), fingerprint(config)], sort_keys=True
        )
        return cls(
            job_name=config.job_name,
            method=config.method.type,
            task=config.task,
            output_uri=scrub(config.output.uri),
            key=hashlib.sha256(identity.encode()).hexdigest()[:16],
        )

    def tags(self) -> dict[str, str]:
        return {
            "finetune.job": self.job_name,
            "finetune.method": self.method,
            "finetune.task": self.task,
            "finetune.runKey": self.key,
        }


def params(config: TrainerConfig) -> dict[str, str]:
    """The run's configuration as flat ``section.field`` keys (camelCase, as in the spec),
    every value as text; lists stay JSON. URLs lose any credentials they carry."""
    flat: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for name, inner in value.items():
                walk(f"{prefix}.{name}" if prefix else name, inner)
        elif isinstance(value, str):
            flat[prefix] = scrub(value)
        else:
            flat[prefix] = scrub(json.dumps(value))

    config_dict = config.redacted()
    config_dict.pop("tracking", None)  # where the run is tracked is not a parameter of it
    config_dict.pop("apiVersion", None)
    walk("", config_dict)
    return flat


def step_metrics(report: StepReport) -> dict[str, float]:
    """A step's series, by the names of the JSON progress lines; non-finite values are
    left out (trackers store floats, and a NaN loss is in the log already). The loss's
    own numbers (``report.extras``: reinforcement's rewards) come along."""
    values = {
        **report.extras,
        "loss": report.loss,
        "learningRate": report.learning_rate,
        "tokensPerSecond": report.tokens_per_second,
        "epoch": report.epoch,
        "gradNorm": report.grad_norm,
    }
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(v)}


def final_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The scalar results of a finished run (metrics.json's finite numbers, not its
    lists), as floats: the contract's own selection of what a message can carry."""
    return {k: float(v) for k, v in headline_metrics(metrics, only_headline=False).items()}


def history_series(metrics: Mapping[str, Any]) -> Iterator[tuple[str, int, float]]:
    """Every per-step value the run recorded, as ``(name, step, value)``: the training
    history (loss, learning rate and any series a task adds) then the evaluations."""
    for rows in (metrics.get("history") or [], metrics.get("evalHistory") or []):
        for row in rows:
            step = int(row.get("step", 0))
            for name, value in row.items():
                if name in ("step", "epoch") or isinstance(value, bool):
                    continue
                if isinstance(value, int | float) and math.isfinite(float(value)):
                    yield name, step, float(value)


class Tracker:
    """One experiment tracker. Subclasses override what they record; every call of the
    run goes through :class:`Trackers`, which switches a failing tracker off."""

    name = "tracker"

    @property
    def url(self) -> str | None:
        """Where a person looks at the run (no credentials), once it is known."""
        return None

    def secrets(self) -> list[str]:
        """Values that must never appear in a message about this tracker."""
        return []

    def start(self) -> None:
        """Open the run and record its parameters."""

    def log_step(self, report: StepReport) -> None:
        """After each optimizer step."""

    def log_eval(self, step: int, scores: Mapping[str, float]) -> None:
        """After each periodic evaluation."""

    def stage(self, staging: Path, metrics: Mapping[str, Any]) -> None:
        """Write files of the published set into ``staging`` (before its manifest)."""

    def finish(self, ending: Ending, metrics: Mapping[str, Any], artifact_uri: str | None) -> None:
        """Record the end: final scores, where the result went, how the run ended."""
