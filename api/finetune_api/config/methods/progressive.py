"""Progressive (gradual) unfreezing: the head trains first, then one more transformer
block from the top every ``everySteps`` steps or ``everyEpochs`` epochs, each block at
its own, lower, learning rate the deeper it is (ULMFiT's gradual unfreezing and
discriminative fine-tuning). The whole model is published.

The name is ``progressive`` rather than ``layerwise``: what sets the method apart is
that the trainable set grows while training; "layer-wise" alone also names layer-wise
learning-rate decay with everything trainable, and LISA-style sampling of random layers.

The schedule is a pure function of the step (:meth:`ProgressiveSpec.blocks_at`), here in
the contract so that the trainer, which toggles the blocks, and the planner, which sizes
the largest trainable set, count alike.
"""

from __future__ import annotations

from typing import Final, Self

from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._registry import MethodEntry, register_method

ULMFIT_EVERY_EPOCHS: Final = 1
"""Without everySteps or everyEpochs: one more block per epoch, ULMFiT's schedule."""


class ProgressiveSpec(CamelModel):
    """Progressive unfreezing: the head (and the final norm) train from the first step;
    one more transformer block from the top joins every everySteps steps or everyEpochs
    epochs, block k from the top learning at learningRate x lrDecay^k. The whole model
    is published."""

    every_steps: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Unfreeze one more block every this many optimizer steps: steps 1 to "
        "everySteps train startBlocks blocks, the next everySteps one more, and so on. "
        "Give this or everyEpochs, not both.",
    )
    every_epochs: int | None = Field(
        default=None,
        ge=1,
        le=1000,
        description="Unfreeze one more block every this many epochs (passes over the "
        "training set). Give this or everySteps, not both; with neither, 1 (ULMFiT's "
        "schedule: a 1-epoch run then trains the head and startBlocks only).",
    )
    start_blocks: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="Transformer blocks (from the top) that train from the first step, "
        "besides the head. At most the model's block count.",
    )
    max_blocks: int | None = Field(
        default=None,
        ge=0,
        le=1024,
        description="Stop unfreezing once this many blocks (from the top) train; the ones "
        "below stay frozen for the whole run. Unset: every block, in time. At least "
        "startBlocks.",
    )
    lr_decay: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="Discriminative learning rates: block k counted from the top (0 = the "
        "topmost) learns at learningRate x lrDecay^k; 1 gives every block the same rate. "
        "ULMFiT's 1/2.6 (0.385) was for 3 LSTM layers; over 30 transformer blocks it would "
        "leave the lowest at 1e-12 of the rate, so the default 0.9 follows the layer-wise "
        "decay used for deep transformers (0.8 for 12 layers, 0.9 for 24 in ELECTRA), "
        "which keeps the 30th block at 5% of it.",
    )
    head_lr_multiplier: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="The head (lm_head, or a classifier's score/classifier) learns at "
        "learningRate x this (e.g. 10 for a fresh classifier); the final norm at "
        "learningRate. A head tied to the input embeddings (SmolLM2) is that embedding "
        "matrix: training the head trains the input embeddings too.",
    )

    @model_validator(mode="after")
    def _one_schedule(self) -> Self:
        if self.every_steps is not None and self.every_epochs is not None:
            raise ValueError(
                "everySteps and everyEpochs are both set; give one of them (unfreeze one "
                "more block every N optimizer steps, or every N epochs)"
            )
        if self.max_blocks is not None and self.max_blocks < self.start_blocks:
            raise ValueError(
                f"maxBlocks ({self.max_blocks}) is below startBlocks ({self.start_blocks}): "
                "the blocks that train from the start would exceed the cap; raise maxBlocks "
                "or lower startBlocks"
            )
        return self

    def interval(self, steps_per_epoch: int) -> int:
        """Optimizer steps between two unfreezings."""
        if self.every_steps is not None:
            return self.every_steps
        return (self.every_epochs or ULMFIT_EVERY_EPOCHS) * max(1, steps_per_epoch)

    def final_blocks(self, block_count: int) -> int:
        """Blocks that train once the schedule has run its course."""
        cap = block_count if self.max_blocks is None else self.max_blocks
        return min(cap, block_count)

    def blocks_at(self, step: int, block_count: int, steps_per_epoch: int) -> int:
        """How many blocks, from the top, train at optimizer step ``step`` (1-based):
        startBlocks for the first interval, one more per interval after it, up to
        :meth:`final_blocks`."""
        grown = self.start_blocks + max(0, step - 1) // self.interval(steps_per_epoch)
        return min(grown, self.final_blocks(block_count))

    def block_lr_factor(self, from_top: int) -> float:
        """The learning-rate factor of the block ``from_top`` blocks below the topmost."""
        return float(self.lr_decay**from_top)


PROGRESSIVE: Final = register_method(
    MethodEntry(
        name="progressive",
        options=ProgressiveSpec,
        order=16,
        summary="the head, then one more block from the top at a time",
        artifact="model",
    )
)
