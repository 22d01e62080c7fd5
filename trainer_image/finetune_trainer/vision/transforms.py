"""What the model sees of an image: the standard transfer-learning transforms, without
torchvision (whose wheels do not import beside this torch build).

Training: a random resized crop (a random 50-100% of the area at an aspect ratio between
3/4 and 4/3, resized to the model's square) flipped left-right half the time, the usual
augmentation for fine-tuning an ImageNet-style backbone on few images. Evaluation:
resized so the shorter side is ``size / 0.875`` and center-cropped to ``size``, the same
image every time. Both end as a float tensor normalised with the model's mean and
standard deviation (its image processor's ``image_mean``/``image_std``).

The random draws come from a ``torch.Generator`` the caller passes: the loop passes
none, so the global generator is used, which ``set_seed`` seeds and a checkpoint saves
and restores, so an interrupted run resumes to the same crops and flips.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from PIL.Image import Image

EVAL_CROP_FRACTION = 0.875
"""Evaluation resizes to size / this, then crops the center ``size`` (ImageNet's 224/256)."""
CROP_SCALE = (0.5, 1.0)
"""The share of the image's area a training crop covers."""
CROP_RATIO = (3 / 4, 4 / 3)
"""The aspect ratios a training crop may have."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageTransform:
    """An image to a ``[3, size, size]`` normalised tensor, for training or evaluation."""

    size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    augment: bool = True

    def training(self, image: Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random resized crop, flipped half the time (evaluation's view when
        ``augment`` is off)."""
        if not self.augment:
            return self.evaluation(image)
        from PIL import Image as PILImage

        box = random_crop_box(image.size, generator)
        crop = image.resize((self.size, self.size), PILImage.Resampling.BILINEAR, box=box)
        if float(torch.rand((), generator=generator)) < 0.5:
            crop = crop.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT)
        return self.normalised(crop)

    def evaluation(self, image: Image) -> torch.Tensor:
        """Resize (shorter side size / 0.875) and center crop to ``size``."""
        from PIL import Image as PILImage

        width, height = image.size
        short = max(self.size, round(self.size / EVAL_CROP_FRACTION))
        scale = short / min(width, height)
        resized = image.resize(
            (max(self.size, round(width * scale)), max(self.size, round(height * scale))),
            PILImage.Resampling.BILINEAR,
        )
        left = (resized.width - self.size) // 2
        top = (resized.height - self.size) // 2
        return self.normalised(resized.crop((left, top, left + self.size, top + self.size)))

    def normalised(self, image: Image) -> torch.Tensor:
        """``[3, H, W]`` float32: (pixel / 255 - mean) / std per channel."""
        data = torch.frombuffer(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
        pixels = data.view(image.height, image.width, 3).permute(2, 0, 1).float() / 255.0
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (pixels - mean) / std


def random_crop_box(
    size: tuple[int, int], generator: torch.Generator | None = None
) -> tuple[float, float, float, float]:
    """A crop (left, top, right, bottom) of ``CROP_SCALE`` of the area at an aspect ratio
    in ``CROP_RATIO`` (log-uniform), inside an image of ``size`` (width, height); the
    largest centred crop of an allowed ratio when ten draws do not fit."""
    width, height = size
    area = width * height
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(10):
        draws = torch.rand(4, generator=generator).tolist()
        target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * draws[0])
        ratio = math.exp(log_low + (log_high - log_low) * draws[1])
        w = math.sqrt(target * ratio)
        h = math.sqrt(target / ratio)
        if 0 < w <= width and 0 < h <= height:
            left = (width - w) * draws[2]
            top = (height - h) * draws[3]
            return (left, top, left + w, top + h)
    ratio = min(max(width / height, CROP_RATIO[0]), CROP_RATIO[1])
    w, h = (width, width / ratio) if width / height <= ratio else (height * ratio, height)
    w, h = min(w, width), min(h, height)
    return ((width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2)
