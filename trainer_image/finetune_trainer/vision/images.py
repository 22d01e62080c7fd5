"""Reading an image dataset: a folder of class folders, or a manifest of paths and labels.

Every image is opened and decoded once here, before any model loads, so a corrupt or
mislabelled file stops the run in its first seconds with its path, not at the step that
meets it an hour later. The bytes read are digested too: the run's checkpoints belong to
the images' content (a folder rewritten in place is another run).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from finetune_api.config import ColumnMapping
from finetune_trainer.data.loading import read_rows
from finetune_trainer.errors import DataError

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
"""The files an image folder's class folders may hold (PIL decodes each)."""


@dataclass(frozen=True)
class ImageRecord:
    """One image and its class, with where it was listed (for messages)."""

    path: Path
    label: str
    where: str
    digest: str = ""
    """sha256 of the file's bytes (filled by :func:`verified`)."""


def open_rgb(path: Path | str, where: str) -> Image:
    """The image at ``path`` decoded as RGB (a PIL image), or a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{where}: {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"{where}: {path} is not a readable image ({exc}); replace or remove the file"
        ) from None


def verified(record: ImageRecord) -> ImageRecord:
    """``record`` with its content digest, once the file decodes as an image."""
    open_rgb(record.path, record.where)
    digest = hashlib.sha256(record.path.read_bytes()).hexdigest()[:16]
    return ImageRecord(record.path, record.label, record.where, digest)


def read_image_folder(root: Path, label: str) -> list[ImageRecord]:
    """Every image of ``root``'s class folders (sorted, so the order is the same on
    every machine), its folder's name as its label. A file beside the class folders, a
    file of another type inside one, or a class folder without images is refused: each
    is a dataset mistake that would silently change what the classifier learns."""
    if not root.is_dir():
        raise DataError(f"{label}: {root} is not a folder (format image-folder reads a folder)")
    classes = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    stray = [p.name for p in classes if not p.is_dir()]
    if stray:
        raise DataError(
            f"{label}: {root} holds files beside its class folders ({', '.join(stray[:3])}); "
            "format image-folder reads one sub-folder of images per class"
        )
    if len(classes) < 2:
        raise DataError(
            f"{label}: {root} has {len(classes)} class folder(s); a classifier needs at "
            "least 2 (one sub-folder of images per class)"
        )
    records: list[ImageRecord] = []
    for folder in classes:
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DataError(f"{label}: class folder {folder} is empty; add its images or remove it")
        for path in files:
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise DataError(
                    f"{label}: {path} is not an image file (expected "
                    f"{', '.join(IMAGE_SUFFIXES)}); remove it from the class folder"
                )
            records.append(ImageRecord(path, folder.name, str(path.relative_to(root))))
    return records


def read_image_manifest(
    path: Path, suffix: str, columns: ColumnMapping, label: str
) -> list[ImageRecord]:
    """Rows of ``path`` (.jsonl, .json, .csv or .parquet) with the image's path in
    ``columns.image`` (relative to the manifest's folder, or absolute) and its class in
    ``columns.label``."""
    records = []
    for row in read_rows(path, suffix, label):
        where = f"{label}: {row.where}"
        image, klass = row.data.get(columns.image), row.data.get(columns.label)
        if not isinstance(image, str) or not image:
            raise DataError(
                f"{where}: column {columns.image!r} (dataset.columns.image) must be an "
                f"image path, got {image!r}"
            )
        if isinstance(klass, bool) or not isinstance(klass, str | int) or klass == "":
            raise DataError(
                f"{where}: column {columns.label!r} (dataset.columns.label) must be a class "
                f"name or number, got {klass!r}"
            )
        file = Path(image) if Path(image).is_absolute() else path.parent / image
        if file.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{where}: {image} is not an image file (expected {', '.join(IMAGE_SUFFIXES)})"
            )
        records.append(ImageRecord(file, str(klass), where))
    return records
