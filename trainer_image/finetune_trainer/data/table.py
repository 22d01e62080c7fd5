"""Tokenized examples in one Arrow file, memory-mapped: a dataset's size is disk, not RSS.

A list of :class:`TokenizedExample` costs ~100 bytes of Python object per token (300k
chat rows: 1.9 GB before step 1). An :class:`ExampleTable` keeps the same examples in an
Arrow IPC file opened with ``pyarrow.memory_map``: the kernel pages in what a batch reads
and may drop it again, so a process's memory no longer grows with the dataset. The table
is a ``Sequence[TokenizedExample]``: indexing materialises one example (of the kind the
file holds) for the batch that asks, and every consumer that iterated a list works as is.

*Layout*: one row per example. Sequences are ``list<int32>`` columns (``input_ids``,
``labels``; ``rejected_ids``/``rejected_labels`` for a preference pair;
``positive_ids``/``negative_ids`` for a sentence pair, the negative null when the row
has none; ``lengths`` of a packed sequence's parts), ``truncated`` a bool; the schema
metadata says the ``kind`` (``lm``, ``prompt``, ``preference``, ``pairs``, ``packed``).
Any further column is the preparer's (where a row is in its file, its label text...):
the table stores and returns it (:meth:`ExampleTable.text`, :meth:`ExampleTable.numbers`)
without knowing what it means. ``.lengths`` (what length grouping sorts by) and
``.input_tokens`` come from the list offsets alone, never touching the tokens.

*Trust*: a file from a cache may be damaged or foreign. Opening checks the kind, every
column's type, and that each list's offsets partition its values; anything else is a
:class:`TableError`, which the caches turn into a miss (a slower run, never wrong
tokens).

:class:`TableWriter` appends record batches to a temporary name and renames it into
place on close, so no reader ever maps half a file. :class:`TableView` is a selection
(and order) of rows of one or several tables, as index arrays: a split, the usable rows,
a mixture's sampling, all without copying an example.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from finetune_trainer.data.packing import PackedExample
from finetune_trainer.data.tokenize import (
    PairExample,
    PreferenceExample,
    PromptExample,
    TokenizedExample,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import pyarrow as pa

    IntArray = npt.NDArray[np.int64]

SEQUENCES: dict[str, tuple[str, ...]] = {
    "lm": ("input_ids", "labels"),
    "prompt": ("input_ids", "labels"),
    "preference": ("input_ids", "labels", "rejected_ids", "rejected_labels"),
    "pairs": ("input_ids", "labels", "positive_ids", "negative_ids"),
    "packed": ("input_ids", "labels", "lengths"),
}
"""Each kind's list columns; every kind also has ``truncated``."""

_NULLABLE = {"negative_ids"}


class TableError(ValueError):
    """The file is not a table this module wrote (damaged, foreign, another layout)."""


def kind_of(example: TokenizedExample) -> str:
    """The table kind that holds ``example``."""
    if isinstance(example, PackedExample):
        return "packed"
    if isinstance(example, PairExample):
        return "pairs"
    if isinstance(example, PreferenceExample):
        return "preference"
    return "prompt" if isinstance(example, PromptExample) else "lm"


def _schema(kind: str, extra: dict[str, pa.DataType]) -> pa.Schema:
    import pyarrow as pa

    fields = [
        pa.field(name, pa.list_(pa.int32()), nullable=name in _NULLABLE) for name in SEQUENCES[kind]
    ]
    fields.append(pa.field("truncated", pa.bool_(), nullable=False))
    fields += [pa.field(name, dtype) for name, dtype in extra.items()]
    return pa.schema(fields, metadata={"kind": kind})


def _sequences(example: TokenizedExample, kind: str) -> list[list[int] | None]:
    if kind == "preference":
        assert isinstance(example, PreferenceExample)
        return [example.input_ids, example.labels, example.rejected_ids, example.rejected_labels]
    if kind == "pairs":
        assert isinstance(example, PairExample)
        return [example.input_ids, example.labels, example.positive_ids, example.negative_ids]
    if kind == "packed":
        assert isinstance(example, PackedExample)
        return [example.input_ids, example.labels, list(example.lengths)]
    return [example.input_ids, example.labels]


class TableWriter:
    """Writes one table: :meth:`write` batches of examples (of one kind), then :meth:`close`
    renames the file into place. Used as a context manager, an exception removes the
    temporary file and leaves nothing at ``path``."""

    def __init__(self, path: Path, kind: str, extra: dict[str, pa.DataType] | None = None) -> None:
        import pyarrow as pa

        if kind not in SEQUENCES:
            raise ValueError(f"unknown table kind {kind!r}")
        self.path, self.kind = path, kind
        self.schema = _schema(kind, extra or {})
        self.rows = 0
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        self.temporary = Path(tmp)
        """Where the file is written; still there, complete, when :meth:`close` could
        not rename it into place."""
        self._sink = pa.OSFile(tmp, "wb")
        self._writer = pa.ipc.new_file(self._sink, self.schema)

    def write(
        self, examples: Sequence[TokenizedExample], extra: Mapping[str, Sequence[Any]] | None = None
    ) -> None:
        """Append ``examples`` (and, per extra column, one value per example)."""
        import pyarrow as pa

        if not examples:
            return
        for example in examples:
            if kind_of(example) != self.kind and not (
                self.kind == "lm" and kind_of(example) == "prompt"
            ):
                raise ValueError(f"a {self.kind} table cannot hold a {kind_of(example)} example")
        names = SEQUENCES[self.kind]
        rows = [_sequences(e, self.kind) for e in examples]
        columns: dict[str, Any] = {
            name: pa.array([r[k] for r in rows], type=pa.list_(pa.int32()))
            for k, name in enumerate(names)
        }
        columns["truncated"] = pa.array([e.truncated for e in examples], type=pa.bool_())
        for name, values in (extra or {}).items():
            columns[name] = pa.array(list(values), type=self.schema.field(name).type)
        batch = pa.record_batch([columns[f.name] for f in self.schema], schema=self.schema)
        self._writer.write_batch(batch)
        self.rows += len(examples)

    def close(self) -> Path:
        """Finish the file and rename it into place (an OSError from the rename leaves
        the complete file at :attr:`temporary`)."""
        self._writer.close()
        self._sink.close()
        os.replace(self.temporary, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
            self._sink.close()
        finally:
            self.temporary.unlink(missing_ok=True)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, kind: object, value: object, traceback: object) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


class _Batch:
    """One record batch's columns as zero-copy numpy views of the mapped file."""

    def __init__(self, batch: pa.RecordBatch, lists: Sequence[str]) -> None:
        self.rows = batch.num_rows
        self.offsets: dict[str, Any] = {}
        self.values: dict[str, Any] = {}
        self.valid: dict[str, Any] = {}
        for name in lists:
            column = batch.column(name)
            offsets = column.offsets.to_numpy()
            values = column.values.to_numpy(zero_copy_only=False)
            if len(offsets) != self.rows + 1 or (self.rows and offsets[0] != 0):
                raise TableError(f"column {name}: offsets do not match the rows")
            if offsets[-1] != len(values) or bool((offsets[1:] < offsets[:-1]).any()):
                raise TableError(f"column {name}: offsets do not partition the values")
            self.offsets[name], self.values[name] = offsets, values
            if column.null_count:
                self.valid[name] = column.is_valid().to_numpy(zero_copy_only=False)
        self.batch = batch

    def sequence(self, name: str, row: int) -> list[int] | None:
        valid = self.valid.get(name)
        if valid is not None and not valid[row]:
            return None
        offsets = self.offsets[name]
        return self.values[name][offsets[row] : offsets[row + 1]].tolist()  # type: ignore[no-any-return]

    def count(self, name: str) -> Any:
        """Per row, how many values its list holds (0 for a null list)."""
        import numpy as np

        counts = np.diff(self.offsets[name]).astype(np.int64)
        valid = self.valid.get(name)
        return counts if valid is None else np.where(valid, counts, 0)


class _Examples(Sequence[TokenizedExample]):
    """What a table and a view are alike in: a sequence of examples that stands for the
    list it replaced (equal to it, concatenated with it, never hashed)."""

    def __iter__(self) -> Iterator[TokenizedExample]:
        for index in range(len(self)):
            yield self[index]

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of the same examples in the same order (a list too)."""
        if not isinstance(other, Sequence) or isinstance(other, (str, bytes)):
            return False
        return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))

    __hash__ = None  # type: ignore[assignment]

    def __add__(self, other: Sequence[TokenizedExample]) -> list[TokenizedExample]:
        return [*self, *other]

    def __radd__(self, other: Sequence[TokenizedExample]) -> list[TokenizedExample]:
        return [*other, *self]


class ExampleTable(_Examples):
    """The examples of one table file, memory-mapped (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        import numpy as np
        import pyarrow as pa

        self.path = path
        self._digest: str | None = None
        try:
            self._source = pa.memory_map(str(path), "r")
            reader = pa.ipc.open_file(self._source)
            schema = reader.schema
            kind = (schema.metadata or {}).get(b"kind", b"").decode()
            if kind not in SEQUENCES:
                raise TableError(f"holds examples of an unknown kind {kind!r}")
            self.kind = kind
            self._lists = SEQUENCES[kind]
            for name in self._lists:
                if name not in schema.names or schema.field(name).type != pa.list_(pa.int32()):
                    raise TableError(f"column {name} is missing or not a list of int32")
            if "truncated" not in schema.names or schema.field("truncated").type != pa.bool_():
                raise TableError("column truncated is missing or not bool")
            self.schema = schema
            self._batches = [
                _Batch(reader.get_batch(k), self._lists) for k in range(reader.num_record_batches)
            ]
        except TableError:
            raise
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise TableError(f"{type(exc).__name__}: {exc}") from None
        sizes = [b.rows for b in self._batches]
        self._starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self._starts[1:])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def content_digest(self) -> str:
        """sha256 of the file (read once in 1 MiB reads, not through the mapping, so it
        adds nothing to the process's memory; a cache entry gives the one it recorded):
        what the examples are, for a checkpoint's identity."""
        if self._digest is None:
            import hashlib

            digest = hashlib.sha256()
            with self.path.open("rb") as handle:
                while chunk := handle.read(1 << 20):
                    digest.update(chunk)
            self._digest = digest.hexdigest()
        return self._digest

    @content_digest.setter
    def content_digest(self, value: str) -> None:
        self._digest = value

    def _locate(self, index: int) -> tuple[_Batch, int]:
        import numpy as np

        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"table index {index} out of range ({n} rows)")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._batches[k], index - int(self._starts[k])

    @overload
    def __getitem__(self, index: int) -> TokenizedExample: ...
    @overload
    def __getitem__(self, index: slice) -> TableView: ...
    def __getitem__(self, index: int | slice) -> TokenizedExample | TableView:
        import numpy as np

        if isinstance(index, slice):
            return TableView(self, np.arange(len(self), dtype=np.int64)[index])
        batch, row = self._locate(int(index))
        seq = {name: batch.sequence(name, row) for name in self._lists}
        ids, labels = seq["input_ids"] or [], seq["labels"] or []
        truncated = bool(batch.batch.column("truncated")[row].as_py())
        if self.kind == "preference":
            return PreferenceExample(
                ids,
                labels,
                truncated=truncated,
                rejected_ids=seq["rejected_ids"] or [],
                rejected_labels=seq["rejected_labels"] or [],
            )
        if self.kind == "pairs":
            return PairExample(
                ids,
                labels,
                truncated=truncated,
                positive_ids=seq["positive_ids"] or [],
                negative_ids=seq["negative_ids"],
            )
        if self.kind == "packed":
            return PackedExample(
                ids, labels, truncated=truncated, lengths=tuple(seq["lengths"] or ())
            )
        if self.kind == "prompt":
            return PromptExample(ids, labels, truncated=truncated)
        return TokenizedExample(ids, labels, truncated=truncated)

    def _per_row(self, fn: Any) -> Any:
        import numpy as np

        parts = [fn(b) for b in self._batches]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def counts(self, name: str) -> IntArray:
        """Per example, the length of its list column ``name``."""
        return self._per_row(lambda b: b.count(name))  # type: ignore[no-any-return]

    @property
    def lengths(self) -> IntArray:
        """Per example, the longest row it puts in a batch (``TokenizedExample.length``)."""
        import numpy as np

        if self.kind == "preference":
            return np.maximum(self.counts("input_ids"), self.counts("rejected_ids"))
        if self.kind == "pairs":
            both = np.maximum(self.counts("input_ids"), self.counts("positive_ids"))
            return np.maximum(both, self.counts("negative_ids"))
        return self.counts("input_ids")

    @property
    def input_token_counts(self) -> IntArray:
        """Per example, the tokens it puts through the model (every text of a pair)."""
        if self.kind == "pairs":
            return (
                self.counts("input_ids") + self.counts("positive_ids") + self.counts("negative_ids")
            )
        return self.counts("input_ids")

    @property
    def input_tokens(self) -> int:
        return int(self.input_token_counts.sum())

    @property
    def trained_token_counts(self) -> IntArray:
        """Per example, its labelled tokens: the writer's ``trained_tokens`` column when it
        wrote one (no token is read), else counted example by example."""
        import numpy as np

        if "trained_tokens" in self.schema.names:
            return self.numbers("trained_tokens").astype(np.int64)  # type: ignore[no-any-return]
        return np.fromiter((e.trained_tokens for e in self), dtype=np.int64, count=len(self))

    @property
    def trained_tokens(self) -> int:
        return int(self.trained_token_counts.sum())

    def numbers(self, name: str) -> Any:
        """An extra column of numbers or flags as one numpy array (nulls not allowed)."""
        return self._per_row(lambda b: b.batch.column(name).to_numpy(zero_copy_only=False))

    def text(self, name: str, index: int) -> Any:
        """One value of an extra column (a string, a number, or None)."""
        batch, row = self._locate(index)
        return batch.batch.column(name)[row].as_py()


class TableView(_Examples):
    """Rows of one or several tables in a given order: ``indices[k]`` of
    ``tables[sources[k]]`` (``sources`` None: all from the one table)."""

    def __init__(
        self,
        tables: ExampleTable | Sequence[ExampleTable],
        indices: IntArray,
        sources: IntArray | None = None,
    ) -> None:
        import numpy as np

        self.tables = [tables] if isinstance(tables, ExampleTable) else list(tables)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.sources = None if sources is None else np.asarray(sources, dtype=np.int64)
        if self.sources is None and len(self.tables) != 1:
            raise ValueError("a view over several tables needs each row's source")
        if self.sources is not None and len(self.sources) != len(self.indices):
            raise ValueError("one source per index")

    def __len__(self) -> int:
        return len(self.indices)

    @overload
    def __getitem__(self, index: int) -> TokenizedExample: ...
    @overload
    def __getitem__(self, index: slice) -> TableView: ...
    def __getitem__(self, index: int | slice) -> TokenizedExample | TableView:
        if isinstance(index, slice):
            sources = None if self.sources is None else self.sources[index]
            return TableView(self.tables, self.indices[index], sources)
        source = 0 if self.sources is None else int(self.sources[index])
        return self.tables[source][int(self.indices[index])]

    def gather(self, per_table: list[Any]) -> Any:
        """Per row of the view, the value of a per-table array (one array per table)."""
        import numpy as np

        if self.sources is None:
            return per_table[0][self.indices]
        out = np.zeros(len(self.indices), dtype=np.asarray(per_table[0]).dtype)
        for s, values in enumerate(per_table):
            mask = self.sources == s
            out[mask] = values[self.indices[mask]]
        return out

    @property
    def lengths(self) -> IntArray:
        return self.gather([t.lengths for t in self.tables])  # type: ignore[no-any-return]

    @property
    def input_tokens(self) -> int:
        return int(self.gather([t.input_token_counts for t in self.tables]).sum())

    @property
    def trained_tokens(self) -> int:
        return int(self.gather([t.trained_token_counts for t in self.tables]).sum())
