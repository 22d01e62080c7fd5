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

*At scale*: nothing here holds a row per Python object. Each file is read a chunk of
:data:`CHUNK_ROWS` rows at a time (converted, cleaned with 64-bit content hashes,
tokenized by ``dataset.tokenizeProcesses`` workers, ``data.parallel``) into an Arrow
table (``data.table``), which is the cache entry; the split, the drops, the mixture and
the interleaving are numpy index arrays over the tables, and training reads a
:class:`~finetune_trainer.data.table.TableView` (memory-mapped). Only the small tasks
that need a field per example (classification's class ids, the prompts' rows and
references) become lists, after all the selection.

Preference pairs and prompts go through the same steps as every other example: a pair
is one example (one row of the report), dropped as overlong when either sequence is cut
under ``dataset.overlong: drop``, and its validation sample is the prompt with the
chosen answer as the reference; a prompt's sample has its reference answer, when given.
"""

from __future__ import annotations

import json
import logging
import random
import tempfile
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic.alias_generators import to_camel

from finetune_api.config import ColumnMapping, DatasetSpec
from finetune_api.config.data import HubDatasetOptions
from finetune_api.uri import DATA_SUFFIXES, Role, data_suffix
from finetune_trainer.data import cache
from finetune_trainer.data.cleaning import CleanCounts, Cleaner
from finetune_trainer.data.formats import Example, Label, Message, to_examples
from finetune_trainer.data.labels import LabelVocabulary
from finetune_trainer.data.loading import iter_rows
from finetune_trainer.data.mixture import mixture_plan
from finetune_trainer.data.packing import pack_bins, pack_groups
from finetune_trainer.data.parallel import Failure, default_processes, node_lock, tokenize_chunks
from finetune_trainer.data.table import ExampleTable, TableView, TableWriter
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
from finetune_trainer.storage.backends import Access, backend_for, fetch_data_files

log = logging.getLogger("finetune.trainer")

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    from transformers import PreTrainedTokenizerBase

    from finetune_trainer.storage.store import Store

    IntArray = npt.NDArray[np.int64]


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
    train: Sequence[TokenizedExample]
    """A :class:`~finetune_trainer.data.table.TableView` (memory-mapped) for language
    modelling and preference pairs; a list for the small tasks (classes, prompts)."""
    validation: Sequence[TokenizedExample]
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


CHUNK_ROWS = 2048
"""Rows converted, cleaned and tokenized at a time (a worker's unit of work)."""

_FORMAT_KIND = {"preference": "preference", "prompts": "prompt", "pairs": "pairs"}
"""The table kind of each format's examples (every other format: ``lm``)."""


def _extra_columns() -> dict[str, Any]:
    """What the preparation needs of each row besides its tokens, stored beside them."""
    import pyarrow as pa

    return {
        "where": pa.string(),
        "label": pa.string(),
        "reference": pa.string(),
        "prompt": pa.string(),
        "answer": pa.string(),
        "has_target": pa.bool_(),
        "trained_tokens": pa.int32(),
    }


def _extra_values(
    examples: list[Example], where: list[str], tokens: list[TokenizedExample]
) -> dict[str, list[Any]]:
    def dumped(value: object) -> str | None:
        return None if value is None else json.dumps(value, ensure_ascii=False)

    return {
        "where": where,
        "label": [dumped(e.label) for e in examples],
        "reference": [e.reference for e in examples],
        "prompt": [dumped(e.prompt) for e in examples],
        "answer": [e.answer for e in examples],
        # A classification row always teaches its class; others need labelled tokens.
        "has_target": [
            e.is_classification or t.has_target for e, t in zip(examples, tokens, strict=True)
        ],
        "trained_tokens": [t.trained_tokens for t in tokens],
    }


@dataclass(frozen=True)
class TokenizeWith:
    """``tokenize_example`` with a run's tokenizer and settings, as one picklable value:
    what each tokenizing worker process receives once (``data.parallel``)."""

    tokenizer: PreTrainedTokenizerBase
    max_length: int
    loss_on: LossOn

    def __call__(self, example: Example) -> TokenizedExample:
        return tokenize_example(self.tokenizer, example, self.max_length, loss_on=self.loss_on)


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
    """One file's examples after cleaning, tokenized, in a table (same order)."""

    label: str
    """The setting and the URI as the user wrote it: ``dataset.train (s3://b/t.jsonl)``."""
    table: ExampleTable
    read: int
    cleaned: CleanCounts

    def __len__(self) -> int:
        return len(self.table)

    def where(self, i: int) -> str:
        """Example ``i``'s location for messages: ``dataset.train (...): line 3``."""
        return f"{self.label}: {self.table.text('where', i)}"

    def prompt(self, i: int) -> tuple[Message, ...] | None:
        stored = self.table.text("prompt", i)
        return None if stored is None else tuple(json.loads(stored))

    def label_of(self, i: int) -> Label | None:
        stored = self.table.text("label", i)
        label: Label | None = None if stored is None else json.loads(stored)
        return label

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


@dataclass
class _Selection:
    """Rows of several sources in an order: ``indices[k]`` of ``sources[origins[k]]``."""

    sources: list[_Source]
    indices: IntArray
    origins: IntArray

    @classmethod
    def of(cls, source: _Source, indices: IntArray) -> _Selection:
        import numpy as np

        return cls([source], indices, np.zeros(len(indices), dtype=np.int64))

    def __len__(self) -> int:
        return len(self.indices)

    def rows(self) -> Iterator[tuple[_Source, int]]:
        for origin, index in zip(self.origins.tolist(), self.indices.tolist(), strict=True):
            yield self.sources[origin], index

    def view(self) -> TableView:
        tables = [s.table for s in self.sources]
        if len(tables) == 1:
            return TableView(tables[0], self.indices)
        return TableView(tables, self.indices, self.origins)


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
        store: Store | None = None,
        processes: int | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.access = access or Access()
        self.settings = settings
        self.report = report
        self.use_cache = use_cache
        self.store = store
        self.processes = processes or default_processes()
        self._fingerprint: str | None = None
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = cache.tokenizer_fingerprint(self.tokenizer)
        return self._fingerprint

    def read(
        self,
        uri: str,
        fmt: str,
        columns: ColumnMapping,
        label: str,
        hub: HubDatasetOptions | None = None,
        split: str | None = None,
    ) -> _Source:
        files = _local_files(uri, label, self.access, hub, split)
        file_label = f"{label} ({uri})"
        if not self.use_cache:
            return self._tokenized(files, fmt, columns, file_label, self._scratch_path(files[0]))
        settings = self.settings.cache_settings(fmt, columns)
        paths = [path for path, _ in files]
        key = cache.cache_key(cache.files_digest(paths), self.fingerprint(), settings)
        entry = cache.entry_path(paths[0], key)
        # Once per node: the first rank tokenizes, the others wait here, then map it.
        with node_lock(cache.lock_path(entry)):
            opened = cache.open_entry(entry, key)
            if opened is None and self.store is not None and cache.download(self.store, entry, key):
                opened = cache.open_entry(entry, key)
            if opened is not None:
                table, info = opened
                self.report.files_from_cache += 1
                counts = CleanCounts(info.empty, info.duplicates)
                self._count(info.read, counts)
                return _Source(file_label, table, info.read, counts)
            source = self._tokenized(files, fmt, columns, file_label, entry)
            if source.table.path == entry:
                written = cache.complete(
                    entry,
                    key,
                    rows=len(source.table),
                    read=source.read,
                    empty=source.cleaned.empty,
                    duplicates=source.cleaned.duplicates,
                )
                if written is not None and self.store is not None:
                    cache.upload(self.store, entry, written)
            return source

    def _scratch_path(self, file: tuple[Path, str]) -> Path:
        """Where a table nobody caches goes: a private directory removed with the reader
        (the mapped file stays readable after its name is gone)."""
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="finetune-tables-")
        return Path(self._scratch.name) / f"{file[0].name}.{id(file)}.arrow"

    def _count(self, read: int, counts: CleanCounts) -> None:
        self.report.rows_read += read
        self.report.dropped_empty += counts.empty
        self.report.dropped_duplicates += counts.duplicates

    def _chunks(
        self,
        files: list[tuple[Path, str]],
        fmt: str,
        columns: ColumnMapping,
        label: str,
        cleaner: Cleaner,
    ) -> Iterator[tuple[list[Example], list[str], int]]:
        """The files' rows in chunks: converted, cleaned, with their locations, and how
        many rows each chunk read."""
        several = len(files) > 1
        for path, suffix in files:
            file_label = f"{label[:-1]}: {path.name})" if several else label
            rows = iter_rows(path, suffix, file_label)
            while chunk := list(islice(rows, CHUNK_ROWS)):
                examples = to_examples(chunk, fmt, columns, file_label)
                kept = cleaner.keep(examples)
                where = [chunk[i].where for i in kept]
                if several:
                    where = [f"{path.name} {w}" for w in where]
                yield [examples[i] for i in kept], where, len(chunk)

    def _tokenized(
        self,
        files: list[tuple[Path, str]],
        fmt: str,
        columns: ColumnMapping,
        label: str,
        target: Path,
    ) -> _Source:
        """Read, clean and tokenize the files into a table at ``target`` (or, when that
        cannot be written, a private scratch table)."""
        writer = cache.new_writer(target, _FORMAT_KIND.get(fmt, "lm"), _extra_columns())
        if writer is None:
            target = self._scratch_path(files[0])
            writer = TableWriter(target, _FORMAT_KIND.get(fmt, "lm"), _extra_columns())
        cleaner = Cleaner(deduplicate=self.settings.deduplicate)
        read = [0]
        pending: deque[tuple[list[Example], list[str]]] = deque()

        def examples_only() -> Iterator[list[Example]]:
            for examples, where, n in self._chunks(files, fmt, columns, label, cleaner):
                read[0] += n
                pending.append((examples, where))
                yield examples

        tokenize = TokenizeWith(self.tokenizer, self.settings.max_length, self.settings.loss_on)
        try:
            for result in tokenize_chunks(examples_only(), tokenize, self.processes):
                examples, where = pending.popleft()
                if isinstance(result, Failure):
                    exc = TemplateError(result.message)
                    raise template_failure(
                        self.tokenizer, f"{label}: {where[result.position]}", exc
                    ) from None
                writer.write(result, _extra_values(examples, where, result))
        except BaseException:
            writer.abort()
            raise
        try:
            table = ExampleTable(writer.close())
        except OSError as exc:  # the cache's name is taken (a directory...): use it unnamed
            log.warning("tokenization cache: cannot write %s (%s)", target, exc)
            table = ExampleTable(writer.temporary)
            _ = table.content_digest  # read while the file has a name
            writer.temporary.unlink(missing_ok=True)  # the mapping keeps the content
        # Read now, while the file has a name (a scratch table's goes with the reader).
        _ = table.content_digest
        self.report.files_tokenized += 1
        self._count(read[0], cleaner.counts)
        return _Source(label, table, read[0], cleaner.counts)


def template_failure(
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


def _local_files(
    uri: str, label: str, access: Access, hub: HubDatasetOptions | None, split: str | None
) -> list[tuple[Path, str]]:
    """The files behind ``uri`` on this machine, in read order (through the storage
    backend, downloaded into the cache for remote schemes), each with its type.

    A whole Hub dataset repository has no suffix in its URI; the files found in it say.
    """
    _, parsed = backend_for(uri, Role.DATASET)
    suffix = data_suffix(parsed)
    paths = fetch_data_files(uri, Role.DATASET, access, hub, split)
    out = []
    for path in paths:
        found = suffix if suffix is not None and len(paths) == 1 else path.suffix.lower()
        if found not in DATA_SUFFIXES:
            raise DataError(f"{label}: {uri} resolved to {path.name}, not a data file")
        out.append((path, found))
    return out


def _shuffled(n: int, seed: int) -> IntArray:
    """``random.Random(seed).shuffle(list(range(n)))`` as a numpy array, draw for draw
    (the same Fisher-Yates steps on the same generator), without n Python ints."""
    import numpy as np

    order = np.arange(n, dtype=np.int64)
    # What Random.shuffle itself draws with (CPython's, private but stable since 3.2).
    randbelow = random.Random(seed)._randbelow  # type: ignore[attr-defined]
    for i in range(n - 1, 0, -1):
        j = randbelow(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def _split_arrays(
    n: int, fraction: float, seed: int, label: str, why: str | None = None
) -> tuple[IntArray, IntArray]:
    """:func:`split_indices` as index arrays."""
    import numpy as np

    if n < 2:
        counted = why or f"{_rows(n)} usable"
        raise DataError(
            f"{label}: {counted}; at least 2 are needed to split off validation; "
            "add rows or set dataset.validation"
        )
    order = _shuffled(n, seed)
    n_val = min(max(1, round(n * fraction)), n - 1)
    held = np.zeros(n, dtype=bool)
    held[order[:n_val]] = True
    every = np.arange(n, dtype=np.int64)
    return every[~held], every[held]


def split_indices(
    n: int, fraction: float, seed: int, label: str, why: str | None = None
) -> tuple[list[int], list[int]]:
    """A seeded random split of ``range(n)``; at least one index on each side, each side
    in the original order. ``why`` says how the file came to ``n`` rows."""
    train, held = _split_arrays(n, fraction, seed, label, why)
    return train.tolist(), held.tolist()


def _usable(
    source: _Source, indices: IntArray, overlong: str, report: DataReport
) -> tuple[IntArray, _Drops]:
    """The examples at ``indices`` that train something, and those that do not, counted
    (into ``report`` too); read from the table's columns, no example built."""
    import numpy as np

    truncated = source.table.numbers("truncated").astype(bool)[indices]
    has_target = source.table.numbers("has_target").astype(bool)[indices]
    drops = _Drops()
    if overlong == "drop":
        drops.overlong = int(truncated.sum())
        kept = ~truncated
    else:
        drops.truncated = int(truncated.sum())
        kept = np.ones(len(indices), dtype=bool)
    # Nothing left to learn, typically an answer cut off by maxSeqLength.
    drops.no_labels = int((kept & ~has_target).sum())
    drops.add_to(report)
    return indices[kept & has_target], drops


def _nothing_to_learn(source: _Source, held_out: int, drops: _Drops) -> DataError:
    return DataError(
        f"{source.label}: no row has anything to learn ({source.why(0, held_out, drops)}); "
        "check the format and columns, or raise training.maxSeqLength"
    )


def _split(source: _Source, spec: DatasetSpec, seed: int) -> tuple[IntArray, IntArray]:
    n = len(source)
    return _split_arrays(
        n, spec.effective_validation_split, seed, source.label, source.why(n) if n < 2 else None
    )


def _every(source: _Source) -> IntArray:
    import numpy as np

    return np.arange(len(source), dtype=np.int64)


def _round_robin(parts: list[tuple[_Source, IntArray]]) -> _Selection:
    """Interleaved, so the first exact-match samples come from every source."""
    import numpy as np

    rank = np.concatenate(
        [np.arange(len(idx), dtype=np.int64) for _, idx in parts] or [np.zeros(0, np.int64)]
    )
    origin = np.concatenate(
        [np.full(len(idx), k, dtype=np.int64) for k, (_, idx) in enumerate(parts)]
        or [np.zeros(0, np.int64)]
    )
    indices = np.concatenate([idx for _, idx in parts] or [np.zeros(0, np.int64)])
    order = np.lexsort((origin, rank))
    return _Selection([s for s, _ in parts], indices[order], origin[order])


def _held_out(reader: _Reader, spec: DatasetSpec, report: DataReport) -> _Selection | None:
    """The validation rows of a file or of a Hub dataset's held-out split; None when
    validation is split off the training rows."""
    if spec.validation is not None:
        source = reader.read(spec.validation, spec.format, spec.columns, "dataset.validation")
    elif spec.hub is not None and spec.hub.validation is not None and spec.train is not None:
        source = reader.read(
            spec.train,
            spec.format,
            spec.columns,
            "dataset.hub.validation",
            spec.hub,
            spec.hub.validation,
        )
    else:
        return None
    return _Selection.of(source, _usable(source, _every(source), spec.overlong, report)[0])


def _single(
    reader: _Reader, spec: DatasetSpec, seed: int, report: DataReport
) -> tuple[_Selection, _Selection]:
    import numpy as np

    assert spec.train is not None
    source = reader.read(spec.train, spec.format, spec.columns, "dataset.train", spec.hub)
    validation = _held_out(reader, spec, report)
    if validation is not None:
        train_idx, val_idx = _every(source), np.zeros(0, dtype=np.int64)
    else:
        train_idx, val_idx = _split(source, spec, seed)
        validation = _Selection.of(source, _usable(source, val_idx, spec.overlong, report)[0])
    train, drops = _usable(source, train_idx, spec.overlong, report)
    if not len(train):
        raise _nothing_to_learn(source, len(val_idx), drops)
    return _Selection.of(source, train), validation


def _mixture(
    reader: _Reader, spec: DatasetSpec, seed: int, report: DataReport
) -> tuple[_Selection, _Selection]:
    import numpy as np

    assert spec.mixture is not None
    parts: list[tuple[_Source, IntArray]] = []
    held_parts: list[tuple[_Source, IntArray]] = []
    for i, entry in enumerate(spec.mixture):
        label = f"dataset.mixture[{i}]"
        source = reader.read(
            entry.train, entry.format or spec.format, entry.columns or spec.columns, label
        )
        train_idx, val_idx = _every(source), np.zeros(0, dtype=np.int64)
        if spec.validation is None:
            train_idx, val_idx = _split(source, spec, seed + i)
            held_parts.append((source, _usable(source, val_idx, spec.overlong, report)[0]))
        usable, drops = _usable(source, train_idx, spec.overlong, report)
        if not len(usable):
            raise DataError(
                f"{source.label}: no row has anything to learn "
                f"({source.why(0, len(val_idx), drops)}); check its format and columns, "
                "or remove it from the mixture"
            )
        parts.append((source, usable))
    sizes = [len(p) for _, p in parts]
    plan = np.array(mixture_plan(sizes, [e.weight for e in spec.mixture], seed), dtype=np.int64)
    plan = plan.reshape(-1, 2)
    origins = plan[:, 0]
    indices = np.zeros(len(plan), dtype=np.int64)
    for k, (_, usable) in enumerate(parts):
        mask = origins == k
        indices[mask] = usable[plan[mask, 1]]
    sampled = np.bincount(origins, minlength=len(parts)).tolist()
    report.mixture = [
        {"train": e.train, "weight": e.weight, "rows": n_rows, "sampled": n}
        for e, n_rows, n in zip(spec.mixture, sizes, sampled, strict=True)
    ]
    train = _Selection([s for s, _ in parts], indices, origins)
    if spec.validation is not None:
        held_out = reader.read(spec.validation, spec.format, spec.columns, "dataset.validation")
        return train, _Selection.of(
            held_out, _usable(held_out, _every(held_out), spec.overlong, report)[0]
        )
    return train, _round_robin(held_parts)


def _numbered(selection: _Selection) -> Sequence[TokenizedExample]:
    """The examples in order; a prompt gets its index in the list (``row``) and its
    reference answer, which the table does not hold as a field (a mixture may repeat a
    prompt: each occurrence is its own row). Other kinds: the view itself, no copy."""
    view = selection.view()
    if not any(s.table.kind == "prompt" for s in selection.sources):
        return view
    out: list[TokenizedExample] = []
    for k, (source, i) in enumerate(selection.rows()):
        example = source.table[i]
        if isinstance(example, PromptExample):
            example = replace(example, row=k, reference=source.table.text("reference", i))
        out.append(example)
    return out


def _with_class_ids(selection: _Selection, vocabulary: LabelVocabulary) -> list[TokenizedExample]:
    out = []
    for source, i in selection.rows():
        label = source.label_of(i)
        assert label is not None
        out.append(replace(source.table[i], label=vocabulary.id_of(label, source.where(i))))
    return out


def _eval_samples(
    tokenizer: PreTrainedTokenizerBase, selection: _Selection, limit: int
) -> list[EvalSample]:
    """The first ``limit`` validation rows with a prompt and an answer, as samples."""
    samples: list[EvalSample] = []
    for source, i in selection.rows():
        if len(samples) >= limit:
            break
        prompt, answer = source.prompt(i), source.table.text("answer", i)
        if prompt is not None and answer is not None:
            try:
                samples.append(EvalSample(generation_prompt_ids(tokenizer, prompt), answer))
            except TemplateError as exc:
                raise template_failure(tokenizer, source.where(i), exc) from None
    return samples


def _packed(
    train: Sequence[TokenizedExample], max_length: int, reader: _Reader
) -> Sequence[TokenizedExample]:
    """The training examples packed (``data.packing``), written to their own table a
    few hundred sequences at a time."""
    lengths = getattr(train, "lengths", None)
    bins = pack_bins(
        [len(e.input_ids) for e in train] if lengths is None else lengths.tolist(), max_length
    )
    path = reader._scratch_path((Path("packed"), ""))
    with TableWriter(path, "packed") as writer:
        for start in range(0, len(bins), 256):
            writer.write(pack_groups(train, bins[start : start + 256]))
    packed = ExampleTable(path)
    _ = packed.content_digest  # read while the file has a name
    return packed


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
    store: Store | None = None,
) -> PreparedData:
    """Train and validation examples for a run, as the spec and training options say.

    ``store``: the run's output store, where tokenized files are kept (``data-cache/``)
    for a later pod, and looked for before tokenizing."""
    if packing and task != "causal-lm":
        raise ConfigError("training.packing is for causal-lm; set it to false for " + task)
    report = DataReport()
    settings = TokenizeSettings(max_length, loss_on, task, spec.deduplicate)
    access = Access(spec.credentials_secret)
    reader = _Reader(
        tokenizer,
        settings,
        report,
        use_cache=use_cache,
        access=access,
        store=store,
        processes=spec.tokenize_processes,
    )
    if spec.mixture is not None:
        train_rows, validation_rows = _mixture(reader, spec, seed, report)
    else:
        train_rows, validation_rows = _single(reader, spec, seed, report)

    vocabulary = None
    train: Sequence[TokenizedExample]
    validation: Sequence[TokenizedExample]
    if task == "sequence-classification":
        vocabulary = LabelVocabulary.from_labels(
            label for s, i in train_rows.rows() if (label := s.label_of(i)) is not None
        )
        train = _with_class_ids(train_rows, vocabulary)
        validation = _with_class_ids(validation_rows, vocabulary)
        report.classes = len(vocabulary)
    else:
        train = _numbered(train_rows)
        validation = _numbered(validation_rows)

    report.train_rows, report.validation_rows = len(train), len(validation)
    view = train_rows.view()
    report.train_tokens = view.input_tokens
    report.trained_tokens = view.trained_tokens
    if packing:
        train = _packed(train, max_length, reader)
        report.packed_sequences = len(train)
    samples = _eval_samples(tokenizer, validation_rows, eval_samples)
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
    import numpy as np

    settings = TokenizeSettings(max_length, "completion", "causal-lm", deduplicate=False)
    reader = _Reader(tokenizer, settings, DataReport(), use_cache=True, access=access)
    source = reader.read(uri, fmt, columns, label)
    kept = np.flatnonzero(source.table.numbers("trained_tokens") > 0)[:max_rows]
    if not len(kept):
        raise DataError(
            f"{source.label}: {source.why(0)}; it needs rows with text to score; check its "
            "format and columns (evaluation.retention.format, .columns)"
        )
    samples = _eval_samples(tokenizer, _Selection.of(source, kept), eval_samples)
    return GeneralData([source.table[i] for i in kept.tolist()], samples)
