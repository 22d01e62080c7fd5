"""Retrieval scores of a sentence encoder on the held-out pairs, before and after.

Each held-out anchor searches among *all* held-out positives and negatives (not only
its micro-batch's): the rank of its own positive by cosine similarity gives recall@1,
recall@5 and the reciprocal rank. Ties count against the anchor (a candidate as similar
as its positive ranks ahead), so an encoder that maps everything to one vector scores 0
rather than looking perfect. ``evalLoss`` is the configured loss with the whole held-out
set as one batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from finetune_api.config.embedding import ContrastiveSpec
from finetune_trainer.data.batching import collate_text_pairs
from finetune_trainer.data.tokenize import PairExample, TokenizedExample
from finetune_trainer.embedding.loss import PairVectors, cosine_matrix, pair_losses, pair_vectors
from finetune_trainer.embedding.pooling import PoolingMode
from finetune_trainer.evaluation import EvalResult

RECALL_AT: tuple[int, ...] = (1, 5)
"""The cut-offs reported (``recallAt1``, ``recallAt5``; METRICS in the contract)."""


def positive_ranks(similarity: torch.Tensor) -> torch.Tensor:
    """[A]: the 1-based rank of candidate ``i`` (anchor ``i``'s positive) in row ``i`` of
    ``similarity`` [A, C], ties counted against it."""
    own = similarity.diagonal().unsqueeze(1)
    others = similarity >= own
    return others.sum(dim=1)  # the positive itself is one of them


@dataclass(frozen=True)
class RetrievalScores:
    """A sentence encoder on held-out pairs."""

    generations: ClassVar[bool] = False
    loss: float
    recall: dict[int, float]
    mrr: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "evalLoss": self.loss,
            **{f"recallAt{k}": v for k, v in self.recall.items()},
            "mrr": self.mrr,
        }


def retrieval_scores(similarity: torch.Tensor, loss: float) -> RetrievalScores:
    """Recall@k and MRR of ``similarity`` [A, C] (candidate ``i`` is anchor ``i``'s)."""
    ranks = positive_ranks(similarity).float()
    return RetrievalScores(
        loss,
        {k: float((ranks <= k).float().mean()) for k in RECALL_AT},
        float((1 / ranks).mean()),
    )


@torch.no_grad()
def held_out_vectors(
    model: torch.nn.Module,
    examples: Sequence[PairExample],
    batch_size: int,
    pad_id: int,
    pooling: PoolingMode,
) -> PairVectors:
    """Every held-out row through the encoder, ``batch_size`` rows at a time."""
    device = next(model.parameters()).device
    parts = []
    for i in range(0, len(examples), batch_size):
        batch = collate_text_pairs(examples[i : i + batch_size], pad_id)
        parts.append(pair_vectors(model, {k: v.to(device) for k, v in batch.items()}, pooling))
    negatives = [p.negatives for p in parts if p.negatives is not None]
    return PairVectors(
        torch.cat([p.anchors for p in parts]),
        torch.cat([p.positives for p in parts]),
        torch.cat(negatives) if negatives else None,
        torch.cat([p.has_negative for p in parts]),
    )


@dataclass(frozen=True)
class RetrievalEvaluation:
    """How a sentence-embedding run is evaluated (the Scorer's, periodic and full)."""

    spec: ContrastiveSpec
    pooling: PoolingMode

    def scores(
        self,
        model: torch.nn.Module,
        examples: Sequence[TokenizedExample],
        batch_size: int,
        pad_id: int,
    ) -> RetrievalScores | None:
        pairs = [e for e in examples if isinstance(e, PairExample)]
        if not pairs:
            return None
        was_training = model.training
        model.eval()
        vectors = held_out_vectors(model, pairs, batch_size, pad_id, self.pooling)
        model.train(was_training)
        candidates = vectors.positives
        if vectors.negatives is not None:
            candidates = torch.cat([candidates, vectors.negatives])
        loss = float(pair_losses(vectors, self.spec).mean())
        return retrieval_scores(cosine_matrix(vectors.anchors, candidates), loss)

    def evaluate(
        self,
        model: torch.nn.Module,
        examples: Sequence[TokenizedExample],
        batch_size: int,
        pad_id: int,
    ) -> EvalResult:
        """The full evaluation is the periodic one: an encoder generates nothing."""
        return EvalResult(self.scores(model, examples, batch_size, pad_id))
