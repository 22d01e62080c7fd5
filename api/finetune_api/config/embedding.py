"""The ``contrastive`` section: how task sentence-embedding turns pairs into a loss.

The section belongs to its task (``finetune_api.rules`` refuses it on another); the
check here is the section's own (a margin set for the loss that has none), with its CEL
twin so the API server refuses the same object at ``kubectl apply``.
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from finetune_api.config.base import CamelModel

ContrastiveLoss = Literal["multipleNegatives", "triplet"]
Pooling = Literal["mean", "cls"]

DEFAULT_MARGIN: Final = 0.5
"""The triplet loss's margin when contrastive.margin is left unset."""


class ContrastiveSpec(CamelModel):
    """How task sentence-embedding learns from (anchor, positive[, negative]) rows."""

    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"!has(self.margin) || self.margin == {DEFAULT_MARGIN} || "
                    "(has(self.loss) && self.loss == 'triplet')",
                    "message": "margin is the triplet loss's: set loss: triplet, or remove it",
                }
            ]
        }
    )

    loss: ContrastiveLoss = Field(
        default="multipleNegatives",
        description="multipleNegatives: the multiple-negatives ranking loss, cross-entropy "
        "over scale x cosine similarities of each anchor against every positive (and every "
        "negative) of its micro-batch, its own positive the right answer; in-batch "
        "negatives come from the same micro-batch only (gradient accumulation does not "
        "widen them), so training.batchSize is the number of candidates. triplet: "
        "max(0, d(anchor, positive) - d(anchor, negative) + margin) with the cosine "
        "distance d = 1 - cosine similarity; every row needs a negative.",
    )
    scale: float = Field(
        default=20.0,
        gt=0,
        le=1000,
        description="multipleNegatives: the factor on the cosine similarities before the "
        "softmax (an inverse temperature: 20 is temperature 0.05).",
    )
    margin: float = Field(
        default=DEFAULT_MARGIN,
        gt=0,
        le=2,
        description="triplet: how much closer (in cosine distance, 0 to 2) the positive "
        "must be than the negative before a triplet stops contributing.",
    )
    pooling: Pooling | None = Field(
        default=None,
        description="How token vectors become one sentence vector: mean (the average over "
        "the real tokens) or cls (the first token's). Default: the model's own "
        "sentence-transformers pooling (1_Pooling/config.json) when it has one, else mean.",
    )
    normalize: bool = Field(
        default=True,
        description="Scale the published model's sentence vectors to unit length (a "
        "sentence-transformers Normalize module), so a dot product is their cosine "
        "similarity; training and the retrieval scores compare cosine similarities either "
        "way.",
    )

    @model_validator(mode="after")
    def _margin_is_the_triplets(self) -> Self:
        if self.margin != DEFAULT_MARGIN and self.loss != "triplet":
            raise ValueError(
                f"contrastive.margin is the triplet loss's, not {self.loss}'s; set "
                "contrastive.loss: triplet, or remove margin"
            )
        return self
