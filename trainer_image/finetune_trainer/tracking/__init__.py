"""Experiment trackers (``spec.tracking``): MLflow, TensorBoard, Weights & Biases.

One registration per tracker pairs the spec's subsection with its implementation
(:data:`TRACKERS`); :func:`open_trackers` opens the ones a run names, or whose
environment names them (``MLFLOW_TRACKING_URI``, ``WANDB_PROJECT``: a platform can
track every job without touching manifests), on rank 0 only.

Every call into a tracker goes through :class:`Trackers`, which turns an exception into
one warning, with credentials scrubbed, and switches that tracker off: tracking is never
worth a training run, and a run must not fail because a dashboard is down.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.config import (
    MlflowTracking,
    TensorBoardTracking,
    TrackingSpec,
    WandbTracking,
)
from finetune_api.outcome import Ending
from finetune_trainer.logs import kv
from finetune_trainer.tracking.base import Tracker, scrub

if TYPE_CHECKING:
    from finetune_api.config import TrainerConfig
    from finetune_trainer.state import StepReport

__all__ = ["TRACKERS", "Tracker", "Trackers", "open_trackers", "trackers_for"]

log = logging.getLogger("finetune.trainer")


@dataclass(frozen=True)
class TrackerEntry:
    """A tracker: its spec subsection, the environment variable that turns it on when
    the spec does not name it, and how to build it."""

    section: str
    env: str
    default: Callable[[], Any]
    build: Callable[[Any, TrainerConfig], Tracker]


def _mlflow(spec: MlflowTracking, config: TrainerConfig) -> Tracker:
    from finetune_trainer.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(spec, config)


def _tensorboard(spec: TensorBoardTracking, config: TrainerConfig) -> Tracker:
    from finetune_trainer.tracking.tensorboard_tracker import TensorBoardTracker

    return TensorBoardTracker(spec, config)


def _wandb(spec: WandbTracking, config: TrainerConfig) -> Tracker:
    from finetune_trainer.tracking.wandb_tracker import WandbTracker

    return WandbTracker(spec, config)


TRACKERS: tuple[TrackerEntry, ...] = (
    TrackerEntry("mlflow", "MLFLOW_TRACKING_URI", MlflowTracking, _mlflow),
    TrackerEntry("tensorboard", "FINETUNE_TENSORBOARD", TensorBoardTracking, _tensorboard),
    TrackerEntry("wandb", "WANDB_PROJECT", WandbTracking, _wandb),
)


def trackers_for(config: TrainerConfig, env: Mapping[str, str] | None = None) -> list[Tracker]:
    """The trackers of this run: those ``spec.tracking`` names, and those its
    environment turns on (with every setting from the environment)."""
    environ = os.environ if env is None else env
    tracking: TrackingSpec = config.tracking
    chosen = []
    for entry in TRACKERS:
        spec = getattr(tracking, entry.section)
        if spec is None and environ.get(entry.env):
            spec = entry.default()
        if spec is not None:
            chosen.append(entry.build(spec, config))
    return chosen


class Trackers:
    """The run's trackers as one: each call reaches every tracker still working."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self._active = list(trackers)
        self._finished = False

    def __bool__(self) -> bool:
        return bool(self._active)

    @property
    def names(self) -> list[str]:
        return [t.name for t in self._active]

    def urls(self) -> dict[str, str]:
        """Where to look at the run, by tracker (those that have a page)."""
        return {t.name: url for t in self._active if (url := t.url)}

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self._active):
            try:
                call(tracker)
            except Exception as exc:  # a tracker's failure is never the run's
                self._active.remove(tracker)
                log.warning(
                    "tracker %s failed to %s and is off for this run: %s",
                    tracker.name,
                    what,
                    scrub(f"{type(exc).__name__}: {exc}", tracker.secrets()),
                )

    def start(self) -> None:
        self._each("start", lambda t: t.start())
        for name, url in self.urls().items():
            log.info("tracking %s", kv(tracker=name, url=url))

    def log_step(self, report: StepReport) -> None:
        self._each("log a step", lambda t: t.log_step(report))

    def log_eval(self, step: int, scores: Mapping[str, float]) -> None:
        self._each("log an evaluation", lambda t: t.log_eval(step, scores))

    def stage(self, staging: Path, metrics: Mapping[str, Any]) -> None:
        self._each("write its files", lambda t: t.stage(staging, metrics))

    def finish(
        self,
        ending: Ending,
        metrics: Mapping[str, Any] | None = None,
        artifact_uri: str | None = None,
    ) -> None:
        if self._finished:
            return
        self._finished = True
        self._each("finish", lambda t: t.finish(ending, metrics or {}, artifact_uri))


NO_TRACKERS = Trackers([])


@contextmanager
def open_trackers(config: TrainerConfig, *, main: bool) -> Iterator[Trackers]:
    """The run's trackers, started; a run that raises ends them as Failed (or Preempted),
    one that returns without :meth:`Trackers.finish` as Failed too (it published
    nothing). Other ranks than the main one track nothing."""
    from finetune_trainer.outcome import failed

    trackers = Trackers(trackers_for(config) if main else [])
    trackers.start()
    try:
        yield trackers
    except BaseException as exc:
        trackers.finish(failed(exc).outcome)
        raise
    trackers.finish("Failed")
