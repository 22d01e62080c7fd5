"""Mixing several training sources by weight (``dataset.mixture``).

The semantics, chosen to be what LLaMA-Factory's ``interleave_probs`` users expect on
average while being exact and repeatable:

- The mixed training set has as many examples as all sources together (after
  cleaning and holding out validation), ``N = n_1 + ... + n_k``, so an epoch is about
  as long as one pass over all the data, and ``training.epochs`` / ``maxSteps`` mean
  what they mean for a single file.
- Source ``i`` gets ``N * w_i / sum(w)`` of those examples, rounded by largest
  remainder so the shares add up to exactly ``N`` (ties go to the earlier source).
- A source asked for fewer examples than it has is subsampled without replacement; a
  source asked for more is repeated whole as often as it fits, and the rest is a
  sample without replacement, so no example is repeated more than once beyond the
  full passes.
- Everything is drawn once, from ``training.seed``, before training: the same seed
  gives the same mixture on every rank, retry and rerun; the loop then shuffles the
  mixed set every epoch as it does any training set.

Held-out validation is taken from each source before mixing (see ``prepare``), so no
validation example is ever sampled into training and every source is evaluated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def mixture_counts(sizes: Sequence[int], weights: Sequence[float]) -> list[int]:
    """How many examples each source contributes; the counts sum to ``sum(sizes)``."""
    if len(sizes) != len(weights) or not sizes:
        raise ValueError("one weight per source, at least one source")
    total, weight_sum = sum(sizes), math.fsum(weights)
    quotas = [total * w / weight_sum for w in weights]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def mixture_plan(
    sizes: Sequence[int], weights: Sequence[float], seed: int
) -> list[tuple[int, int]]:
    """(source, index within source) for every example of the mixed set, shuffled."""
    rng = random.Random(seed)
    plan: list[tuple[int, int]] = []
    for source, (size, count) in enumerate(zip(sizes, mixture_counts(sizes, weights), strict=True)):
        if count and not size:
            raise ValueError(f"source {source} is empty but has a share of the mixture")
        full, rest = divmod(count, size) if size else (0, 0)
        picks = list(range(size)) * full + rng.sample(range(size), rest)
        plan += [(source, i) for i in picks]
    rng.shuffle(plan)
    return plan
