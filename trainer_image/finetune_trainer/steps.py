"""A run's optimizer steps: how many there are, and which examples each rank trains on.

Pure functions of the examples' lengths, the training spec and the world size: every
rank computes the same plan from the same seed, so no rank has to be told what the
others do, and resuming is skipping the steps already taken.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from finetune_api.config import TrainingSpec
from finetune_api.config.training import steps_per_epoch as steps_per_epoch
from finetune_api.config.training import total_steps as total_steps
from finetune_trainer.data.batching import length_grouped_batches
from finetune_trainer.data.tokenize import TokenizedExample

if TYPE_CHECKING:
    from finetune_trainer.data.stream import ExampleStream

MicroBatch = list[TokenizedExample]


@dataclass(frozen=True)
class StepGroup:
    """The micro-batches of one optimizer step, for every rank."""

    epoch: float
    end_of_epoch: bool
    per_rank: list[list[MicroBatch]]
    """``per_rank[r]``: rank r's micro-batches (possibly none at the end of an epoch)."""

    def all_examples(self) -> list[TokenizedExample]:
        return [e for rank in self.per_rank for mb in rank for e in mb]


def step_groups(
    examples: Sequence[TokenizedExample], spec: TrainingSpec, world_size: int = 1
) -> Iterator[StepGroup]:
    """Endless optimizer steps; a new seeded order every epoch.

    Every rank computes the same sequence (same seed), so each knows the whole step: it
    trains on its own share (batches ``r, r + world, ...`` of the step) and normalises
    by the label tokens of all shares. Resuming is skipping the steps already taken.
    """
    # A table knows every example's length from its offsets, without building one.
    table_lengths = getattr(examples, "lengths", None)
    lengths: Sequence[int] = (
        [e.length for e in examples]  # a pair: its longer sequence
        if table_lengths is None
        else table_lengths.tolist()
    )
    per_step = spec.gradient_accumulation * world_size
    epoch = 0
    while True:
        batches = length_grouped_batches(lengths, spec.batch_size, seed=spec.seed + epoch)
        per_epoch = math.ceil(len(batches) / per_step)
        for k in range(per_epoch):
            group = batches[k * per_step : (k + 1) * per_step]
            yield StepGroup(
                epoch=epoch + (k + 1) / per_epoch,
                end_of_epoch=k == per_epoch - 1,
                per_rank=[
                    [[examples[i] for i in b] for b in group[r::world_size]]
                    for r in range(world_size)
                ],
            )
        epoch += 1


def stream_step_groups(
    stream: ExampleStream, spec: TrainingSpec, world_size: int = 1
) -> Iterator[StepGroup]:
    """Endless optimizer steps over a stream (``dataset.streaming``): micro-batches of
    ``batch_size`` examples in the stream's order, ``r, r + world, ...`` of each step for
    rank r, as :func:`step_groups` shares them.

    Every rank reads the same stream and takes its share. Nothing is read ahead of the
    step being yielded, so the stream's state after a step is the position a checkpoint
    of that step saves, and resuming restores it rather than skipping steps. A step's
    epoch is the stream's pass (with the fraction read, once a pass's length is known);
    a step during which a pass ended is the end of an epoch."""
    per_step = spec.gradient_accumulation * world_size
    while True:
        started = stream.pass_
        batches = [[next(stream) for _ in range(spec.batch_size)] for _ in range(per_step)]
        yield StepGroup(
            epoch=stream.epoch,
            end_of_epoch=stream.pass_ != started,
            per_rank=[batches[r::world_size] for r in range(world_size)],
        )


def count_input_tokens(examples: list[TokenizedExample]) -> int:
    """Real (non-padding) tokens the model processed: the tokens/s numerator."""
    return sum(e.input_tokens for e in examples)
