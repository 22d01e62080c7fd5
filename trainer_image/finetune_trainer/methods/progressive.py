"""Progressive unfreezing: the head and the final norm train from the first step, and one
more transformer block from the top joins every ``everySteps`` steps (or ``everyEpochs``
epochs), block k from the top at learningRate x lrDecay^k. The whole model is published,
as with freeze.

How it fits the loop without the loop knowing about it:

- The optimizer gets a parameter group for every block that will ever train, from the
  start, each at its own rate. A frozen parameter has no gradient, and AdamW, SGD and
  Adafactor skip a parameter whose ``grad`` is None entirely (no moment update, no
  weight decay), so a block's weights stay exactly the base's until it joins.
- ``after_step`` (after optimizer step ``s``) sets ``requires_grad`` for step ``s + 1``;
  the checkpoint of step ``s`` is taken after it, so it holds every weight that has ever
  trained (the set only grows) plus the block about to join.
- Resuming from the checkpoint of step ``s``, ``apply`` builds the set of step ``s + 1``
  (``MethodContext.resumed_step``) before the checkpoint's weights are loaded into
  exactly the trainable parameters.

The schedule itself is the contract's pure function
(:meth:`~finetune_api.config.methods.progressive.ProgressiveSpec.blocks_at`). The head
is what freeze calls the head (:func:`~finetune_trainer.methods.freeze.head_module`): on
a model whose output head is tied to its input embeddings (SmolLM2) it is that shared
matrix, so the input embeddings train with it from the first step.

One process only: DistributedDataParallel registers its gradient hooks on the parameters
that require a gradient when it wraps the model, so a block unfrozen later would train
on each rank without being averaged (the contract refuses several GPUs or nodes and
FSDP; :func:`apply_progressive` refuses a world it finds anyway).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from finetune_api.config.methods.progressive import PROGRESSIVE, ProgressiveSpec
from finetune_trainer.errors import ConfigError
from finetune_trainer.logs import kv
from finetune_trainer.methods import Method, MethodContext, ParamGroup, register
from finetune_trainer.methods.common import trainable_in_fp32
from finetune_trainer.methods.freeze import final_norms, head_module, transformer_blocks

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("finetune.trainer")

_ATTRIBUTE = "_finetune_unfreezing"
"""Where the model carries its schedule, for the hooks (which get the model only)."""


@dataclass(frozen=True)
class Unfreezing:
    """One run's schedule, bound to the model's modules."""

    options: ProgressiveSpec
    blocks: tuple[torch.nn.Module, ...]
    """Every transformer block, the topmost first."""
    head: torch.nn.Module
    norms: tuple[torch.nn.Module, ...]
    steps_per_epoch: int
    last_step: int
    """The run's last step: the hook after it does not unfreeze a block that would never
    train (the run's trainable count, and its last checkpoint, stay what trained)."""

    def blocks_at(self, step: int) -> int:
        step = min(step, self.last_step)
        return self.options.blocks_at(step, len(self.blocks), self.steps_per_epoch)

    def set_for(self, step: int) -> int:
        """Make the top :meth:`blocks_at` blocks trainable for optimizer step ``step``
        (the head and norms always are); return how many."""
        count = self.blocks_at(step)
        for k, block in enumerate(self.blocks):
            block.requires_grad_(k < count)
        for module in (self.head, *self.norms):
            module.requires_grad_(True)
        return count


def unfreezing_of(model: torch.nn.Module) -> Unfreezing:
    """The schedule :func:`apply_progressive` attached to ``model``."""
    found = getattr(model, _ATTRIBUTE, None)
    if not isinstance(found, Unfreezing):
        raise TypeError(f"{type(model).__name__} was not built by the progressive method")
    return found


def _located(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    try:
        return transformer_blocks(model)
    except ConfigError as exc:  # freeze's finder names its own section
        raise ConfigError(str(exc).replace("method.freeze", "method.progressive")) from None


def _checked(options: ProgressiveSpec, count: int, ctx: MethodContext) -> int:
    """The steps per epoch the schedule counts in; refusals of what cannot apply."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        raise ConfigError(
            "method.progressive trains in one process: data-parallel training registers "
            "gradient averaging only for the blocks trainable when it starts; run with one "
            "process (resources.gpus 1, nodes 1) or use type freeze"
        )
    for name, value in (("startBlocks", options.start_blocks), ("maxBlocks", options.max_blocks)):
        if value is not None and value > count:
            raise ConfigError(
                f"method.progressive.{name} is {value} but the model has {count} "
                f"transformer blocks; use at most {count}"
            )
    if options.every_steps is None and ctx.steps_per_epoch is None:
        raise ConfigError(
            "method.progressive.everyEpochs needs the run's steps per epoch, which this "
            "caller does not give; set everySteps instead"
        )
    return ctx.steps_per_epoch or 1


def apply_progressive(
    model: PreTrainedModel, options: ProgressiveSpec, ctx: MethodContext
) -> PreTrainedModel:
    backbone, blocks = _located(model)
    per_epoch = _checked(options, len(blocks), ctx)
    schedule = Unfreezing(
        options=options,
        blocks=tuple(reversed(list(blocks))),
        head=head_module(model),
        norms=tuple(final_norms(backbone, blocks)),
        steps_per_epoch=per_epoch,
        last_step=max(1, ctx.total_steps),
    )
    # Everything that will ever train in fp32 now (mixed precision keeps fp32 master
    # weights), then the set of the first step this run takes.
    model.requires_grad_(False)
    final = options.final_blocks(len(blocks))
    for module in (schedule.head, *schedule.norms, *schedule.blocks[:final]):
        module.requires_grad_(True)
    trainable_in_fp32(model)
    model.requires_grad_(False)
    first = ctx.resumed_step + 1
    count = schedule.set_for(first)
    object.__setattr__(model, _ATTRIBUTE, schedule)  # not a submodule, not a parameter
    log.info(
        "progressive unfreezing %s",
        kv(
            blocks=len(blocks),
            training=count,
            final=final,
            every=f"{schedule.options.interval(per_epoch)} steps",
            step=first,
        ),
    )
    return model


def progressive_param_groups(
    model: torch.nn.Module, options: ProgressiveSpec, lr: float
) -> list[ParamGroup]:
    """The head at lr x headLrMultiplier, the final norm at lr, and each block that will
    ever train at lr x lrDecay^k (k from the top), frozen ones included: they join the
    optimizer when they first get a gradient."""
    schedule = unfreezing_of(model)
    groups: list[ParamGroup] = [
        {
            "params": list(schedule.head.parameters()),
            "lr": lr * options.head_lr_multiplier,
            "name": "head",
        },
        {
            "params": [p for norm in schedule.norms for p in norm.parameters()],
            "lr": lr,
            "name": "norm",
        },
    ]
    for k, block in enumerate(schedule.blocks[: options.final_blocks(len(schedule.blocks))]):
        groups.append(
            {
                "params": list(block.parameters()),
                "lr": lr * options.block_lr_factor(k),
                "name": f"block-{k}",
            }
        )
    return [g for g in groups if g["params"]]


def unfreeze_next(model: torch.nn.Module, step: int) -> None:
    """After optimizer step ``step``: the trainable set of step ``step + 1``."""
    schedule = unfreezing_of(model)
    before, count = schedule.blocks_at(step), schedule.set_for(step + 1)
    if count > before:
        log.info("unfreezing %s", kv(step=step + 1, blocks=count))


register(
    Method(
        PROGRESSIVE,
        apply=apply_progressive,
        param_groups=progressive_param_groups,
        after_step=unfreeze_next,
    )
)
