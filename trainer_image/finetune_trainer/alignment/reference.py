"""The reference policy of DPO and IPO: the model before training.

With an adapter method (LoRA, QLoRA) the reference is the very model with its adapter
switched off (``disable_adapter``): no second copy of the weights is held. A method
that trains the weights themselves (full, freeze) needs a frozen copy of the base,
taken before training. ``preference.precomputeReference`` computes the reference
log-probabilities of every training pair once, before training, so that no step runs
the reference at all.

The reference always runs in eval mode (no dropout) and without gradients: its numbers
depend on nothing but the weights and the batch, so they are the same every step, on
resume, and precomputed or not.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Protocol

import torch

from finetune_trainer.alignment.logps import sequence_logps
from finetune_trainer.losses import Batch

REFERENCE_KEY = "reference_logps"
"""The collated batch's precomputed reference log-probabilities (``[rows]``)."""


class Reference(Protocol):
    """Per-row summed log-probabilities of the reference policy (no gradient)."""

    def logps(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor: ...


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel's wrapper (its forward without hooks:
    the reference takes no part in the gradient all-reduce)."""
    inner = getattr(model, "module", model)
    return inner if isinstance(inner, torch.nn.Module) else model


@contextmanager
def evaluating(model: torch.nn.Module) -> Iterator[None]:
    """``model`` in eval mode and without gradients, its mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


class AdapterOff:
    """The trained model itself with its adapter switched off: the base model."""

    def logps(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        inner = unwrapped(model)
        disable = getattr(inner, "disable_adapter", None)
        off = disable() if disable is not None else nullcontext()
        with evaluating(inner), keeping_trainable_flags(inner), off:
            return sequence_logps(inner, batch)[0]


@contextmanager
def keeping_trainable_flags(model: torch.nn.Module) -> Iterator[None]:
    """Each parameter's ``requires_grad`` put back as it was: switching an adapter back
    on, peft marks every parameter of the active adapter trainable, which would unfreeze
    what a method froze on purpose."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


class FrozenCopy:
    """A frozen copy of the base model, taken before the method changes its weights."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.model = base.eval().requires_grad_(False)

    def logps(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        device = batch["input_ids"].device
        if next(self.model.parameters()).device != device:
            # Under FSDP the base is loaded on the CPU and then sharded; the copy, taken
            # before, moves once to where the batches are.
            self.model.to(device)
        with evaluating(self.model):
            return sequence_logps(self.model, batch)[0]


def reference_logps(reference: Reference, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """The batch's precomputed reference log-probabilities when it carries them (every
    example had them), else the reference's forward pass."""
    if REFERENCE_KEY in batch:
        return batch[REFERENCE_KEY].float()
    return reference.logps(model, batch)


class Precomputed:
    """The reference of ``preference.precomputeReference``: every training batch carries
    its reference log-probabilities, computed before training."""

    def logps(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        raise RuntimeError(
            "preference.precomputeReference: a training batch has no precomputed reference "
            "log-probabilities"
        )
