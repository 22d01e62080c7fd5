"""Tasks as the trainer runs them: the contract's task table plus how each is trained.

What a task is (its name, the transformers Auto class that loads it, the metrics it
reports, whether generation scores apply, what its loss is averaged over) is written
once, in :data:`finetune_api.tasks.TASKS`, which the spec rules, the CRD and the docs
read too. This module adds only what is the trainer's own: the loss function of each
task, and the function counting a step's units for the contract's ``loss_over``.

The losses of ``preference`` and ``reinforcement`` depend on the job's own section of
the spec (the loss and its beta, the rewards), so the recipe builds them
(:func:`finetune_trainer.recipe.setup.setup_loss`); their entry here has no loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from finetune_api.tasks import TASKS as CONTRACT_TASKS
from finetune_api.tasks import EvalMetric, TaskInfo
from finetune_trainer.alignment.preference import reward_model_loss
from finetune_trainer.data.batching import count_label_tokens
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.losses import LossFn, causal_lm_loss

StepWeight = Callable[[list[TokenizedExample]], int]
"""The units an optimizer step's loss is averaged over, counted over its examples."""


def classification_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], weight: int
) -> torch.Tensor:
    """Cross-entropy summed over the micro-batch's examples, divided by the step's."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum") / weight


def count_examples(examples: list[TokenizedExample]) -> int:
    return len(examples)


LOSSES: dict[str, LossFn] = {
    "causal-lm": causal_lm_loss,
    "sequence-classification": classification_loss,
    "reward-model": reward_model_loss,
    # The same cross-entropy on the logits; the batch holds pixel_values, not tokens.
    "image-classification": classification_loss,
}
"""Each contract task's training loss, by task name."""

CONFIGURED_LOSSES: frozenset[str] = frozenset({"preference", "reinforcement", "sentence-embedding"})
"""The tasks whose loss the recipe builds from the job's section (sentence-embedding:
``contrastive``, with the pooling the base model declares)."""

STEP_WEIGHTS: dict[str, StepWeight] = {
    "label tokens": count_label_tokens,
    "examples": count_examples,
}
"""How a step's units are counted, by the contract's ``TaskInfo.loss_over``."""


@dataclass(frozen=True)
class Task:
    """A contract task (``info``) with the trainer's loss and step weight for it."""

    info: TaskInfo
    loss: LossFn | None
    """None: built from the config by the recipe (:data:`CONFIGURED_LOSSES`)."""
    step_weight: StepWeight

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def auto_class(self) -> str:
        """The transformers Auto class that loads a model for this task."""
        return self.info.auto_class

    @property
    def generates(self) -> bool:
        """Whether exact match and ROUGE-L of greedy generations apply."""
        return self.info.generates

    @property
    def metrics(self) -> tuple[EvalMetric, ...]:
        """Periodic evaluation metrics this task reports (early stopping picks one)."""
        return self.info.metrics


def _trained(info: TaskInfo) -> Task:
    """``info`` with its loss and step weight; a contract task the trainer cannot train
    fails at import, not in the middle of someone's run."""
    known = info.name in LOSSES or info.name in CONFIGURED_LOSSES
    if not known or info.loss_over not in STEP_WEIGHTS:
        raise RuntimeError(
            f"task {info.name} (loss over {info.loss_over}) is in the contract's task table "
            "but the trainer has no loss or step weight for it"
        )
    return Task(info, LOSSES.get(info.name), STEP_WEIGHTS[info.loss_over])


TASKS: dict[str, Task] = {name: _trained(info) for name, info in CONTRACT_TASKS.items()}


def auto_model_class(task: str) -> Any:
    """The transformers class that loads ``task``'s model (transformers types it Any)."""
    import transformers

    return getattr(transformers, TASKS[task].auto_class)
