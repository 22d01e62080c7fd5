"""Tasks: what the model predicts and how that is trained and scored.

``causal-lm`` predicts the next token (supervised fine-tuning and continued
pretraining); ``sequence-classification`` puts a classification head on the model and
predicts one class per example. Each is one entry in :data:`TASKS`, saying which
transformers Auto class loads the model, what a step's loss is averaged over (label
tokens, or examples), and whether generation-based scores apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from finetune_trainer.data.batching import count_label_tokens
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.losses import LossFn, causal_lm_loss


def classification_loss(model: Any, batch: dict[str, Any], weight: int) -> torch.Tensor:
    """Cross-entropy summed over the micro-batch's examples, divided by the step's."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs).logits
    return F.cross_entropy(logits.float(), batch["labels"], reduction="sum") / weight


def count_examples(examples: list[TokenizedExample]) -> int:
    return len(examples)


@dataclass(frozen=True)
class Task:
    name: str
    auto_class: str
    """The transformers Auto class that loads a model for this task."""
    loss: LossFn
    step_weight: Callable[[list[TokenizedExample]], int]
    generates: bool
    """Whether exact match and ROUGE-L of greedy generations apply."""
    metrics: tuple[str, ...]
    """Periodic evaluation metrics this task reports (early stopping picks one)."""


TASKS: dict[str, Task] = {
    "causal-lm": Task(
        name="causal-lm",
        auto_class="AutoModelForCausalLM",
        loss=causal_lm_loss,
        step_weight=count_label_tokens,
        generates=True,
        metrics=("evalLoss", "perplexity", "tokenAccuracy"),
    ),
    "sequence-classification": Task(
        name="sequence-classification",
        auto_class="AutoModelForSequenceClassification",
        loss=classification_loss,
        step_weight=count_examples,
        generates=False,
        metrics=("evalLoss", "accuracy", "macroF1"),
    ),
}


def auto_model_class(task: str) -> Any:
    import transformers

    return getattr(transformers, TASKS[task].auto_class)
