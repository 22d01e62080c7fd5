"""The train and validation images of a run, as examples of the loop.

The same steps as text data, where they apply: the URI resolved through its storage
backend, every row read and checked (:mod:`finetune_trainer.vision.images`), validation
split off with the seeded split of :func:`~finetune_trainer.data.prepare.split_indices`
when no validation set is given, class ids from the training labels
(:class:`~finetune_trainer.data.labels.LabelVocabulary`, as for texts), and the counts
in the run's data report.
"""

from __future__ import annotations

from finetune_api.config import DatasetSpec
from finetune_api.uri import DIRECTORY, Role, data_suffix
from finetune_trainer.data.labels import LabelVocabulary
from finetune_trainer.data.prepare import DataReport, PreparedData, split_indices
from finetune_trainer.errors import DataError
from finetune_trainer.storage.backends import Access, backend_for
from finetune_trainer.vision.examples import ImageExample
from finetune_trainer.vision.images import (
    ImageRecord,
    read_image_folder,
    read_image_manifest,
    verified,
)
from finetune_trainer.vision.transforms import ImageTransform


def read_images(uri: str, spec: DatasetSpec, label: str) -> list[ImageRecord]:
    """The images behind ``uri`` (a folder for image-folder, a file for image-manifest),
    each decoded once and digested."""
    backend, parsed = backend_for(uri, Role.DATASET)
    suffix = data_suffix(parsed)
    if spec.format == "image-folder":
        if suffix != DIRECTORY:
            raise DataError(f"{label}: format image-folder reads a folder (a URI ending in /)")
        root = backend.resolve(parsed) if hasattr(backend, "resolve") else None
        if root is None:
            raise DataError(f"{label}: {uri}: only file:// and pvc:// folders can be listed")
        records = read_image_folder(root, label)
    else:
        path = backend.local_file(parsed, Access(spec.credentials_secret))
        if suffix is None or suffix == DIRECTORY:
            suffix = path.suffix.lower()
        records = read_image_manifest(path, suffix, spec.columns, label)
    return [verified(r) for r in records]


def _examples(
    records: list[ImageRecord],
    vocabulary: LabelVocabulary,
    transform: ImageTransform,
    *,
    training: bool,
) -> list[ImageExample]:
    return [
        ImageExample(
            input_ids=[],
            labels=[],
            label=vocabulary.id_of(r.label, r.where),
            image=str(r.path),
            digest=r.digest,
            transform=transform,
            training=training,
        )
        for r in records
    ]


def prepare_images(spec: DatasetSpec, transform: ImageTransform, seed: int) -> PreparedData:
    """Training examples (augmented as ``transform`` says) and validation examples (the
    evaluation view), with class ids from the training labels."""
    assert spec.train is not None  # the contract refuses a mixture of images
    source = read_images(spec.train, spec, "dataset.train")
    report = DataReport(rows_read=len(source))
    if spec.validation is not None:
        train_records = source
        held_out = read_images(spec.validation, spec, "dataset.validation")
        report.rows_read += len(held_out)
    else:
        train_idx, val_idx = split_indices(
            len(source), spec.effective_validation_split, seed, "dataset.train"
        )
        train_records = [source[i] for i in train_idx]
        held_out = [source[i] for i in val_idx]
    vocabulary = LabelVocabulary.from_labels(r.label for r in train_records)
    train = _examples(train_records, vocabulary, transform, training=True)
    validation = _examples(held_out, vocabulary, transform, training=False)
    report.train_rows, report.validation_rows = len(train), len(validation)
    report.classes = len(vocabulary)
    return PreparedData(list(train), list(validation), [], report, vocabulary)
