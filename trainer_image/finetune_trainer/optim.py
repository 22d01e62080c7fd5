"""Optimizers and learning-rate schedules, one registry entry per ``training.optimizer``.

Parameter groups come from the method (LoRA+ and per-layer rates set their own
``lr``); every group without one gets ``training.learningRate``. Weight decay is
applied to matrices only, never to biases and norm weights (1-D tensors), as is usual.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

from finetune_api.config import TrainingSpec

ParamGroup = dict[str, Any]
"""An optimizer parameter group as torch takes it: ``params`` plus per-group options
(``lr``, ``weight_decay``, ...)."""


class Schedule(Protocol):
    """What the loop and checkpoints use of a learning-rate scheduler (torch's
    ``LRScheduler``). Every group's rate is a float here, so ``get_last_lr`` gives floats
    (torch types it ``float | Tensor`` for optimizers built with tensor rates)."""

    def step(self) -> None: ...

    def get_last_lr(self) -> list[float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict: dict[str, Any]) -> None: ...


def _split_decay(groups: list[ParamGroup], weight_decay: float) -> list[ParamGroup]:
    out = []
    for group in groups:
        matrices = [p for p in group["params"] if p.ndim >= 2]
        vectors = [p for p in group["params"] if p.ndim < 2]
        rest = {k: v for k, v in group.items() if k != "params"}
        if matrices:
            out.append({**rest, "params": matrices, "weight_decay": weight_decay})
        if vectors:
            out.append({**rest, "params": vectors, "weight_decay": 0.0})
    return out


def _adamw(groups: list[ParamGroup], spec: TrainingSpec) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=spec.learning_rate)


def _adamw_8bit(groups: list[ParamGroup], spec: TrainingSpec) -> torch.optim.Optimizer:
    from bitsandbytes.optim.adamw import AdamW8bit

    return AdamW8bit(groups, lr=spec.learning_rate)


def _sgd(groups: list[ParamGroup], spec: TrainingSpec) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=spec.learning_rate, momentum=spec.momentum)


def _adafactor(groups: list[ParamGroup], spec: TrainingSpec) -> torch.optim.Optimizer:
    # transformers' Adafactor with an absolute step size, as recommended for fine-tuning.
    # torch's scales each update by the parameter's RMS, which freezes zero-initialised
    # parameters such as LoRA's B matrices.
    from transformers.optimization import Adafactor

    return Adafactor(
        groups,
        lr=spec.learning_rate,
        scale_parameter=False,
        relative_step=False,
        warmup_init=False,
    )


OPTIMIZERS: dict[str, Callable[[list[ParamGroup], TrainingSpec], torch.optim.Optimizer]] = {
    "adamw": _adamw,
    "adamw-8bit": _adamw_8bit,
    "sgd": _sgd,
    "adafactor": _adafactor,
}


def make_optimizer(groups: list[ParamGroup], spec: TrainingSpec) -> torch.optim.Optimizer:
    return OPTIMIZERS[spec.optimizer](_split_decay(groups, spec.weight_decay), spec)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: TrainingSpec, steps: int) -> Schedule:
    from transformers import get_scheduler

    name = "constant_with_warmup" if spec.scheduler == "constant" else spec.scheduler
    # transformers types get_scheduler's result as Any; each schedule it builds is a
    # torch LambdaLR over float rates.
    scheduler: Schedule = get_scheduler(
        name,
        optimizer,
        num_warmup_steps=round(spec.warmup_ratio * steps),
        num_training_steps=steps,
    )
    return scheduler
