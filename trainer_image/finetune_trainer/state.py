"""What a run's progress is made of: reports, results, and what a checkpoint holds.

Plain data shared by the loop (which fills it), the checkpoint module (which saves and
restores it), the optimizer setup (which restores its part of a :class:`Resume`) and
the telemetry (which reports it). Keeping it apart from the loop lets each of those
depend on the data without depending on the loop, or the loop on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

import torch

from finetune_trainer.errors import StorageError
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
    extras: Mapping[str, float] = field(default_factory=dict)
    """The loss's own numbers for this step (``TrainHooks.step_metrics``: reinforcement's
    reward, rewardStd, kl, completionLength, clipFraction and each reward by name)."""


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
    resumed_from: int | None = None
    """The step of the checkpoint this run continued from; None for a fresh run."""

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def steps_this_run(self) -> int:
        """Optimizer steps taken by this process, not restored from a checkpoint: 0 when a
        finished run is run again (it resumes at its end and has nothing left to train)."""
        return self.steps - (self.resumed_from or 0)


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

    @classmethod
    def unknown_fields(cls, data: Mapping[str, Any]) -> list[str]:
        """Keys of a saved state that are none of this version's fields (a newer trainer
        wrote it: their meaning is unknown here, so the state cannot be taken as is)."""
        return sorted(set(data) - {f.name for f in fields(cls)})

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LoopState:
        """The state ``state.json`` holds, each field checked for its JSON type, so a
        damaged file is a ValueError naming the field here, not a TypeError steps later."""
        problems = [
            f"{name}: {why}"
            for name in _JSON_TYPES
            if (why := _json_type_problem(name, data)) is not None
        ]
        if problems:
            raise ValueError("; ".join(problems))
        return cls(**{name: data[name] for name in _JSON_TYPES if name in data})


_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,),
    "tokens": (int,),
    "samples": (int,),
    "seconds": (int, float),
    "history": (list,),
    "eval_history": (list,),
    "stopper": (dict, type(None)),
    "carry": (dict,),
}
"""The JSON types of :class:`LoopState`'s fields, as ``json.loads`` returns them."""


def _json_type_problem(name: str, data: Mapping[str, Any]) -> str | None:
    """Why ``data[name]`` cannot be LoopState's ``name``; None when it can."""
    if name not in data:
        spec = next(f for f in fields(LoopState) if f.name == name)
        optional = spec.default is not MISSING or spec.default_factory is not MISSING
        return None if optional else "missing"
    value, wanted = data[name], _JSON_TYPES[name]
    if not _is_one_of(value, wanted):
        names = " or ".join("null" if t is type(None) else t.__name__ for t in wanted)
        return f"{value!r:.40} is not {names}"
    if name in ("history", "eval_history") and not all(isinstance(h, dict) for h in value):
        return "entries must be objects"
    if name == "step" and value < 1:
        return f"{value} is not a step (steps count from 1)"
    return None


def _is_one_of(value: Any, types: tuple[type, ...]) -> bool:
    """JSON's types: true and false are no numbers here, as they are not in JSON."""
    return isinstance(value, types) and not isinstance(value, bool)


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
    data_stream: dict[str, Any] | None = None
    """A streaming run's stream position (``data-stream.json``), None otherwise."""


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
    """Copy ``weights`` into the model's trainable parameters; every one must be there,
    in its shape. A checkpoint that does not fit was not written for this model and
    method (its identity matched, so it was altered): a StorageError, not a traceback."""
    from finetune_trainer.distributed import copy_into

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    # A DTensor's (FSDP shard's) shape is the whole parameter's.
    misshapen = sorted(n for n in set(params) & set(weights) if weights[n].shape != params[n].shape)
    if missing or unexpected or misshapen:
        raise StorageError(
            f"the checkpoint's trainable weights do not fit the model (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shape {misshapen[:3]}): it was not written "
            "for this model and method. Delete the output's checkpoints/ to train from the "
            "beginning"
        )
    with torch.no_grad():
        for name, param in params.items():
            copy_into(param, weights[name])
