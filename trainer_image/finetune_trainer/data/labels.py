"""The label vocabulary of a classification dataset: which class gets which id.

Ids must be the same on every rank, every retry and every rerun on the same data, and
the published model's ``id2label`` must say what each logit means. So the vocabulary
is derived from the training set alone, sorted: numerically when every label is an
integer (``2`` before ``10``), otherwise as strings. Labels are named by their string
form, so the integer ``1`` from a JSON file and the text ``"1"`` from a CSV file are
the same class. A validation label the training set never shows has no logit and is
reported rather than silently mapped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property

from finetune_trainer.data.formats import Label
from finetune_trainer.errors import DataError


def label_name(label: Label) -> str:
    return str(label)


def _sort_key(names: set[str]) -> list[str]:
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


@dataclass(frozen=True)
class LabelVocabulary:
    """Class names in id order: ``names[i]`` is the class of logit ``i``."""

    names: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: Iterable[Label]) -> LabelVocabulary:
        names = {label_name(label) for label in labels}
        if len(names) < 2:
            found = ", ".join(sorted(names)) or "none"
            raise DataError(
                f"dataset.train: a classifier needs at least 2 classes; the labels found are: "
                f"{found}; check dataset.columns.label"
            )
        return cls(tuple(_sort_key(names)))

    def __len__(self) -> int:
        return len(self.names)

    @cached_property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.names))

    def id_of(self, label: Label, where: str) -> int:
        name = label_name(label)
        try:
            return self.label2id[name]
        except KeyError:
            raise DataError(
                f"{where}: label {name!r} does not occur in the training data, so the "
                f"classifier has no class for it (classes: {', '.join(self.names)}); fix the "
                "label or add training rows with it"
            ) from None
