"""The task table: what each ``spec.task`` predicts, reads and reports, as data.

The spec rules (:mod:`finetune_api.rules`), the CRD's CEL twins, the docs and the
trainer's task registry all read this table, so a task's metrics or data formats are
written once. The trainer pairs each entry with its loss and model class
(``finetune_trainer.tasks``); nothing here imports the training stack.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Final, Literal

TaskName = Literal["causal-lm", "sequence-classification"]

EvalMetric = Literal["evalLoss", "perplexity", "tokenAccuracy", "accuracy", "macroF1"]
"""Every score a periodic evaluation can report (early stopping picks one)."""

Unit = Literal["fraction", "fraction change", "loss", "loss change", "perplexity"]
"""How a score is measured. ``fraction``: 0 to 1, never a percentage (a CLI may print
one); ``fraction change``: a difference of two fractions, -1 to 1; ``loss``: mean
cross-entropy in nats, 0 or more; ``loss change``: a difference of two losses;
``perplexity``: exp(loss), 1 or more."""

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class MetricInfo:
    """One score of metrics.json, as the contract knows it: what evaluation gates,
    early stopping, plots, the model card and the status read to interpret it."""

    name: str
    """Its key in metrics.json and status.metrics (camelCase)."""
    unit: Unit
    better: Better
    description: str
    tasks: tuple[TaskName, ...]
    """The tasks that can report it."""
    needs: str | None = None
    """The setting that turns it on, when it is not always measured."""
    before: bool = True
    """Whether the base model is scored too, as ``<name>Before`` on the same data."""

    @property
    def bounds(self) -> tuple[float, float | None]:
        """The values it can take (None: unbounded above)."""
        return {
            "fraction": (0.0, 1.0),
            "fraction change": (-1.0, 1.0),
            "loss": (0.0, None),
            "loss change": (-math.inf, None),
            "perplexity": (1.0, None),
        }[self.unit]


_LM: Final[tuple[TaskName, ...]] = ("causal-lm",)
_CLS: Final[tuple[TaskName, ...]] = ("sequence-classification",)
_GENERATIONS = "evaluation.exactMatchSamples > 0"

METRICS: Final[dict[str, MetricInfo]] = {
    m.name: m
    for m in (
        MetricInfo(
            "evalLoss",
            "loss",
            "lower",
            "Validation loss: cross-entropy per label token (causal-lm) or per example "
            "(classification).",
            ("causal-lm", "sequence-classification"),
        ),
        MetricInfo("perplexity", "perplexity", "lower", "exp(evalLoss).", _LM),
        MetricInfo(
            "tokenAccuracy",
            "fraction",
            "higher",
            "Share of label tokens the model predicts exactly (greedy next token).",
            _LM,
        ),
        MetricInfo(
            "exactMatch",
            "fraction",
            "higher",
            "Share of the evaluation.exactMatchSamples validation rows whose greedy "
            "generation equals the reference answer (surrounding whitespace stripped).",
            _LM,
            _GENERATIONS,
        ),
        MetricInfo(
            "rougeL",
            "fraction",
            "higher",
            "Mean ROUGE-L F1 of the generations against the reference answers (torchmetrics).",
            _LM,
            _GENERATIONS,
        ),
        MetricInfo(
            "bleu",
            "fraction",
            "higher",
            "Corpus BLEU of the generations against the reference answers (sacrebleu, its "
            "0-100 score divided by 100).",
            _LM,
            _GENERATIONS,
        ),
        MetricInfo(
            "chrF",
            "fraction",
            "higher",
            "Corpus chrF of the generations against the reference answers (sacrebleu, its "
            "0-100 score divided by 100).",
            _LM,
            _GENERATIONS,
        ),
        MetricInfo(
            "bertScoreF1",
            "fraction",
            "higher",
            "Mean BERTScore F1 of the generations against the reference answers, with the "
            "encoder evaluation.bertScore.model names (torchmetrics, no baseline rescaling).",
            _LM,
            "evaluation.bertScore",
        ),
        MetricInfo(
            "accuracy",
            "fraction",
            "higher",
            "Share of validation rows classified correctly.",
            _CLS,
        ),
        MetricInfo(
            "macroPrecision",
            "fraction",
            "higher",
            "Precision averaged over the classes (torchmetrics); per class in perClass.",
            _CLS,
        ),
        MetricInfo(
            "macroRecall",
            "fraction",
            "higher",
            "Recall averaged over the classes (torchmetrics); per class in perClass.",
            _CLS,
        ),
        MetricInfo(
            "macroF1",
            "fraction",
            "higher",
            "F1 averaged over the classes (torchmetrics); per class in perClass.",
            _CLS,
        ),
        MetricInfo(
            "retentionLoss",
            "loss",
            "lower",
            "Loss on the general dataset evaluation.retention.dataset: how much of what "
            "the base model knew is kept (catastrophic forgetting raises it).",
            ("causal-lm",),
            "evaluation.retention",
        ),
        MetricInfo(
            "retentionExactMatch",
            "fraction",
            "higher",
            "exactMatch on the rows of evaluation.retention.dataset that have answers "
            "(up to evaluation.exactMatchSamples of them).",
            ("causal-lm",),
            "evaluation.retention",
        ),
        MetricInfo(
            "retentionLossIncrease",
            "loss change",
            "lower",
            "retentionLoss - retentionLossBefore: how much training raised the loss on "
            "the general dataset (negative: it fell).",
            ("causal-lm",),
            "evaluation.retention",
            before=False,
        ),
        MetricInfo(
            "retentionExactMatchDrop",
            "fraction change",
            "lower",
            "retentionExactMatchBefore - retentionExactMatch: how much exact match on the "
            "general dataset training lost (negative: it gained).",
            ("causal-lm",),
            "evaluation.retention",
            before=False,
        ),
    )
}
"""Every score metrics.json and status.metrics can carry, once. A ``<name>Before``
key (when ``before``) is the same score of the base model, before training."""

LOWER_IS_BETTER: Final[frozenset[str]] = frozenset(
    name for name, m in METRICS.items() if m.better == "lower"
)


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
assert set(typing.get_args(EvalMetric)) <= set(METRICS), "every periodic metric is described"
