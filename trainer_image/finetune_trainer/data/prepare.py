"""From dataset URIs to tokenized train and validation sets, with a report of counts.

This is the one place that reads data for a run. For each file (``dataset.train``,
``dataset.validation`` or each ``dataset.mixture`` source) it resolves the URI through
the storage registry, converts rows by format, drops empty rows and exact duplicates
(``data.cleaning``), and tokenizes, through the tokenization cache (``data.cache``).
Then it splits off validation when no file is given (seeded, so every rank and every
retry gets the same split; per source for a mixture), drops or counts examples longer
than ``maxSeqLength`` (``dataset.overlong``) and examples with nothing to learn, mixes
the sources by weight (``data.mixture``), assigns class ids for classification
(``data.labels``), numbers the prompts of the prompts format (each prompt's ``row`` in
its list, with its reference answer) and packs (``data.packing``) when asked. Every
count goes into the run's metrics (``DataReport``), on a cache hit as on a miss.

Preference pairs and prompts go through the same steps as every other example: a pair
is one example (one row of the report), dropped as overlong when either sequence is cut
under ``dataset.overlong: drop``, and its validation sample is the prompt with the
chosen answer as the reference; a prompt's sample has its reference answer, when given.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic.alias_generators import to_camel

from finetune_api.config import ColumnMapping, DatasetSpec
from finetune_api.uri import DATA_SUFFIXES, Role, data_suffix
from finetune_trainer.data import cache
from finetune_trainer.data.cleaning import CleanCounts, clean
from finetune_trainer.data.formats import Example, to_examples
from finetune_trainer.data.labels import LabelVocabulary
from finetune_trainer.data.loading import read_rows
from finetune_trainer.data.mixture import mixture_plan
from finetune_trainer.data.packing import pack_examples
from finetune_trainer.data.tokenize import (
    LossOn,
    PromptExample,
    TemplateError,
    TokenizedExample,
    generation_prompt_ids,
    template_problem,
    tokenize_example,
)
from finetune_trainer.errors import ConfigError, DataError
from finetune_trainer.storage.backends import Access, backend_for

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class EvalSample:
    """A validation prompt and the answer the model should give."""

    prompt_ids: list[int]
    answer: str


@dataclass
class DataReport:
    """Counts for metrics.json ``data``. Row counts are examples of the files, each once
    (a mixture's repeats are not counted again); ``train_rows`` and ``validation_rows``
    are what training and evaluation use, after every drop and the mixing."""

    rows_read: int = 0
    dropped_empty: int = 0
    dropped_duplicates: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_labels: int = 0
    train_rows: int = 0
    validation_rows: int = 0
    train_tokens: int = 0
    trained_tokens: int = 0
    packed_sequences: int = 0
    """Sequences after packing; 0 when training.packing is off."""
    classes: int = 0
    """Classification: the number of labels (the classifier's outputs)."""
    files_tokenized: int = 0
    files_from_cache: int = 0
    mixture: list[dict[str, Any]] = field(default_factory=list)
    """Per mixture source: its URI, weight, usable training rows and rows sampled."""

    def as_dict(self) -> dict[str, Any]:
        """The counts under camelCase names, like every other key of metrics.json."""
        out = {to_camel(k): v for k, v in self.__dict__.items()}
        if self.mixture:
            out["mixture"] = [{to_camel(k): v for k, v in m.items()} for m in self.mixture]
        else:
            del out["mixture"]
        return out


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    validation: list[TokenizedExample]
    eval_samples: list[EvalSample]
    report: DataReport = field(default_factory=DataReport)
    labels: LabelVocabulary | None = None
    """Classification: class names in id order (``label2id``/``id2label`` for the head)."""


@dataclass(frozen=True)
class TokenizeSettings:
    """Everything besides the file and the tokenizer that decides the tokens."""

    max_length: int
    loss_on: LossOn = "completion"
    task: str = "causal-lm"
    deduplicate: bool = True

    def cache_settings(self, fmt: str, columns: ColumnMapping) -> dict[str, Any]:
        return {
            "format": fmt,
            "columns": columns.model_dump(mode="json"),
            "max_length": self.max_length,
            "loss_on": self.loss_on,
            "task": self.task,
            "deduplicate": self.deduplicate,
        }


@dataclass(frozen=True)
class _Item:
    """One usable example: what it says, its tokens, and where it came from."""

    example: Example
    tokens: TokenizedExample
    where: str


@dataclass
class _Drops:
    """Examples of one file left out after tokenization, by reason."""

    overlong: int = 0
    no_labels: int = 0
    truncated: int = 0

    def add_to(self, report: DataReport) -> None:
        report.dropped_overlong += self.overlong
        report.dropped_no_labels += self.no_labels
        report.truncated += self.truncated


def _rows(n: int) -> str:
    return f"{n} row" if n == 1 else f"{n} rows"


@dataclass
class _Source:
    """One file's examples after cleaning, and their tokens (same order)."""

    label: str
    """The setting and the URI as the user wrote it: ``dataset.train (s3://b/t.jsonl)``."""
    examples: list[Example]
    where: list[str]
    """Each example's location in the file (``line 3``), for messages."""
    tokens: list[TokenizedExample]
    read: int
    cleaned: CleanCounts

    def item(self, i: int) -> _Item:
        return _Item(self.examples[i], self.tokens[i], f"{self.label}: {self.where[i]}")

    def why(self, usable: int, held_out: int = 0, drops: _Drops | None = None) -> str:
        """How ``read`` rows became ``usable``, every reason with its count, so a file
        that ends up too small says what to fix."""
        drops = drops or _Drops()
        reasons = [
            (self.cleaned.duplicates, "dropped as exact duplicates"),
            (self.cleaned.empty, "dropped as empty"),
            (held_out, "held out for validation"),
            (drops.overlong, "dropped as longer than training.maxSeqLength"),
            (drops.no_labels, "dropped with nothing to learn within training.maxSeqLength"),
        ]
        parts = [f"{_rows(self.read)} read"]
        parts += [f"{count} {reason}" for count, reason in reasons if count]
        return f"{', '.join(parts)}: {usable} usable {'row' if usable == 1 else 'rows'}"


class _Reader:
    """Reads files into tokenized sources, counting into one report."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        settings: TokenizeSettings,
        report: DataReport,
        *,
        use_cache: bool,
        access: Access | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.access = access or Access()
        self.settings = settings
        self.report = report
        self.use_cache = use_cache
        self._fingerprint: str | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = cache.tokenizer_fingerprint(self.tokenizer)
        return self._fingerprint

    def read(self, uri: str, fmt: str, columns: ColumnMapping, label: str) -> _Source:
        path, suffix = _local_file(uri, label, self.access)
        file_label = f"{label} ({uri})"
        rows = read_rows(path, suffix, file_label)
        examples = to_examples(rows, fmt, columns, file_label)
        kept, counts = clean(examples, deduplicate=self.settings.deduplicate)
        self.report.rows_read += len(examples)
        self.report.dropped_empty += counts.empty
        self.report.dropped_duplicates += counts.duplicates
        examples = [examples[i] for i in kept]
        where = [rows[i].where for i in kept]
        tokens = self._tokens(path, fmt, columns, examples, where, file_label)
        return _Source(file_label, examples, where, tokens, len(rows), counts)

    def _tokens(
        self,
        path: Path,
        fmt: str,
        columns: ColumnMapping,
        examples: list[Example],
        where: list[str],
        label: str,
    ) -> list[TokenizedExample]:
        key = None
        if self.use_cache:
            settings = self.settings.cache_settings(fmt, columns)
            key = cache.cache_key(cache.file_digest(path), self.fingerprint(), settings)
            cached = cache.load(path, key, len(examples))
            if cached is not None:
                self.report.files_from_cache += 1
                return cached
        tokens = []
        for example, place in zip(examples, where, strict=True):
            try:
                tokens.append(
                    tokenize_example(
                        self.tokenizer,
                        example,
                        self.settings.max_length,
                        loss_on=self.settings.loss_on,
                    )
                )
            except TemplateError as exc:
                raise _template_failure(self.tokenizer, f"{label}: {place}", exc) from None
        self.report.files_tokenized += 1
        if key is not None:
            cache.store(path, key, tokens)
        return tokens


def _template_failure(
    tokenizer: PreTrainedTokenizerBase, where: str, exc: TemplateError
) -> ConfigError | DataError:
    """A chat template that failed on the row at ``where``: the row's fault (exit 3,
    naming it) when the template renders a plain user/assistant conversation, else the
    template's, which no row can fix: a configuration error (exit 2) that names the fix."""
    problem = template_problem(tokenizer)
    if problem is not None:
        return ConfigError(
            f"the model's chat template cannot be used for training: on a plain user/assistant "
            f"conversation, {problem}; use a model (or a tokenizer_config.json) with a working "
            "chat_template, or dataset.format: text"
        )
    return DataError(f"{where}: {exc}")


def _local_file(uri: str, label: str, access: Access) -> tuple[Path, str]:
    """The file behind ``uri`` on this machine (through its storage backend, downloaded
    into the cache for remote schemes) and its type.

    A whole Hub dataset repository has no suffix in its URI; the file found in it says.
    """
    backend, parsed = backend_for(uri, Role.DATASET)
    suffix = data_suffix(parsed)
    path = backend.local_file(parsed, access)
    if suffix is None:
        suffix = path.suffix.lower()
        if suffix not in DATA_SUFFIXES:
            raise DataError(f"{label}: {uri} resolved to {path.name}, not a data file")
    return path, suffix


def split_indices(
    n: int, fraction: float, seed: int, label: str, why: str | None = None
) -> tuple[list[int], list[int]]:
    """A seeded random split of ``range(n)``; at least one index on each side, each side
    in the original order. ``why`` says how the file came to ``n`` rows."""
    if n < 2:
        counted = why or f"{_rows(n)} usable"
        raise DataError(
            f"{label}: {counted}; at least 2 are needed to split off validation; "
            "add rows or set dataset.validation"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(n * fraction)), n - 1)
    held = set(order[:n_val])
    return [i for i in range(n) if i not in held], sorted(held)


def _usable(
    source: _Source, indices: list[int], overlong: str, report: DataReport
) -> tuple[list[_Item], _Drops]:
    """The examples at ``indices`` that train something, and those that do not, counted
    (into ``report`` too)."""
    items, drops = [], _Drops()
    for i in indices:
        item = source.item(i)
        if item.tokens.truncated:
            if overlong == "drop":
                drops.overlong += 1
                continue
            drops.truncated += 1
        if not (item.example.is_classification or item.tokens.has_target):
            # Nothing left to learn, typically an answer cut off by maxSeqLength.
            drops.no_labels += 1
            continue
        items.append(item)
    drops.add_to(report)
    return items, drops


def _nothing_to_learn(source: _Source, held_out: int, drops: _Drops) -> DataError:
    return DataError(
        f"{source.label}: no row has anything to learn ({source.why(0, held_out, drops)}); "
        "check the format and columns, or raise training.maxSeqLength"
    )


def _split(source: _Source, spec: DatasetSpec, seed: int) -> tuple[list[int], list[int]]:
    n = len(source.examples)
    return split_indices(
        n, spec.effective_validation_split, seed, source.label, source.why(n) if n < 2 else None
    )


def _round_robin(parts: list[list[_Item]]) -> list[_Item]:
    """Interleaved, so the first exact-match samples come from every source."""
    out = []
    for k in range(max((len(p) for p in parts), default=0)):
        out += [p[k] for p in parts if k < len(p)]
    return out


def _single(
    reader: _Reader, spec: DatasetSpec, seed: int, report: DataReport
) -> tuple[list[_Item], list[_Item]]:
    assert spec.train is not None
    source = reader.read(spec.train, spec.format, spec.columns, "dataset.train")
    if spec.validation is not None:
        held_out = reader.read(spec.validation, spec.format, spec.columns, "dataset.validation")
        train_idx, val_idx = list(range(len(source.examples))), list[int]()
        validation, _ = _usable(
            held_out, list(range(len(held_out.examples))), spec.overlong, report
        )
    else:
        train_idx, val_idx = _split(source, spec, seed)
        validation, _ = _usable(source, val_idx, spec.overlong, report)
    train, drops = _usable(source, train_idx, spec.overlong, report)
    if not train:
        raise _nothing_to_learn(source, len(val_idx), drops)
    return train, validation


def _mixture(
    reader: _Reader, spec: DatasetSpec, seed: int, report: DataReport
) -> tuple[list[_Item], list[_Item]]:
    assert spec.mixture is not None
    parts, held_parts = [], []
    for i, entry in enumerate(spec.mixture):
        label = f"dataset.mixture[{i}]"
        source = reader.read(
            entry.train, entry.format or spec.format, entry.columns or spec.columns, label
        )
        train_idx, val_idx = list(range(len(source.examples))), list[int]()
        if spec.validation is None:
            train_idx, val_idx = _split(source, spec, seed + i)
            held_parts.append(_usable(source, val_idx, spec.overlong, report)[0])
        usable, drops = _usable(source, train_idx, spec.overlong, report)
        if not usable:
            raise DataError(
                f"{source.label}: no row has anything to learn "
                f"({source.why(0, len(val_idx), drops)}); check its format and columns, "
                "or remove it from the mixture"
            )
        parts.append(usable)
    plan = mixture_plan([len(p) for p in parts], [e.weight for e in spec.mixture], seed)
    sampled = [0] * len(parts)
    for source_index, _ in plan:
        sampled[source_index] += 1
    report.mixture = [
        {"train": e.train, "weight": e.weight, "rows": len(p), "sampled": n}
        for e, p, n in zip(spec.mixture, parts, sampled, strict=True)
    ]
    train = [parts[s][j] for s, j in plan]
    if spec.validation is not None:
        held_out = reader.read(spec.validation, spec.format, spec.columns, "dataset.validation")
        indices = list(range(len(held_out.examples)))
        return train, _usable(held_out, indices, spec.overlong, report)[0]
    return train, _round_robin(held_parts)


def _numbered(items: list[_Item]) -> list[TokenizedExample]:
    """The examples in order; a prompt gets its index in the list (``row``) and its
    reference answer, which the cache does not hold (a mixture may repeat a prompt: each
    occurrence is its own row)."""
    return [
        replace(item.tokens, row=k, reference=item.example.reference)
        if isinstance(item.tokens, PromptExample)
        else item.tokens
        for k, item in enumerate(items)
    ]


def _with_class_ids(items: list[_Item], vocabulary: LabelVocabulary) -> list[TokenizedExample]:
    out = []
    for item in items:
        assert item.example.label is not None
        out.append(replace(item.tokens, label=vocabulary.id_of(item.example.label, item.where)))
    return out


def prepare_data(
    tokenizer: PreTrainedTokenizerBase,
    spec: DatasetSpec,
    *,
    max_length: int,
    seed: int,
    eval_samples: int,
    loss_on: LossOn = "completion",
    packing: bool = False,
    task: str = "causal-lm",
    use_cache: bool = True,
) -> PreparedData:
    """Train and validation examples for a run, as the spec and training options say."""
    if packing and task != "causal-lm":
        raise ConfigError("training.packing is for causal-lm; set it to false for " + task)
    report = DataReport()
    settings = TokenizeSettings(max_length, loss_on, task, spec.deduplicate)
    access = Access(spec.credentials_secret)
    reader = _Reader(tokenizer, settings, report, use_cache=use_cache, access=access)
    if spec.mixture is not None:
        train_items, validation_items = _mixture(reader, spec, seed, report)
    else:
        train_items, validation_items = _single(reader, spec, seed, report)

    vocabulary = None
    if task == "sequence-classification":
        vocabulary = LabelVocabulary.from_labels(
            i.example.label for i in train_items if i.example.label is not None
        )
        train = _with_class_ids(train_items, vocabulary)
        validation = _with_class_ids(validation_items, vocabulary)
        report.classes = len(vocabulary)
    else:
        train = _numbered(train_items)
        validation = _numbered(validation_items)

    report.train_rows, report.validation_rows = len(train), len(validation)
    report.train_tokens = sum(e.input_tokens for e in train)
    report.trained_tokens = sum(e.trained_tokens for e in train)
    if packing:
        train = list(pack_examples(train, max_length))
        report.packed_sequences = len(train)
    samples: list[EvalSample] = []
    for item in validation_items:
        if len(samples) >= eval_samples:
            break
        prompt, answer = item.example.prompt, item.example.answer
        if prompt is not None and answer is not None:
            try:
                samples.append(EvalSample(generation_prompt_ids(tokenizer, prompt), answer))
            except TemplateError as exc:
                raise _template_failure(tokenizer, item.where, exc) from None
    return PreparedData(train, validation, samples, report, vocabulary)


@dataclass(frozen=True)
class GeneralData:
    """A general dataset the run does not train on (``evaluation.retention``): its
    examples for the loss, and its rows with answers for exact match."""

    examples: list[TokenizedExample]
    samples: list[EvalSample]


def prepare_general(
    tokenizer: PreTrainedTokenizerBase,
    uri: str,
    fmt: str,
    columns: ColumnMapping,
    *,
    max_rows: int,
    max_length: int,
    eval_samples: int,
    access: Access | None = None,
    label: str = "evaluation.retention.dataset",
) -> GeneralData:
    """The first ``max_rows`` rows of ``uri`` read and tokenized like the training data
    (through the same cache), truncated to ``max_length``; a file with no row to score is
    a DataError naming ``label``, found before any model is loaded."""
    settings = TokenizeSettings(max_length, "completion", "causal-lm", deduplicate=False)
    reader = _Reader(tokenizer, settings, DataReport(), use_cache=True, access=access)
    source = reader.read(uri, fmt, columns, label)
    kept = [i for i in range(len(source.examples)) if source.tokens[i].trained_tokens > 0]
    kept = kept[:max_rows]
    if not kept:
        raise DataError(
            f"{source.label}: {source.why(0)}; it needs rows with text to score; check its "
            "format and columns (evaluation.retention.format, .columns)"
        )
    samples: list[EvalSample] = []
    for i in kept[:eval_samples]:
        prompt, answer = source.examples[i].prompt, source.examples[i].answer
        if prompt is not None and answer is not None:
            try:
                samples.append(EvalSample(generation_prompt_ids(tokenizer, prompt), answer))
            except TemplateError as exc:
                raise _template_failure(tokenizer, source.item(i).where, exc) from None
    return GeneralData([source.tokens[i] for i in kept], samples)
