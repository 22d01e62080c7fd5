"""The contrastive losses of task sentence-embedding, on cosine similarities.

multipleNegatives (the multiple-negatives ranking loss): each anchor is a classification
over every candidate of the micro-batch (all positives, then all negatives), its own
positive the right class, with logits ``scale x cos``. The other rows' positives are the
negatives for free, so a larger micro-batch is a harder task.

In-batch negatives come from the *micro-batch* only. Under gradient accumulation a step
is several micro-batches whose forward passes are separate (the point of accumulating
is not to hold them at once); widening the candidates to the whole step would need every
micro-batch's vectors kept with their graphs (the memory accumulation avoids) or a
cached-gradient scheme (GradCache) that re-runs each forward. So each micro-batch is its
own retrieval problem: ``training.batchSize`` is the number of candidates, and
``gradientAccumulationSteps`` only averages more of them per step. Each anchor's loss is
summed and divided by the step's examples (the task's ``loss_over: examples``), like
every other task's.

triplet: ``max(0, d(a, p) - d(a, n) + margin)`` with ``d = 1 - cos``, on each row's own
negative.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from finetune_api.config.embedding import ContrastiveSpec
from finetune_trainer.embedding.pooling import PoolingMode, encode
from finetune_trainer.errors import DataError


def cosine_matrix(anchors: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[A, C]: the cosine similarity of every anchor with every candidate."""
    return F.normalize(anchors, dim=-1) @ F.normalize(candidates, dim=-1).T


def multiple_negatives_losses(
    anchors: torch.Tensor, candidates: torch.Tensor, scale: float
) -> torch.Tensor:
    """[A]: each anchor's cross-entropy over ``scale x cos`` against ``candidates``,
    whose first A rows are the anchors' own positives, in order."""
    logits = scale * cosine_matrix(anchors, candidates)
    targets = torch.arange(anchors.shape[0], device=anchors.device)
    return F.cross_entropy(logits, targets, reduction="none")


def triplet_losses(
    anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, margin: float
) -> torch.Tensor:
    """[A]: ``max(0, d(a, p) - d(a, n) + margin)``, ``d`` the cosine distance."""
    d_pos = 1 - F.cosine_similarity(anchors, positives, dim=-1)
    d_neg = 1 - F.cosine_similarity(anchors, negatives, dim=-1)
    return F.relu(d_pos - d_neg + margin)


@dataclass(frozen=True)
class PairVectors:
    """A collated batch of pairs through the encoder."""

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor | None
    """Of the rows ``has_negative`` marks, in order (None: no row has one)."""
    has_negative: torch.Tensor


def pair_vectors(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], pooling: PoolingMode
) -> PairVectors:
    anchors = encode(model, batch["input_ids"], batch["attention_mask"], pooling)
    positives = encode(model, batch["positive_ids"], batch["positive_mask"], pooling)
    negatives = None
    if "negative_ids" in batch:
        negatives = encode(model, batch["negative_ids"], batch["negative_mask"], pooling)
    return PairVectors(anchors, positives, negatives, batch["has_negative"])


def pair_losses(vectors: PairVectors, spec: ContrastiveSpec) -> torch.Tensor:
    """Each row's loss as ``spec`` says (see the module's docstring)."""
    if spec.loss == "triplet":
        if vectors.negatives is None or not bool(vectors.has_negative.all()):
            raise DataError(
                "contrastive.loss triplet needs a negative on every row; fill the dataset's "
                "negative column (dataset.columns.negative), or use loss multipleNegatives"
            )
        return triplet_losses(vectors.anchors, vectors.positives, vectors.negatives, spec.margin)
    candidates = vectors.positives
    if vectors.negatives is not None:
        candidates = torch.cat([vectors.positives, vectors.negatives])
    return multiple_negatives_losses(vectors.anchors, candidates, spec.scale)


@dataclass(frozen=True)
class ContrastiveLoss:
    """The loop's loss for task sentence-embedding: the rows' losses summed over the
    micro-batch, divided by the step's example count (``weight``)."""

    spec: ContrastiveSpec
    pooling: PoolingMode

    def __call__(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], weight: int
    ) -> torch.Tensor:
        return pair_losses(pair_vectors(model, batch, self.pooling), self.spec).sum() / weight
