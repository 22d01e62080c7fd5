"""Streaming training data (``dataset.streaming``): examples read, shuffled and
tokenized as the loop asks for them, never the whole file in memory.

A dataset bigger than the pod's memory or disk cannot be prepared up front; a stream
reads its train source row by row (through the backend's ``open_stream`` where it has
one: a local file, an S3 object's body, a Hub file; else the downloaded file) with the
prepared path's readers (:func:`~finetune_trainer.data.loading.iter_rows`: the same
rows, line numbers and messages), and turns each row into an example with the very
functions the prepared path uses (:func:`~finetune_trainer.data.formats.to_examples`,
:func:`~finetune_trainer.data.cleaning.is_empty`,
:func:`~finetune_trainer.data.tokenize.tokenize_example`, the same ``dataset.overlong``
and "nothing to learn" drops), so that with a buffer of one the stream yields exactly
the prepared examples, in file order.

Shuffling is a buffer of ``dataset.shuffleBuffer`` rows: each next row is drawn at
random from the buffer and replaced by the source's next row. The generator is seeded
by ``training.seed`` plus the pass, so every rank draws the same order and a new pass
(the source read again from its start) draws another.

Exact resume: :meth:`ExampleStream.state_dict` is everything the stream's future
depends on (the pass, the rows consumed from the source, the buffered raw rows, the
generator's state, the counts) as JSON; :meth:`ExampleStream.load_state_dict` reopens
the source, skips the consumed rows and continues with the very example the
interrupted stream would have yielded next. Checkpoints save it as ``data-stream.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from finetune_api.config import ColumnMapping
from finetune_api.uri import DATA_SUFFIXES, ParsedUri, Role, data_suffix
from finetune_trainer.data.cleaning import is_empty
from finetune_trainer.data.formats import to_examples
from finetune_trainer.data.loading import SourceRow, iter_rows
from finetune_trainer.data.prepare import template_failure
from finetune_trainer.data.tokenize import LossOn, TemplateError, TokenizedExample, tokenize_example
from finetune_trainer.errors import DataError
from finetune_trainer.storage.backends import (
    Access,
    LocalBackend,
    backend_for,
    fetch_data_files,
)
from finetune_trainer.storage.hub import HubBackend

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from finetune_api.config.data import HubDatasetOptions

STATE_VERSION = 1


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class StreamSource:
    """One train file as a stream: how to (re)open it and how to name it in messages."""

    uri: str
    label: str
    """``dataset.train (s3://b/t.jsonl)``: what every message about its rows starts with."""
    suffix: str
    open: Callable[[], BinaryIO]
    version: str
    """What the content of the source is known by (a local file's size and change time,
    else its URI): part of the run's identity, so a checkpoint resumes only its data."""
    parts: tuple[StreamPart, ...] = ()
    """A Hub dataset's split spread over several files, read one after the other (then
    ``suffix`` and ``open`` are the first's)."""


@dataclass(frozen=True)
class StreamPart:
    """One of several files of a source: its name in the repository, type and opener."""

    name: str
    suffix: str
    open: Callable[[], BinaryIO]


def _no_json(label: str) -> DataError:
    return DataError(
        f"{label}: a .json document cannot be streamed (its rows are one JSON value, "
        "read whole); convert it to JSON Lines (.jsonl, one row per line) or set "
        "dataset.streaming: false"
    )


def open_source(
    uri: str,
    access: Access,
    label: str = "dataset.train",
    hub: HubDatasetOptions | None = None,
) -> StreamSource:
    """``uri`` as a stream source: read through its backend's ``open_stream`` when the
    backend has one, else from the downloaded file. A ``.json`` document is refused
    here, before anything is read: its rows are one JSON value, which cannot be read row
    by row. A Hub dataset read by subset and split (``hub``, or a repository without a
    file path) is its split's files, downloaded, read one after the other."""
    backend, parsed = backend_for(uri, Role.DATASET)
    suffix = data_suffix(parsed)
    full_label = f"{label} ({uri})"
    if suffix == ".json":
        raise _no_json(full_label)
    if isinstance(backend, HubBackend) and (hub is not None or suffix is None):
        return _hub_split(uri, access, full_label, hub)
    opener: Callable[[ParsedUri, Access], BinaryIO] | None = getattr(backend, "open_stream", None)
    if opener is not None and suffix is not None and suffix != ".parquet":
        stream_open = opener

        def open_remote() -> BinaryIO:
            return stream_open(parsed, access)

        if isinstance(backend, LocalBackend):  # in place; a missing file is named now
            version = _local_version(backend.local_file(parsed, access))
        else:
            version = _remote_version(uri, open_remote)
        return StreamSource(uri, full_label, suffix, open_remote, version)
    # Parquet is read by row groups, which needs a seekable file; a backend without
    # open_stream downloads the file (into its cache) first.
    path = backend.local_file(parsed, access)
    if suffix is None:
        suffix = path.suffix.lower()
        if suffix not in DATA_SUFFIXES or suffix == ".json":
            raise DataError(f"{full_label}: resolved to {path.name}, not a streamable data file")
    return StreamSource(uri, full_label, suffix, lambda: path.open("rb"), _local_version(path))


def _hub_split(uri: str, access: Access, label: str, hub: HubDatasetOptions | None) -> StreamSource:
    """The split's files (``backends.fetch_data_files``) as one source; its version names
    every file with its size (the Hub's cache paths hold the commit)."""
    parts = []
    digest = hashlib.sha256()
    for path in fetch_data_files(uri, Role.DATASET, access, hub):
        rel = path.parts[path.parts.index("snapshots") + 2 :] if "snapshots" in path.parts else ()
        name = "/".join(rel) or path.name
        if path.suffix.lower() == ".json":
            raise _no_json(f"{label[:-1]}: {name})")
        parts.append(StreamPart(name, path.suffix.lower(), _opener(path)))
        digest.update(f"{path}\0{path.stat().st_size}\n".encode())
    first = parts[0]
    return StreamSource(
        uri, label, first.suffix, first.open, f"hub:{digest.hexdigest()[:16]}", tuple(parts)
    )


def _opener(path: Path) -> Callable[[], BinaryIO]:
    return lambda: path.open("rb")


def _remote_version(uri: str, opener: Callable[[], BinaryIO]) -> str:
    """A remote source's version: its ETag (S3's object stream has it; an HTTP body's
    headers carry it), read by opening the source once. Opening also proves, before the
    model loads, that the object exists and may be read."""
    with contextlib.closing(opener()) as probe:
        etag = getattr(probe, "etag", None)
        if etag is None:
            headers = getattr(probe, "headers", None) or {}
            etag = headers.get("ETag") or headers.get("etag")
    return f"{uri}@{etag}" if etag else uri


def _local_version(path: Path) -> str:
    stat = os.stat(path)
    return f"file:{stat.st_size}:{stat.st_mtime_ns}"


def source_rows(source: StreamSource) -> Iterator[SourceRow]:
    """The source's rows from its start, each checked to be an object; the handle is
    closed when the iterator is (or is collected)."""
    for part in source.parts or (StreamPart("", source.suffix, source.open),):
        # A file of several: messages say which (dataset.train (hf://...: data/t-1.jsonl)).
        label = f"{source.label[:-1]}: {part.name})" if part.name else source.label
        with contextlib.closing(part.open()) as handle:
            # Emptiness is the stream's to judge: over all the files, once a pass ends.
            for row in iter_rows(handle, part.suffix, label, require_rows=False):
                yield SourceRow(row.data, f"{part.name} {row.where}") if part.name else row


# --------------------------------------------------------------------------- the stream


@dataclass(frozen=True)
class StreamSettings:
    """What turns a row into a training example (the prepared path's settings)."""

    fmt: str
    columns: ColumnMapping
    max_length: int
    loss_on: LossOn = "completion"
    overlong: str = "truncate"


@dataclass
class StreamCounts:
    """What the stream did with the rows it read, over every pass (metrics.json ``data``)."""

    rows_read: int = 0
    dropped_empty: int = 0
    truncated: int = 0
    dropped_overlong: int = 0
    dropped_no_labels: int = 0
    examples: int = 0
    """Examples yielded (trained on, or about to be)."""
    train_tokens: int = 0
    """Their tokens (``TokenizedExample.input_tokens``)."""
    trained_tokens: int = 0
    """Their label tokens."""


class ExampleStream(Iterator[TokenizedExample]):
    """Endless tokenized training examples from one source, shuffled through a buffer,
    pass after pass; its position is :meth:`state_dict`."""

    def __init__(
        self,
        source: StreamSource,
        tokenizer: PreTrainedTokenizerBase,
        settings: StreamSettings,
        *,
        seed: int,
        buffer_size: int,
    ) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self.source = source
        self.tokenizer = tokenizer
        self.settings = settings
        self.seed = seed
        self.buffer_size = buffer_size
        self.counts = StreamCounts()
        self.pass_ = 0
        self.consumed = 0
        """Rows of this pass taken from the source (into the buffer)."""
        self.rows_per_pass: int | None = None
        """Known once a pass has ended."""
        self.yielded_this_pass = 0
        self.buffer: list[SourceRow] = []
        self.rng = random.Random(seed)
        self._rows: Iterator[SourceRow] | None = None
        self._exhausted = False

    # --- position

    @property
    def epoch(self) -> float:
        """The pass and, once a pass's length is known, the fraction of this one read."""
        if not self.rows_per_pass:
            return float(self.pass_)
        return self.pass_ + min(1.0, self.consumed / self.rows_per_pass)

    def content_identity(self) -> str:
        return self.source.version

    # --- iteration

    def __iter__(self) -> ExampleStream:
        return self

    def __next__(self) -> TokenizedExample:
        while True:
            row = self._next_row()
            tokens = self._example(row)
            if tokens is not None:
                self.counts.examples += 1
                self.counts.train_tokens += tokens.input_tokens
                self.counts.trained_tokens += tokens.trained_tokens
                self.yielded_this_pass += 1
                return tokens

    def _example(self, row: SourceRow) -> TokenizedExample | None:
        """The row as the prepared path makes it, or None when that path drops it."""
        settings = self.settings
        (example,) = to_examples([row], settings.fmt, settings.columns, self.source.label)
        self.counts.rows_read += 1
        if is_empty(example):
            self.counts.dropped_empty += 1
            return None
        try:
            tokens = tokenize_example(
                self.tokenizer, example, settings.max_length, loss_on=settings.loss_on
            )
        except TemplateError as exc:
            raise template_failure(
                self.tokenizer, f"{self.source.label}: {row.where}", exc
            ) from None
        if tokens.truncated:
            if settings.overlong == "drop":
                self.counts.dropped_overlong += 1
                return None
            self.counts.truncated += 1
        if not (example.is_classification or tokens.has_target):
            self.counts.dropped_no_labels += 1
            return None
        return tokens

    def _next_row(self) -> SourceRow:
        while True:
            self._fill()
            if self.buffer:
                last = len(self.buffer) - 1
                pick = self.rng.randrange(len(self.buffer)) if last else 0
                self.buffer[pick], self.buffer[last] = self.buffer[last], self.buffer[pick]
                return self.buffer.pop()
            self._next_pass()

    def _fill(self) -> None:
        while not self._exhausted and len(self.buffer) < self.buffer_size:
            if self._rows is None:
                self._rows = source_rows(self.source)
            row = next(self._rows, None)
            if row is None:
                self._exhausted = True
                self._rows = None
                if self.consumed == 0:
                    raise DataError(f"{self.source.label}: the file holds no rows")
                self.rows_per_pass = self.consumed
                break
            self.consumed += 1
            self.buffer.append(row)

    def _next_pass(self) -> None:
        if self.yielded_this_pass == 0:
            raise DataError(
                f"{self.source.label}: no row has anything to learn ({self.consumed} rows read "
                f"in a whole pass; {self.counts.dropped_empty} empty, "
                f"{self.counts.dropped_overlong} longer than training.maxSeqLength, "
                f"{self.counts.dropped_no_labels} with nothing to learn within it); check the "
                "format and columns, or raise training.maxSeqLength"
            )
        self.pass_ += 1
        self.consumed = 0
        self.yielded_this_pass = 0
        self._exhausted = False
        self._rows = None
        self.rng = random.Random(self.seed + self.pass_)

    # --- state

    def state_dict(self) -> dict[str, Any]:
        """The stream's position as JSON-ready data (``data-stream.json``)."""
        version, internal, gauss = self.rng.getstate()
        return {
            "version": STATE_VERSION,
            "source": self.source.uri,
            "seed": self.seed,
            "bufferSize": self.buffer_size,
            "pass": self.pass_,
            "consumed": self.consumed,
            "exhausted": self._exhausted,
            "rowsPerPass": self.rows_per_pass,
            "yieldedThisPass": self.yielded_this_pass,
            "buffer": [[row.data, row.where] for row in self.buffer],
            "rng": [version, list(internal), gauss],
            "counts": asdict(self.counts),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` was taken: the source reopened and its consumed rows
        skipped (read, not kept), the buffer and the generator put back."""
        if state.get("version") != STATE_VERSION:
            raise DataError(
                f"{self.source.label}: the stream state has version {state.get('version')}, "
                f"this trainer reads {STATE_VERSION}"
            )
        self.pass_ = int(state["pass"])
        self.consumed = int(state["consumed"])
        self._exhausted = bool(state["exhausted"])
        per_pass = state.get("rowsPerPass")
        self.rows_per_pass = None if per_pass is None else int(per_pass)
        self.yielded_this_pass = int(state["yieldedThisPass"])
        self.buffer = [SourceRow(data, where) for data, where in state["buffer"]]
        version, internal, gauss = state["rng"]
        self.rng = random.Random()
        self.rng.setstate((version, tuple(internal), gauss))
        self.counts = StreamCounts(**state["counts"])
        self._rows = None
        if not self._exhausted:
            self._rows = source_rows(self.source)
            for _ in range(self.consumed):
                if next(self._rows, None) is None:
                    raise DataError(
                        f"{self.source.label}: holds fewer rows than the checkpoint's stream had "
                        f"read ({self.consumed}); the file changed since: train from the start "
                        "(delete the output's checkpoints/)"
                    )

    def report(self) -> dict[str, Any]:
        """metrics.json ``data``'s streaming keys (camelCase, like the prepared report)."""
        return {
            "streamed": True,
            "rowsRead": self.counts.rows_read,
            "droppedEmpty": self.counts.dropped_empty,
            "truncated": self.counts.truncated,
            "droppedOverlong": self.counts.dropped_overlong,
            "droppedNoLabels": self.counts.dropped_no_labels,
            "trainRows": self.counts.examples,
            "trainTokens": self.counts.train_tokens,
            "trainedTokens": self.counts.trained_tokens,
            "passes": self.pass_ + 1,
            "shuffleBuffer": self.buffer_size,
        }


def open_stream(
    uri: str,
    access: Access,
    tokenizer: PreTrainedTokenizerBase,
    settings: StreamSettings,
    *,
    seed: int,
    buffer_size: int,
    hub: HubDatasetOptions | None = None,
) -> ExampleStream:
    """The train source at ``uri`` (with ``dataset.hub``'s subset and split) as an
    :class:`ExampleStream`."""
    source = open_source(uri, access, hub=hub)
    return ExampleStream(source, tokenizer, settings, seed=seed, buffer_size=buffer_size)
