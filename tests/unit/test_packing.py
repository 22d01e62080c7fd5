"""Packing: whole examples in best-fit bins, and a packed row trains each example exactly
as it would be trained alone (the proof runs the tiny Llama both ways)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_trainer.data.batching import collate, count_label_tokens
from finetune_trainer.data.packing import PackedExample, pack_bins, pack_examples
from finetune_trainer.data.tokenize import IGNORE_INDEX, TokenizedExample

X = IGNORE_INDEX


def example(ids: list[int], labelled_from: int = 0) -> TokenizedExample:
    """Ids with labels on every position from ``labelled_from`` on."""
    labels = [X] * labelled_from + ids[labelled_from:]
    return TokenizedExample(ids, labels)


# --------------------------------------------------------------------------- bins


@pytest.mark.parametrize("seed", range(5))
def test_bins_hold_every_index_once_within_capacity(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 64) for _ in range(300)]

    bins = pack_bins(lengths, 64)

    assert sorted(i for b in bins for i in b) == list(range(300))
    assert all(sum(lengths[i] for i in b) <= 64 for b in bins)
    # Close to the lower bound: best-fit decreasing wastes little room.
    assert len(bins) <= 1.1 * (sum(lengths) / 64) + 1


def test_best_fit_puts_an_example_in_the_fullest_bin_it_fits() -> None:
    # 6 and 5 open two bins (room 4 and 5); 4 goes to the fuller (room 4), then 5 fits
    # the other exactly.
    assert pack_bins([6, 5, 4, 5], 10) == [[0, 2], [1, 3]]


def test_bins_depend_on_lengths_only() -> None:
    lengths = [3, 7, 3, 5, 2, 8, 1]
    assert pack_bins(lengths, 10) == pack_bins(list(lengths), 10)
    assert pack_bins([], 10) == []


def test_an_example_longer_than_the_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="more than the capacity"):
        pack_bins([4, 11], 10)


# --------------------------------------------------------------------------- packed rows


def test_packed_row_concatenates_and_masks_each_boundary_label() -> None:
    a, b, c = example([1, 2, 3]), example([4, 5], labelled_from=1), example([6, 7, 8, 9])
    [row] = pack_examples([a, b, c], 16)

    assert isinstance(row, PackedExample)
    # Longest first: c, then a, then b.
    assert row.lengths == (4, 3, 2)
    assert row.input_ids == [6, 7, 8, 9, 1, 2, 3, 4, 5]
    # c keeps its first label (never predicted anyway); a's first label would be
    # predicted from c's last token, so it is ignored; b's was already ignored.
    assert row.labels == [6, 7, 8, 9, X, 2, 3, X, 5]
    # The loss counts the same tokens as the three examples alone.
    assert count_label_tokens([row]) == count_label_tokens([a, b, c])


def test_collate_packed_restarts_positions_and_blocks_attention() -> None:
    rows = pack_examples([example([1, 2, 3]), example([4, 5]), example([6, 7, 8])], 6)
    assert [r.lengths for r in rows] == [(3, 3), (2,)]

    batch = collate(rows, pad_id=0)

    assert set(batch) == {"input_ids", "labels", "position_ids", "attention_mask"}
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2], [0, 1, 0, 0, 0, 0]]
    assert batch["input_ids"][1].tolist() == [4, 5, 0, 0, 0, 0]
    assert batch["labels"][1].tolist() == [4, 5, X, X, X, X]
    mask = batch["attention_mask"]
    assert mask.shape == (2, 1, 6, 6)
    assert mask.dtype == torch.float32
    allowed = (mask == 0)[:, 0].int().tolist()
    assert allowed[0] == [
        [1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 0, 0],  # the second example sees none of the first
        [0, 0, 0, 1, 1, 0],
        [0, 0, 0, 1, 1, 1],
    ]
    # Pads see only themselves: no row of the softmax is empty.
    assert allowed[1][3] == [0, 0, 0, 1, 0, 0]
    assert (mask[mask != 0] == torch.finfo(torch.float32).min).all()


def test_a_micro_batch_of_mixed_kinds_is_refused() -> None:
    packed = pack_examples([example([1, 2])], 8)
    with pytest.raises(ValueError, match="mixes example kinds"):
        collate([*packed, example([3, 4])], pad_id=0)


# --------------------------------------------------------------------------- on a model


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def token_losses(model: Any, batch: dict[str, Any]) -> torch.Tensor:
    """Per-position loss of predicting labels[t + 1] from position t (0 where ignored)."""
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), labels[:, 1:], ignore_index=X, reduction="none"
    )


def random_examples(vocab: int, lengths: list[int], seed: int) -> list[TokenizedExample]:
    rng = random.Random(seed)
    out = []
    for n in lengths:
        ids = [rng.randrange(3, vocab) for _ in range(n)]
        out.append(example(ids, labelled_from=rng.randrange(0, n // 2)))
    return out


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_losses_equal_each_example_alone(
    tiny_llama: Any, attention: str, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM

    model = (
        tiny_llama
        if attention == "sdpa"
        else AutoModelForCausalLM.from_pretrained(
            tiny_model_dir, dtype=torch.float32, attn_implementation="eager"
        ).eval()
    )
    assert model.config._attn_implementation == attention
    examples = random_examples(model.config.vocab_size, [17, 9, 30, 12, 5, 21], seed=1)
    rows = pack_examples(examples, 48)
    assert len(rows) < len(examples)  # the premise: rows really hold several examples
    assert any(len(r.lengths) >= 3 for r in rows)

    packed = token_losses(model, collate(rows, pad_id=0))

    order = [i for group in pack_bins([len(e.input_ids) for e in examples], 48) for i in group]
    alone = iter(order)
    for r, row in enumerate(rows):
        start = 0
        for length in row.lengths:
            single = token_losses(model, collate([examples[next(alone)]], pad_id=0))[0]
            # Within the example: every position's loss as if it were alone.
            got = packed[r, start : start + length - 1]
            torch.testing.assert_close(got, single, atol=1e-5, rtol=1e-5)
            # Its last position predicts nothing (the next example's boundary label).
            if start + length - 1 < packed.size(1):
                assert packed[r, start + length - 1] == 0
            start += length
    # The per-example sums add up: the loss the loop would see is the same.
    assert packed.sum().item() == pytest.approx(
        sum(token_losses(model, collate([e], pad_id=0)).sum().item() for e in examples),
        rel=1e-5,
    )


def test_the_boundary_label_is_not_predicted_from_the_previous_example(tiny_llama: Any) -> None:
    a, b = random_examples(tiny_llama.config.vocab_size, [10, 8], seed=2)
    b = example(b.input_ids)  # b's first token is labelled before packing
    [row] = pack_examples([a, b], 32)
    assert row.lengths == (10, 8)
    boundary = 10

    batch = collate([row], pad_id=0)
    assert batch["labels"][0, boundary] == X
    losses = token_losses(tiny_llama, batch)
    # Position boundary - 1 (a's last token) would predict b's first token: no loss.
    assert losses[0, boundary - 1] == 0
    # The model's own loss (what training uses) agrees: without the boundary mask the
    # packed loss would include that cross-example prediction.
    unmasked = collate([row], pad_id=0)
    unmasked["labels"][0, boundary] = b.input_ids[0]
    with torch.no_grad():
        masked_loss = tiny_llama(**collate([row], pad_id=0), num_items_in_batch=1).loss
        leaking_loss = tiny_llama(**unmasked, num_items_in_batch=1).loss
    extra = token_losses(tiny_llama, unmasked)[0, boundary - 1]
    assert extra > 0
    assert leaking_loss.item() == pytest.approx(masked_loss.item() + extra.item(), rel=1e-5)
