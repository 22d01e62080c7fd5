"""Mixing sources by weight: exact shares of a set as large as all sources together,
subsampled or repeated without favouring any example, the same for the same seed."""

from __future__ import annotations

from collections import Counter

import pytest

from finetune_trainer.data.mixture import mixture_counts, mixture_plan


@pytest.mark.parametrize(
    ("sizes", "weights", "expected"),
    [
        ([100, 100], [1, 1], [100, 100]),
        ([100, 50], [1, 1], [75, 75]),  # the small source is upsampled to its half
        ([90, 30], [2, 1], [80, 40]),
        ([10, 10, 10], [1, 1, 1], [10, 10, 10]),
        ([7, 3], [1, 1], [5, 5]),
        ([5, 5], [1, 2], [3, 7]),  # 3.33 / 6.67: the larger remainder gets the extra one
        ([1, 1, 1], [1, 1, 1], [1, 1, 1]),
        ([4, 0], [1, 1e-9], [4, 0]),
    ],
)
def test_counts_are_shares_of_all_rows(
    sizes: list[int], weights: list[float], expected: list[int]
) -> None:
    counts = mixture_counts(sizes, weights)

    assert counts == expected
    assert sum(counts) == sum(sizes)


def test_equal_remainders_go_to_the_earlier_source() -> None:
    assert mixture_counts([2, 1], [1, 1]) == [2, 1]  # 1.5 / 1.5: the first takes the tie
    assert mixture_counts([1, 2], [1, 1]) == [2, 1]


def test_plan_draws_each_source_its_share() -> None:
    plan = mixture_plan([90, 30], [2, 1], seed=0)

    per_source = Counter(s for s, _ in plan)
    assert per_source == {0: 80, 1: 40}
    assert all(0 <= i < (90 if s == 0 else 30) for s, i in plan)


def test_subsampling_never_repeats_an_example() -> None:
    plan = mixture_plan([90, 30], [2, 1], seed=0)

    drawn = [i for s, i in plan if s == 0]
    assert len(drawn) == len(set(drawn)) == 80


def test_upsampling_repeats_whole_passes_then_samples_the_rest() -> None:
    plan = mixture_plan([90, 30], [2, 1], seed=0)

    repeats = Counter(i for s, i in plan if s == 1)
    # 40 from 30 examples: each once, and 10 of them a second time, none three times.
    assert set(repeats) == set(range(30))
    assert sorted(Counter(repeats.values()).items()) == [(1, 20), (2, 10)]


def test_same_seed_same_mixture_other_seed_other_draw() -> None:
    assert mixture_plan([50, 20], [1, 3], seed=7) == mixture_plan([50, 20], [1, 3], seed=7)
    assert mixture_plan([50, 20], [1, 3], seed=7) != mixture_plan([50, 20], [1, 3], seed=8)


def test_the_plan_is_shuffled_across_sources() -> None:
    plan = mixture_plan([50, 50], [1, 1], seed=0)
    first_half = Counter(s for s, _ in plan[:50])
    assert 10 < first_half[0] < 40


def test_an_empty_source_with_a_share_is_refused() -> None:
    with pytest.raises(ValueError, match="source 1 is empty"):
        mixture_plan([5, 0], [1, 1], seed=0)
