"""TensorBoard: event files of the run, published with the artifact.

The files are written from the run's recorded history when the published set is
staged, not as the run goes: the history is carried across checkpoint resumes, so the
published files hold every step of a run that was preempted and resumed, which a
writer living in one pod could not. ``tensorboard --logdir <output>/tensorboard`` (or
any copy of it) shows the curves; scalars are named like the JSON progress lines
(``train/loss``, ``train/learningRate``, ``eval/evalLoss``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.config.tracking import TensorBoardTracking
from finetune_trainer.tracking.base import Tracker, final_metrics, params

if TYPE_CHECKING:
    from finetune_api.config import TrainerConfig


def scalar_name(name: str, evaluation: bool) -> str:
    return f"{'eval' if evaluation else 'train'}/{name}"


class TensorBoardTracker(Tracker):
    name = "tensorboard"

    def __init__(self, spec: TensorBoardTracking, config: TrainerConfig) -> None:
        self.directory = spec.directory
        self._config = config

    def stage(self, staging: Path, metrics: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(log_dir=str(staging / self.directory)) as writer:
            for key, evaluation in (("history", False), ("evalHistory", True)):
                for row in metrics.get(key) or []:
                    step = int(row.get("step", 0))
                    for name, value in row.items():
                        if name != "step" and _is_number(value):
                            writer.add_scalar(scalar_name(name, evaluation), value, step)
            last = max((int(r.get("step", 0)) for r in metrics.get("history") or []), default=0)
            for name, value in final_metrics(metrics).items():
                writer.add_scalar(f"final/{name}", value, last)
            table = "\n".join(f"| {k} | `{v}` |" for k, v in params(self._config).items())
            writer.add_text("config", f"| field | value |\n|---|---|\n{table}", 0)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
