"""An image as an example of the training loop, and a micro-batch of them as tensors.

An :class:`ImageExample` is a :class:`~finetune_trainer.data.tokenize.TokenizedExample`
without tokens (its ``label`` is the class id), so the loop's step plan, its weights
(one unit per example), checkpoints and the classifier's scores treat it like a
classified text; :func:`collate_images` decodes and transforms the images when the
batch is formed, so a dataset larger than memory trains as well as a small one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.vision.transforms import ImageTransform


@dataclass(frozen=True)
class ImageExample(TokenizedExample):
    """One image of a split: its file, content digest and how the batch transforms it
    (``training``: augmented as the run says; otherwise the evaluation view)."""

    image: str = ""
    digest: str = ""
    transform: ImageTransform | None = None
    training: bool = False

    @property
    def has_target(self) -> bool:
        return True

    @property
    def length(self) -> int:
        """Every image becomes the same square: nothing to group by length."""
        return 1

    def collate_batch(self, examples: Sequence[TokenizedExample]) -> dict[str, torch.Tensor]:
        """The loop's batch of images (:class:`~finetune_trainer.data.batching.CollatesItself`)."""
        return collate_images([e for e in examples if isinstance(e, ImageExample)])


def collate_images(examples: Sequence[ImageExample]) -> dict[str, torch.Tensor]:
    """``pixel_values`` ``[B, 3, size, size]`` and ``labels`` ``[B]`` (class ids)."""
    from finetune_trainer.vision.images import open_rgb

    pixels = []
    for example in examples:
        assert example.transform is not None and example.label is not None
        image = open_rgb(example.image, example.image)
        view = example.transform.training if example.training else example.transform.evaluation
        pixels.append(view(image))
    labels = torch.tensor([e.label for e in examples], dtype=torch.long)
    return {"pixel_values": torch.stack(pixels), "labels": labels}
