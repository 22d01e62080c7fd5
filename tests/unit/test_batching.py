"""Batching: length-grouped, seeded order that cuts padding; right-padded tensors whose
pads never reach the loss; and the label-token count the loss is normalised by."""

from __future__ import annotations

import random

import pytest
import torch

from finetune_trainer.data.batching import (
    WINDOW_BATCHES,
    collate,
    count_label_tokens,
    length_grouped_batches,
)
from finetune_trainer.data.tokenize import IGNORE_INDEX, TokenizedExample

X = IGNORE_INDEX


def skewed_lengths(n: int, seed: int = 0) -> list[int]:
    """Chat-like lengths: mostly short, a long tail."""
    rng = random.Random(seed)
    return [int(min(2048, 16 + rng.expovariate(1 / 120))) for _ in range(n)]


def padded_tokens(lengths: list[int], batches: list[list[int]]) -> int:
    return sum(len(b) * max(lengths[i] for i in b) for b in batches)


@pytest.mark.parametrize(("n", "batch_size"), [(1, 4), (7, 3), (64, 8), (1000, 16), (5, 10)])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_index_once_in_full_batches(n: int, batch_size: int, shuffle: bool) -> None:
    lengths = skewed_lengths(n)
    batches = length_grouped_batches(lengths, batch_size, seed=3, shuffle=shuffle)

    assert sorted(i for b in batches for i in b) == list(range(n))
    assert all(1 <= len(b) <= batch_size for b in batches)
    # Only the last batch of each sorting window may be short.
    windows = -(-n // (batch_size * WINDOW_BATCHES))
    assert sum(len(b) < batch_size for b in batches) <= windows
    assert len(batches) >= -(-n // batch_size)


def test_same_seed_same_order() -> None:
    lengths = skewed_lengths(500)

    assert length_grouped_batches(lengths, 8, seed=7) == length_grouped_batches(lengths, 8, seed=7)


def test_different_seeds_different_orders() -> None:
    lengths = skewed_lengths(500)
    orders = {str(length_grouped_batches(lengths, 8, seed=s)) for s in range(5)}

    assert len(orders) == 5


def test_batches_hold_similar_lengths() -> None:
    lengths = skewed_lengths(512)
    batches = length_grouped_batches(lengths, 8, seed=1)

    # One window covers all 512 examples here, so each batch is a run of the sorted order.
    assert len(lengths) <= 8 * WINDOW_BATCHES
    ranked = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    runs = {tuple(sorted(lengths[i] for i in ranked[k : k + 8])) for k in range(0, 512, 8)}
    assert {tuple(sorted(lengths[i] for i in b)) for b in batches} == runs


def test_batch_order_is_shuffled_not_longest_first() -> None:
    # Sorted batches must not reach the model in length order: the loss curve would
    # drift with length, and a too-long batch would only show up at the end.
    lengths = skewed_lengths(512)
    first_is_longest = 0
    for seed in range(10):
        batches = length_grouped_batches(lengths, 8, seed=seed)
        longest = [max(lengths[i] for i in b) for b in batches]
        assert longest != sorted(longest, reverse=True)
        first_is_longest += longest[0] == max(longest)
    assert first_is_longest < 3


def test_grouping_cuts_padding_several_fold_against_random_batches() -> None:
    lengths = skewed_lengths(4096, seed=5)
    useful = sum(lengths)
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    random_batches = [order[k : k + 16] for k in range(0, len(order), 16)]

    grouped = length_grouped_batches(lengths, 16, seed=0)

    random_waste = padded_tokens(lengths, random_batches) - useful
    grouped_waste = padded_tokens(lengths, grouped) - useful
    assert grouped_waste * 10 < random_waste
    assert padded_tokens(lengths, grouped) < 0.6 * padded_tokens(lengths, random_batches)


def test_without_shuffle_batches_are_longest_first_and_deterministic() -> None:
    lengths = [3, 9, 1, 7, 5, 8]
    batches = length_grouped_batches(lengths, 2, seed=123, shuffle=False)

    assert batches == [[1, 5], [3, 4], [0, 2]]
    assert batches == length_grouped_batches(lengths, 2, seed=999, shuffle=False)


# --------------------------------------------------------------------------- collate


EXAMPLES = [
    TokenizedExample(input_ids=[11, 12, 13, 14], labels=[X, X, 13, 14]),
    TokenizedExample(input_ids=[21, 22], labels=[X, 22]),
    TokenizedExample(input_ids=[31, 32, 33], labels=[31, 32, 33]),
]
PAD = 0


def test_collate_right_pads_ids_to_the_longest() -> None:
    batch = collate(EXAMPLES, pad_id=PAD)

    assert batch["input_ids"].tolist() == [
        [11, 12, 13, 14],
        [21, 22, PAD, PAD],
        [31, 32, 33, PAD],
    ]
    assert batch["input_ids"].dtype == torch.long


def test_collate_never_labels_pads_even_when_pad_is_a_real_token() -> None:
    # Pad is commonly EOS, which is also a trained token: the mask must come from the
    # lengths, not from comparing ids with pad_id.
    eos = 14
    batch = collate(EXAMPLES, pad_id=eos)

    assert batch["labels"].tolist() == [
        [X, X, 13, 14],
        [X, 22, X, X],
        [31, 32, 33, X],
    ]
    assert batch["input_ids"][1].tolist() == [21, 22, eos, eos]


def test_collate_attention_mask_marks_real_tokens() -> None:
    batch = collate(EXAMPLES, pad_id=PAD)

    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert {t.shape for t in batch.values()} == {torch.Size([3, 4])}


def test_collate_of_one_example_has_no_padding() -> None:
    batch = collate(EXAMPLES[:1], pad_id=PAD)

    assert batch["input_ids"].tolist() == [[11, 12, 13, 14]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1]]


# --------------------------------------------------------------------------- label count


def test_count_label_tokens_skips_the_first_position() -> None:
    # After the causal shift, position 0 is never predicted, so a label there is not a
    # loss term: [31, 32, 33] contributes 2, not 3.
    assert count_label_tokens(EXAMPLES) == 2 + 1 + 2


def test_count_label_tokens_matches_the_shifted_labels_of_the_batch() -> None:
    batch = collate(EXAMPLES, pad_id=PAD)
    shifted = batch["labels"][:, 1:]

    assert count_label_tokens(EXAMPLES) == int((shifted != X).sum())


def test_count_label_tokens_of_unlabelled_examples_is_zero() -> None:
    assert count_label_tokens([TokenizedExample([1, 2, 3], [X, X, X])]) == 0
    assert count_label_tokens([TokenizedExample([1], [1])]) == 0
    assert count_label_tokens([]) == 0


def test_classification_examples_collate_to_one_class_id_per_row() -> None:
    examples = [
        TokenizedExample([5, 6, 7], [X, X, X], label=2),
        TokenizedExample([8], [X], label=0),
    ]

    batch = collate(examples, pad_id=0)

    assert batch["labels"].tolist() == [2, 0]
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].dim() == 1
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    # The loss of a classification step is averaged over examples, not tokens.
    assert count_label_tokens(examples) == 2


def test_class_id_zero_is_a_class_not_a_missing_label() -> None:
    batch = collate([TokenizedExample([1, 2], [X, X], label=0)], pad_id=0)
    assert batch["labels"].tolist() == [0]
