"""Ordering examples into batches and padding them into tensors.

Batches group examples of similar length (shuffled within large windows, then the
batches shuffled), which cuts padding, and so wasted compute, several-fold on
variable-length chat data while keeping the order random and seeded.

``collate`` turns a micro-batch into the model's keyword arguments whatever its kind:
padded language-modelling rows, packed rows (``data.packing``: 4-D block mask and
restarting position ids), classification rows (``labels`` one class id per row),
preference pairs (one batch of ``2B`` rows: the chosen sequences, then the rejected
ones, so a pair costs one forward pass), or prompts (left-padded for generation, with
``row_ids`` naming each prompt). A pair is grouped by its longer sequence.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from finetune_trainer.data.packing import PackedExample, collate_packed
from finetune_trainer.data.tokenize import (
    IGNORE_INDEX,
    PairExample,
    PreferenceExample,
    PromptExample,
    TokenizedExample,
)

if TYPE_CHECKING:
    import torch


@runtime_checkable
class CollatesItself(Protocol):
    """An example kind defined beside its task (task image-classification's images,
    :mod:`finetune_trainer.vision.examples`) that makes its own micro-batch, so that
    this module, which the loop imports, does not import every task's package."""

    def collate_batch(self, examples: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
        """The model's keyword arguments for ``examples`` (all of this kind)."""
        ...


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
    ``labels`` as a 1-D tensor of class ids; preference pairs and prompts get
    :func:`collate_pairs`' and :func:`collate_prompts`' batches. A micro-batch is of one
    kind.
    """
    kinds = {_kind(e) for e in examples}
    if len(kinds) != 1:
        raise ValueError(f"a micro-batch mixes example kinds: {sorted(kinds)}")
    if isinstance(examples[0], CollatesItself):  # an image batch (finetune_trainer.vision)
        return examples[0].collate_batch(examples)
    if isinstance(examples[0], PackedExample):
        return collate_packed([e for e in examples if isinstance(e, PackedExample)], pad_id)
    if isinstance(examples[0], PreferenceExample):
        return collate_pairs([e for e in examples if isinstance(e, PreferenceExample)], pad_id)
    if isinstance(examples[0], PromptExample):
        return collate_prompts([e for e in examples if isinstance(e, PromptExample)], pad_id)
    if isinstance(examples[0], PairExample):
        return collate_text_pairs([e for e in examples if isinstance(e, PairExample)], pad_id)
    ids, mask, labels = _right_padded(
        [e.input_ids for e in examples], [e.labels for e in examples], pad_id
    )
    if examples[0].label is not None:
        import torch

        classes = torch.tensor([e.label for e in examples], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": classes}
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _right_padded(
    rows: Sequence[list[int]], row_labels: Sequence[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``input_ids``, ``attention_mask`` and ``labels`` of ``rows``, padded on the right."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (tokens, targets) in enumerate(zip(rows, row_labels, strict=True)):
        n = len(tokens)
        ids[row, :n] = torch.tensor(tokens)
        labels[row, :n] = torch.tensor(targets)
        mask[row, :n] = 1
    return ids, mask, labels


def collate_pairs(examples: Sequence[PreferenceExample], pad_id: int) -> dict[str, torch.Tensor]:
    """``B`` pairs as one right-padded batch of ``2B`` rows: row ``i`` is pair ``i``'s
    chosen sequence, row ``B + i`` its rejected one. ``reference_logps`` (``[2B]``, in
    the same order) comes along when every pair has them."""
    import torch

    ids, mask, labels = _right_padded(
        [e.input_ids for e in examples] + [e.rejected_ids for e in examples],
        [e.labels for e in examples] + [e.rejected_labels for e in examples],
        pad_id,
    )
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    references = [e.reference_logps for e in examples]
    if all(r is not None for r in references):
        chosen = [r[0] for r in references if r is not None]
        rejected = [r[1] for r in references if r is not None]
        batch["reference_logps"] = torch.tensor(chosen + rejected, dtype=torch.float32)
    return batch


def collate_prompts(examples: Sequence[PromptExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Prompts left-padded for generation (every prompt ends where generation starts),
    and ``row_ids``: each prompt's index in its prepared list."""
    import torch

    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        ids[row, width - n :] = torch.tensor(example.input_ids)
        mask[row, width - n :] = 1
    rows = torch.tensor([e.row for e in examples], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": mask, "row_ids": rows}


def collate_text_pairs(examples: Sequence[PairExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Sentence-embedding rows as three right-padded batches: the anchors
    (``input_ids``, ``attention_mask``), their positives (``positive_ids``,
    ``positive_mask``, same order) and the negatives of the rows that have one
    (``negative_ids``, ``negative_mask``; ``has_negative`` marks those rows)."""
    import torch

    def padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask, _ = _right_padded(rows, [[IGNORE_INDEX] * len(r) for r in rows], pad_id)
        return ids, mask

    anchors, anchor_mask = padded([e.input_ids for e in examples])
    positives, positive_mask = padded([e.positive_ids for e in examples])
    batch = {
        "input_ids": anchors,
        "attention_mask": anchor_mask,
        "positive_ids": positives,
        "positive_mask": positive_mask,
        "has_negative": torch.tensor([e.negative_ids is not None for e in examples]),
    }
    negatives = [e.negative_ids for e in examples if e.negative_ids is not None]
    if negatives:
        batch["negative_ids"], batch["negative_mask"] = padded(negatives)
    return batch


def _kind(example: TokenizedExample) -> str:
    if isinstance(example, CollatesItself):
        return type(example).__name__
    if isinstance(example, PairExample):
        return "pairs"
    if isinstance(example, PackedExample):
        return "packed"
    if isinstance(example, PreferenceExample):
        return "preference"
    if isinstance(example, PromptExample):
        return "prompt"
    return "causal-lm" if example.label is None else "classification"


def count_label_tokens(examples: Sequence[TokenizedExample]) -> int:
    """What the loss is normalised by: tokens that contribute to the loss after the causal
    shift (the first label never does), or one per classification example. (The
    preference and reinforcement tasks average over examples instead.)"""
    return sum(
        1 if e.label is not None else sum(1 for label in e.labels[1:] if label != IGNORE_INDEX)
        for e in examples
    )
