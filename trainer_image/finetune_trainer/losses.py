"""Training losses: what a micro-batch contributes to an optimizer step.

Every loss is a *sum* over the step's units (label tokens for language modelling)
divided by the step's total units (``weight``), so micro-batches add up to the exact
mean over the whole step however the examples are batched.

Language-model logits are computed only where a label is (:func:`label_logits`): the
output projection over the whole vocabulary (49k columns for SmolLM2) and the fp32
cross-entropy over it are a large share of a small model's step, in time and above all
in memory, and prompts, padding and the last position never contribute to the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from finetune_trainer.data.tokenize import IGNORE_INDEX

Batch = dict[str, torch.Tensor]
"""A collated micro-batch: the model's keyword arguments plus ``labels``."""

LossFn = Callable[[torch.nn.Module, Batch, int], torch.Tensor]
"""(model, batch, step weight) -> this micro-batch's share of the step loss."""


def causal_lm_loss(model: torch.nn.Module, batch: Batch, weight: int) -> torch.Tensor:
    """Shifted cross-entropy summed over the label tokens and divided by ``weight`` (what
    the model's own loss with ``num_items_in_batch=weight`` computes, on fewer logits)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits, target = label_logits(model, inputs, batch["labels"])
    return F.cross_entropy(logits.float(), target, reduction="sum") / weight


def label_logits(
    model: torch.nn.Module, inputs: Batch, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits predicting each label token (``[K, vocab]``) and those labels (``[K]``).

    The selection happens on the hidden states *before* the output projection, through
    a pre-hook on the model's output embeddings, so whatever wraps the model (PEFT,
    DDP, FSDP) runs its own forward unchanged. A model without output embeddings falls
    back to full logits.
    """
    target = labels[:, 1:]
    keep = target != IGNORE_INDEX
    head = output_head(model)
    if head is None:
        return shifted(model(**inputs).logits, labels)
    with _selecting(head, keep):
        logits = model(**inputs).logits
    return logits, target[keep]


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module projecting hidden states to the vocabulary, through DDP's wrapper."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    getter = getattr(inner, "get_output_embeddings", None)
    head = getter() if getter is not None else None
    return head if isinstance(head, torch.nn.Module) else None


@contextmanager
def _selecting(head: torch.nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """While inside, ``head`` projects only the hidden states at ``keep``'s positions.

    ``keep`` is ``[batch, length - 1]`` over the real tokens; prompt-learning methods
    prepend virtual tokens to the hidden states, so the real ones are the last
    ``length`` positions, of which the last predicts nothing.
    """
    length = keep.size(1) + 1

    def select(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        hidden = args[0]
        return (hidden[:, -length:][:, :-1][keep], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield
    finally:
        handle.remove()


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

    def __init__(self, teacher: torch.nn.Module, temperature: float, weight: float) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.temperature = temperature
        self.weight = weight

    def __call__(self, model: torch.nn.Module, batch: Batch, step_weight: int) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        student_logits, labels = label_logits(model, inputs, batch["labels"])
        with torch.no_grad():
            teacher_logits, _ = label_logits(self.teacher, inputs, batch["labels"])
        ce = F.cross_entropy(student_logits.float(), labels, reduction="sum")
        t = self.temperature
        kl = F.kl_div(
            F.log_softmax(student_logits.float() / t, dim=-1),
            F.log_softmax(teacher_logits.float() / t, dim=-1),
            log_target=True,
            reduction="sum",
        )
        return ((1 - self.weight) * ce + self.weight * t * t * kl) / step_weight


def with_term(loss: LossFn, term: Callable[[torch.nn.Module], torch.Tensor]) -> LossFn:
    """``loss`` plus a method's own term (e.g. a regulariser) on every micro-batch."""

    def total(model: torch.nn.Module, batch: Batch, weight: int) -> torch.Tensor:
        return loss(model, batch, weight) + term(model)

    return total
