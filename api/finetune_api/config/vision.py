"""The ``imageClassification`` section: how task image-classification adapts a
pretrained vision backbone to new classes (transfer learning).

The recipe is the usual one: the backbone's old head is replaced by a new one sized to
the data's classes, which starts from random weights and so learns at a higher rate
than the pretrained layers around it; images are cropped and flipped at random for
training and resized and center-cropped for evaluation. The section belongs to its task
(``finetune_api.rules`` refuses it on another).
"""

from __future__ import annotations

from pydantic import Field

from finetune_api.config.base import CamelModel


class ImageClassificationSpec(CamelModel):
    """How task image-classification trains its new head and sees its images."""

    head_lr_multiplier: float = Field(
        default=10.0,
        gt=0,
        le=1000,
        description="The new classification head learns at training.learningRate x this "
        "(it starts from random weights, the backbone from pretrained ones). Method freeze "
        "keeps its own method.freeze.headLrMultiplier.",
    )
    image_size: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="The side in pixels of the square the model sees. Default: the model's "
        "own (image processor size, else config.json image_size, else 224).",
    )
    augment: bool = Field(
        default=True,
        description="Training images are random resized crops (scale 0.5 to 1) flipped "
        "horizontally half the time, drawn from the run's seeded generators (restored by "
        "a resumed checkpoint); off: resize and center crop, as for evaluation.",
    )
