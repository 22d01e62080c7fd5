"""From dataset URIs to tokenized train and validation sets, with a report of counts.

This is the one place that reads data for a run: it resolves URIs through the storage
registry, converts rows by format, splits off validation when no file is given
(seeded, so every rank and every retry gets the same split), tokenizes, and drops
examples with nothing to learn. The counts go into the run's metrics.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from finetune_trainer.config import DatasetSpec
from finetune_trainer.data.formats import Example, to_examples
from finetune_trainer.data.loading import read_rows
from finetune_trainer.data.tokenize import (
    TemplateError,
    TokenizedExample,
    generation_prompt_ids,
    tokenize_example,
)
from finetune_trainer.errors import DataError
from finetune_trainer.storage.backends import backend_for
from finetune_trainer.storage.uri import Role, data_suffix


@dataclass(frozen=True)
class EvalSample:
    """A validation prompt and the answer the model should give."""

    prompt_ids: list[int]
    answer: str


@dataclass
class DataReport:
    train_rows: int = 0
    validation_rows: int = 0
    truncated: int = 0
    dropped_no_labels: int = 0
    train_tokens: int = 0
    trained_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    eval_samples: list[EvalSample]
    report: DataReport = field(default_factory=DataReport)


def load_examples(uri: str, spec: DatasetSpec, label: str) -> list[Example]:
    backend, parsed = backend_for(uri, Role.DATASET)
    suffix = data_suffix(parsed)
    if suffix is None:
        raise DataError(f"{label}: {uri} has no file type this trainer can read yet")
    rows = read_rows(backend.local_file(parsed), suffix, f"{label} ({uri})")
    return to_examples(rows, spec.format, spec.columns, label)


def split_validation(
    examples: list[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """A seeded random split; at least one example on each side."""
    if len(examples) < 2:
        raise DataError(
            "dataset.train has fewer than 2 rows, too few to split off validation; "
            "add rows or set dataset.validation"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(examples) * fraction)), len(examples) - 1)
    held = set(order[:n_val])
    train = [e for i, e in enumerate(examples) if i not in held]
    validation = [e for i, e in enumerate(examples) if i in held]
    return train, validation


def _tokenize_all(
    tokenizer: Any, examples: list[Example], max_length: int, label: str, report: DataReport
) -> list[TokenizedExample]:
    out = []
    for index, example in enumerate(examples):
        try:
            tokenized = tokenize_example(tokenizer, example, max_length)
        except TemplateError as exc:
            raise DataError(f"{label} row {index}: {exc}") from None
        report.truncated += tokenized.truncated
        if tokenized.trained_tokens < 2:
            # Nothing left to learn, typically an answer cut off by maxSeqLength.
            report.dropped_no_labels += 1
            continue
        out.append(tokenized)
    return out


def prepare_data(
    tokenizer: Any, spec: DatasetSpec, *, max_length: int, seed: int, eval_samples: int
) -> PreparedData:
    train_examples = load_examples(spec.train, spec, "dataset.train")
    if spec.validation is not None:
        validation_examples = load_examples(spec.validation, spec, "dataset.validation")
    else:
        train_examples, validation_examples = split_validation(
            train_examples, spec.effective_validation_split, seed
        )
    report = DataReport(train_rows=len(train_examples), validation_rows=len(validation_examples))
    train = _tokenize_all(tokenizer, train_examples, max_length, "dataset.train", report)
    validation = _tokenize_all(
        tokenizer, validation_examples, max_length, "dataset.validation", report
    )
    if not train:
        raise DataError(
            "dataset.train: no example has anything to learn after tokenization; check the "
            "format and columns, or raise training.maxSeqLength"
        )
    report.train_tokens = sum(len(e.input_ids) for e in train)
    report.trained_tokens = sum(e.trained_tokens for e in train)
    samples = [
        EvalSample(generation_prompt_ids(tokenizer, e.prompt), e.answer)
        for e in validation_examples[:eval_samples]
        if e.prompt is not None and e.answer is not None
    ]
    return PreparedData(train, validation, samples, report)
