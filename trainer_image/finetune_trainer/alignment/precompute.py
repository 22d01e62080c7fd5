"""Reference log-probabilities computed once, before training.

The reference policy of dpo and ipo never changes, so its log-probabilities of a pair
are a property of the pair: computed before training in eval mode, in a fixed order
and batching, they are the same numbers on every attempt of a run (a resumed run
computes them again rather than trusting a file), and the loss then reads them from
the batch (``reference_logps``) instead of running the reference every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch

from finetune_trainer.alignment.logps import split_pairs
from finetune_trainer.alignment.reference import AdapterOff
from finetune_trainer.data.batching import collate
from finetune_trainer.data.tokenize import PreferenceExample, TokenizedExample


def with_reference_logps(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
) -> list[TokenizedExample]:
    """``examples`` with each pair's (chosen, rejected) reference log-probabilities set,
    as ``model`` (the base, or a model whose adapter is switched off) gives them."""
    reference = AdapterOff()
    device = next(model.parameters()).device
    out: list[TokenizedExample] = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        pairs = [e for e in chunk if isinstance(e, PreferenceExample)]
        if len(pairs) != len(chunk):
            raise TypeError("reference log-probabilities are computed for preference pairs")
        batch = {k: v.to(device) for k, v in collate(pairs, pad_id).items()}
        chosen, rejected = split_pairs(reference.logps(model, batch).cpu())
        out.extend(
            replace(pair, reference_logps=(float(c), float(r)))
            for pair, c, r in zip(pairs, chosen.tolist(), rejected.tolist(), strict=True)
        )
    return out
