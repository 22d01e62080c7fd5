"""What a run's progress is made of: reports, results, and what a checkpoint holds.

Plain data shared by the loop (which fills it), the checkpoint module (which saves and
restores it), the optimizer setup (which restores its part of a :class:`Resume`) and
the telemetry (which reports it). Keeping it apart from the loop lets each of those
depend on the data without depending on the loop, or the loop on them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from finetune_trainer.optim import Schedule

Weights = dict[str, torch.Tensor]
"""Tensors by parameter name (``named_parameters`` names)."""


@dataclass(frozen=True)
class StepReport:
    """What the loop knows after an optimizer step; sent to progress reporters."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float
    grad_norm: float | None
    samples: int
    """Training examples (packed sequences count as one) consumed so far."""


@dataclass
class TrainResult:
    """What the loop did: filled step by step, restored from a checkpoint on resume."""

    steps: int
    train_loss: float
    tokens: int
    seconds: float
    samples: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    best_step: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class LoopState:
    """Everything a checkpoint restores besides the objects' own state dicts.

    Plain data (JSON-ready), so a checkpoint never has to unpickle anything to resume.
    """

    step: int
    tokens: int
    samples: int
    seconds: float
    history: list[dict[str, float]]
    eval_history: list[dict[str, float]]
    stopper: dict[str, Any] | None = None
    """EarlyStopper's best value, best step and bad evaluations."""
    carry: dict[str, Any] = field(default_factory=dict)
    """What the caller wants back on resume (e.g. the scores before training)."""


@dataclass
class Resume:
    """A checkpoint loaded into memory, ready to hand to the loop."""

    state: LoopState
    trainable: Weights
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None = None
    best: Weights | None = None
    """Early stopping's best weights so far, when they are not the current ones."""
    optimizer_sharded: bool = False
    """``optimizer`` holds this rank's shards of an FSDP optimizer state."""
    restore_rng: Callable[[], None] = field(default=lambda: None)
    """Puts this rank's random generators back where they were; called last."""


@dataclass
class Checkpointable:
    """The live objects a checkpoint is taken from (the model unwrapped)."""

    state: LoopState
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Schedule
    scaler: torch.amp.GradScaler | None
    best: Weights | None
    end_of_epoch: bool


def trainable_state(model: torch.nn.Module) -> Weights:
    """The parameters being trained, whole, as detached copies on the CPU, by name.

    With a sharded (FSDP) model this gathers every shard: all ranks must call it.
    """
    from finetune_trainer.distributed import full_tensor

    return {
        n: full_tensor(p.detach()).to("cpu", copy=True).contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model: torch.nn.Module, weights: Weights) -> None:
    """Copy ``weights`` into the model's trainable parameters; every one must be there."""
    from finetune_trainer.distributed import copy_into

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            copy_into(param, weights[name])
