"""Each answer's log-probability: the sum over its label tokens, one number per row.

Preference losses compare whole answers, so what they read of a language model is
log pi(answer | prompt) = the sum of the answer tokens' log-probabilities, and for the
length-normalised losses the number of those tokens. Logits are computed only at the
label positions (:func:`finetune_trainer.losses.label_logits`), as the SFT loss does:
prompts and padding never reach the vocabulary projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune_trainer.data.tokenize import IGNORE_INDEX
from finetune_trainer.losses import Batch, label_logits

MODEL_INPUTS = ("input_ids", "attention_mask")
"""The keys of a collated batch that the model reads (the rest: labels, reference
log-probabilities, row ids, are the loss's)."""


def model_inputs(batch: Batch) -> Batch:
    """The model's keyword arguments out of a collated batch."""
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def sequence_logps(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its label tokens (fp32, ``[rows]``) and
    how many label tokens it has (``[rows]``, long).

    ``label_logits`` returns the label positions flattened in row-major order, the same
    order as ``keep.nonzero()``, so each token's log-probability is added to its row
    with one ``index_add``.
    """
    labels = batch["labels"]
    logits, target = label_logits(model, model_inputs(batch), labels)
    token_logps = -F.cross_entropy(logits.float(), target, reduction="none")
    keep = labels[:, 1:] != IGNORE_INDEX
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(labels.size(0), dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, rows, token_logps), keep.sum(dim=1)


def split_pairs(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A preference batch's rows as (chosen, rejected): the collated batch holds the B
    chosen answers first, then the B rejected ones in the same order."""
    half = values.size(0) // 2
    return values[:half], values[half:]
