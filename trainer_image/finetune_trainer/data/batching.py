"""Ordering examples into batches and padding them into tensors.

Batches group examples of similar length (shuffled within large windows, then the
batches shuffled), which cuts padding, and so wasted compute, several-fold on
variable-length chat data while keeping the order random and seeded.

``collate`` turns a micro-batch into the model's keyword arguments whatever its kind:
padded language-modelling rows, packed rows (``data.packing``: 4-D block mask and
restarting position ids), or classification rows (``labels`` one class id per row).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING

from finetune_trainer.data.packing import PackedExample, collate_packed
from finetune_trainer.data.tokenize import IGNORE_INDEX, TokenizedExample

if TYPE_CHECKING:
    import torch

WINDOW_BATCHES = 64
"""Batches per sorting window: larger cuts more padding but makes order less random."""


def length_grouped_batches(
    lengths: Sequence[int], batch_size: int, seed: int, *, shuffle: bool = True
) -> list[list[int]]:
    """Indices into ``lengths`` grouped into batches of similar length."""
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
    window = batch_size * WINDOW_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    if shuffle:
        rng.shuffle(batches)
    return batches


def collate(examples: Sequence[TokenizedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` (pads never labelled).

    Packed examples get ``collate_packed``'s batch; classification examples get
    ``labels`` as a 1-D tensor of class ids. A micro-batch is of one kind.
    """
    import torch

    kinds = {_kind(e) for e in examples}
    if len(kinds) != 1:
        raise ValueError(f"a micro-batch mixes example kinds: {sorted(kinds)}")
    if isinstance(examples[0], PackedExample):
        return collate_packed([e for e in examples if isinstance(e, PackedExample)], pad_id)
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        mask[row, :n] = 1
    if examples[0].label is not None:
        classes = torch.tensor([e.label for e in examples], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": classes}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _kind(example: TokenizedExample) -> str:
    if isinstance(example, PackedExample):
        return "packed"
    return "causal-lm" if example.label is None else "classification"


def count_label_tokens(examples: Sequence[TokenizedExample]) -> int:
    """What the loss is normalised by: tokens that contribute to the loss after the causal
    shift (the first label never does), or one per classification example."""
    return sum(
        1 if e.label is not None else sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)
        for e in examples
    )
