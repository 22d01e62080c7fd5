"""Training losses: what a micro-batch contributes to an optimizer step.

Every loss is a *sum* over the step's units (label tokens for language modelling)
divided by the step's total units (``weight``), so micro-batches add up to the exact
mean over the whole step however the examples are batched.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from finetune_trainer.data.tokenize import IGNORE_INDEX

LossFn = Callable[[Any, dict[str, Any], int], torch.Tensor]
"""(model, batch, step weight) -> this micro-batch's share of the step loss."""


def causal_lm_loss(model: Any, batch: dict[str, Any], weight: int) -> torch.Tensor:
    """The model's own shifted cross-entropy, summed and divided by ``weight``."""
    return model(**batch, num_items_in_batch=weight).loss


def shifted(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels aligned for next-token prediction, flattened to label positions.

    Prompt-learning methods prepend virtual tokens to the logits; only the positions of
    real tokens are scored.
    """
    logits = logits[:, -labels.size(1) :][:, :-1]
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    return logits[keep], target[keep]


class DistillationLoss:
    """(1 - w) x CE(student, labels) + w x T^2 x KL(teacher_T || student_T), per label token.

    The teacher sees exactly the student's inputs (without labels) and never trains.
    """

    def __init__(self, teacher: Any, temperature: float, weight: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.weight = weight

    def __call__(self, model: Any, batch: dict[str, Any], step_weight: int) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        student_logits, labels = shifted(model(**inputs).logits, batch["labels"])
        with torch.no_grad():
            teacher_logits, _ = shifted(self.teacher(**inputs).logits, batch["labels"])
        ce = F.cross_entropy(student_logits.float(), labels, reduction="sum")
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(student_logits.float() / t, dim=-1),
            F.log_softmax(teacher_logits.float() / t, dim=-1),
            log_target=True,
            reduction="sum",
        )
        return ((1 - self.weight) * ce + self.weight * t * t * kl) / step_weight
