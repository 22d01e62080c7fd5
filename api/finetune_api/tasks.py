"""The task table: what each ``spec.task`` predicts, reads and reports, as data.

The spec rules (:mod:`finetune_api.rules`), the CRD's CEL twins, the docs and the
trainer's task registry all read this table, so a task's metrics or data formats are
written once. The trainer pairs each entry with its loss and model class
(``finetune_trainer.tasks``); nothing here imports the training stack.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Final, Literal

TaskName = Literal["causal-lm", "sequence-classification"]

EvalMetric = Literal["evalLoss", "perplexity", "tokenAccuracy", "accuracy", "macroF1"]
"""Every score a periodic evaluation can report (early stopping picks one)."""
LOWER_IS_BETTER: Final[frozenset[str]] = frozenset({"evalLoss", "perplexity"})


@dataclass(frozen=True)
class TaskInfo:
    """One task as the contract knows it."""

    name: TaskName
    auto_class: str
    """The transformers Auto class that loads a model for this task."""
    metrics: tuple[EvalMetric, ...]
    """Periodic evaluation metrics this task reports (early stopping picks one)."""
    generates: bool
    """Whether exact match and ROUGE-L of greedy generations apply."""
    distillation: bool
    """Whether a teacher's token distributions can be learned from (training.distillation)."""
    loss_over: Literal["label tokens", "examples"]
    """What a step's loss is averaged over."""


TASKS: Final[dict[str, TaskInfo]] = {
    "causal-lm": TaskInfo(
        name="causal-lm",
        auto_class="AutoModelForCausalLM",
        metrics=("evalLoss", "perplexity", "tokenAccuracy"),
        generates=True,
        distillation=True,
        loss_over="label tokens",
    ),
    "sequence-classification": TaskInfo(
        name="sequence-classification",
        auto_class="AutoModelForSequenceClassification",
        metrics=("evalLoss", "accuracy", "macroF1"),
        generates=False,
        distillation=False,
        loss_over="examples",
    ),
}

assert set(TASKS) == set(typing.get_args(TaskName)), "every task name has one entry"
