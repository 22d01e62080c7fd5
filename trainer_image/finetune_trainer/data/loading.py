"""Reading dataset files into rows (dicts): jsonl, json and csv with the standard
library, parquet with pyarrow.

This is the one place a run reads a data file (the prepared path from a file on disk, a
stream, ``data.stream``, from a backend's binary handle: the same readers, so the same
rows, locations and messages), so it is the one place that turns every way a file can be
broken into a :class:`DataError` (exit 3, never retried) naming the
file and where in it: bytes that are not UTF-8, lines that are not JSON, JSON nested
deeper than the parser goes, numbers too long to convert, ``\\ud800`` escapes that
decode to a lone surrogate (not a character: it would fail later, far from its cause,
when the text is encoded), rows that are not objects, CSV records with the wrong number
of fields. Each row keeps its location (:attr:`SourceRow.where`) so that every later
message about it (format, tokenization, labels) points at the same place: the 1-based
physical line where the row starts, counting blank lines, as an editor numbers it.
Parquet has no lines; its rows are numbered from 1.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from finetune_trainer.errors import DataError, TrainerError

Row = dict[str, Any]
"""One row of a dataset file: column name to value (whatever JSON, CSV or Parquet held)."""


@dataclass(frozen=True)
class SourceRow:
    """A row and where it is in its file, as messages name it: ``line 3``, ``line 1
    (row 2 of the list)`` when a .json file holds several rows on one line, ``row 4``
    for Parquet."""

    data: Row
    where: str


Located = tuple[object, str]
"""A parsed value (not yet checked to be a mapping) and its location."""

Source = Path | IO[bytes]
"""A file to read: its path, or a binary handle open at its start (a backend's stream:
a local file, an S3 object's body, an HTTP response), which the caller closes."""

Reader = Callable[[Source, str], Iterable[Located]]
"""(source, label for messages) -> the file's rows with their locations, read as they
are asked for."""

_JSON_BLANK = " \t\r\n"
_WHITESPACE = re.compile(r"[ \t\r\n]*")
_BOM = "\ufeff"
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89abcdefABCDEF]")
_CSV_FIELD_LIMIT = 2**31 - 1
"""Python's csv module refuses fields over 128 KiB by default; a long document in a text
column is ordinary data, not an error."""
CHUNK = 1 << 20
"""Bytes read from a handle at a time: reading does not grow with the file."""


def _fail(label: str, where: str, problem: str) -> DataError:
    return DataError(f"{label}: {where} {problem}")


def _decode(raw: bytes, label: str, number: int) -> str:
    """One line as text; bytes that are not UTF-8 are reported at their line and byte."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise _fail(
            label,
            f"line {number}",
            f"is not valid UTF-8 (byte 0x{bad} at byte {exc.start + 1} of the line); "
            "save the file as UTF-8",
        ) from None
    return text.removeprefix(_BOM) if number == 1 else text


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    """The handle's bytes, :data:`CHUNK` at a time: a backend's body may return less
    than asked (then the rest comes with the next read), and only an empty read ends it."""
    while chunk := handle.read(CHUNK):
        yield chunk


def _byte_lines(handle: IO[bytes]) -> Iterator[bytes]:
    """The handle's lines, ends kept: a backend's body need not iterate by lines
    (botocore's yields 1 KiB pieces); a line spanning reads is joined once, so a long
    line costs its length."""
    parts: list[bytes] = []
    for chunk in _chunks(handle):
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            parts.append(chunk[start : end + 1])
            yield b"".join(parts)
            parts.clear()
            start = end + 1
        if start < len(chunk):
            parts.append(chunk[start:])
    if parts:
        yield b"".join(parts)


def _lines(source: Source, label: str) -> Iterator[str]:
    """The file's lines as text, ends kept; only ``\\n`` ends a line (as JSON Lines and
    JSON's own line numbers say), so a stray ``\\r`` or U+2028 never shifts the count.
    A file on disk is iterated by the io module's line reader (the same lines, faster)."""
    if isinstance(source, Path):
        with source.open("rb") as handle:
            yield from _decoded(handle, label)
    else:
        yield from _decoded(_byte_lines(source), label)


def _decoded(lines: Iterable[bytes], label: str) -> Iterator[str]:
    for number, raw in enumerate(lines, start=1):
        yield _decode(raw, label, number)


def _no_lone_surrogates(value: object, label: str, where: str) -> None:
    """Refuse a string holding half of a UTF-16 surrogate pair (only a ``\\udXXX``
    escape produces one). Walked with a stack: the value may be deeply nested."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found = _SURROGATE.search(item)
            if found:
                raise _fail(
                    label,
                    where,
                    f"holds the escape \\u{ord(found.group()):04x}, half of a UTF-16 "
                    "surrogate pair with no other half, which is not a character; fix or "
                    "remove it where the file was produced",
                )
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _json_problem(exc: Exception) -> str:
    """What the JSON parser found wrong, in words."""
    if isinstance(exc, json.JSONDecodeError):
        return f"is not valid JSON ({exc.msg} at column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "is not readable JSON: it is nested too deeply for the parser; flatten it"
    return f"is not readable JSON ({exc})"  # e.g. an integer with more than 4300 digits


def _iter_jsonl(source: Source, label: str) -> Iterator[Located]:
    for number, text in enumerate(_lines(source, label), start=1):
        if not text.strip(_JSON_BLANK):
            continue
        where = f"line {number}"
        try:
            value = json.loads(text.rstrip("\r\n"))  # a column past the line end helps no one
        except (ValueError, RecursionError) as exc:
            raise _fail(label, where, _json_problem(exc)) from None
        if _SURROGATE_ESCAPE.search(text):
            _no_lone_surrogates(value, label, where)
        yield value, where


class _JsonScan:
    """Walks a .json document's list of rows one element at a time (with the standard
    parser for each), so every row knows the line it starts on and an error inside a row
    is reported at its line."""

    def __init__(self, text: str, label: str) -> None:
        self.text, self.label = text, label
        self.decoder = json.JSONDecoder()
        self._pos, self._line = 0, 1

    def line(self, pos: int) -> int:
        """The 1-based line of ``pos``; positions only move forward, so counting is
        incremental."""
        if pos < self._pos:
            self._pos, self._line = 0, 1
        self._line += self.text.count("\n", self._pos, pos)
        self._pos = pos
        return self._line

    def skip(self, pos: int) -> int:
        blank = _WHITESPACE.match(self.text, pos)
        return blank.end() if blank else pos

    def error(self, pos: int, problem: str) -> DataError:
        return _fail(self.label, f"line {self.line(pos)}", problem)

    def value(self, pos: int) -> tuple[object, int]:
        try:
            return self.decoder.raw_decode(self.text, pos)
        except json.JSONDecodeError as exc:
            raise _fail(self.label, f"line {exc.lineno}", _json_problem(exc)) from None
        except (ValueError, RecursionError) as exc:
            raise self.error(pos, _json_problem(exc)) from None

    def expect(self, pos: int, allowed: str) -> tuple[str, int]:
        pos = self.skip(pos)
        found = self.text[pos : pos + 1]
        if not found or found not in allowed:
            shown = repr(found) if found else "the end of the file"
            wanted = " or ".join(repr(c) for c in allowed)
            raise self.error(pos, f"is not valid JSON (expecting {wanted}, found {shown})")
        return found, pos + 1

    def rows(self, pos: int) -> tuple[list[tuple[object, int]], int]:
        """The elements of the list that opens at ``pos``, with their start lines."""
        out: list[tuple[object, int]] = []
        pos = self.skip(pos + 1)
        if self.text.startswith("]", pos):
            return out, pos + 1
        while True:
            pos = self.skip(pos)
            start = pos
            value, pos = self.value(pos)
            out.append((value, self.line(start)))
            found, pos = self.expect(pos, ",]")
            if found == "]":
                return out, pos

    def document(self) -> tuple[list[tuple[object, int]] | None, int]:
        """The rows of a list, or of an object's ``data`` list; None when the document
        is neither. The second item is where the document ends."""
        pos = self.skip(0)
        if self.text.startswith("[", pos):
            return self.rows(pos)
        if not self.text.startswith("{", pos):
            _, end = self.value(pos)
            return None, end
        rows: list[tuple[object, int]] | None = None
        pos = self.skip(pos + 1)
        if self.text.startswith("}", pos):
            return None, pos + 1
        while True:
            _, pos = self.expect(pos, '"')
            key, pos = self.value(pos - 1)
            _, pos = self.expect(pos, ":")
            pos = self.skip(pos)
            if key == "data" and self.text.startswith("[", pos):
                rows, pos = self.rows(pos)
            else:
                _, pos = self.value(pos)
                if key == "data":
                    rows = None
            found, pos = self.expect(pos, ",}")
            if found == "}":
                return rows, pos


def _read_json(source: Source, label: str) -> list[Located]:
    """A document is parsed whole: its rows' lines need all of it."""
    data = source.read_bytes() if isinstance(source, Path) else b"".join(_chunks(source))
    try:
        text = data.decode("utf-8").removeprefix(_BOM)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise _fail(
            label,
            f"line {line}",
            f"is not valid UTF-8 (byte 0x{data[exc.start : exc.start + 1].hex()} at byte "
            f"{column} of the line); save the file as UTF-8",
        ) from None
    scan = _JsonScan(text, label)
    rows, end = scan.document()
    end = scan.skip(end)
    if end < len(text):
        raise scan.error(end, "is not valid JSON (extra data after the end of the document)")
    if rows is None:
        raise DataError(f'{label}: a .json dataset must be a list of rows (or {{"data": [...]}})')
    shared = Counter(line for _, line in rows)
    located: list[Located] = []
    for index, (value, line) in enumerate(rows, start=1):
        where = f"line {line}" if shared[line] == 1 else f"line {line} (row {index} of the list)"
        _no_lone_surrogates(value, label, where)
        located.append((value, where))
    return located


def _csv_records(lines: Iterable[str], label: str) -> Iterator[tuple[list[str], int]]:
    """Each non-blank CSV record and the line it starts on (a quoted field may span
    lines)."""
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    reader = csv.reader(lines)
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise _fail(label, f"line {start}", f"is not valid CSV ({exc})") from None
        if record:
            yield record, start


def _iter_csv(source: Source, label: str) -> Iterator[Located]:
    """Every value is text, as written: ``2021-03-05`` or ``4`` is the text the model
    must learn to write, not a date or a number."""
    records = _csv_records(_lines(source, label), label)
    first = next(records, None)
    if first is None:
        return
    header, header_line = first
    repeated = sorted(name for name, n in Counter(header).items() if n > 1)
    if repeated:
        raise _fail(
            label,
            f"line {header_line}",
            f"is a header naming column {repeated[0]!r} more than once; rename one",
        )
    for record, line in records:
        if len(record) != len(header):
            raise _fail(
                label,
                f"line {line}",
                f"has {len(record)} fields but the header (line {header_line}) has "
                f"{len(header)}; quote fields that contain a comma",
            )
        yield dict(zip(header, record, strict=True)), f"line {line}"


PARQUET_BATCH = 4096
"""Rows per Parquet read: the file is converted to Python a batch at a time."""


def _iter_parquet(source: Source, label: str) -> Iterator[Located]:
    """A batch of rows in memory at a time; a handle must be seekable (Parquet's footer
    is at its end)."""
    import pyarrow.parquet as pq

    index = 0
    try:
        batches = pq.ParquetFile(source).iter_batches(batch_size=PARQUET_BATCH)
        for batch in batches:
            values: list[object] = batch.to_pylist()
            for value in values:
                index += 1
                yield value, f"row {index}"
    except MemoryError:
        raise
    except TrainerError:  # a handle's own failure (a StorageError) stays what it is
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"{label}: cannot read Parquet: {exc}") from None


READERS: dict[str, Reader] = {
    ".jsonl": _iter_jsonl,
    ".json": _read_json,
    ".csv": _iter_csv,
    ".parquet": _iter_parquet,
}
"""Each file type's reader, row by row: JSON Lines and CSV a line at a time, Parquet a
batch of rows at a time, a .json document whole."""


def iter_rows(
    source: Source, suffix: str, label: str, *, require_rows: bool = True
) -> Iterator[SourceRow]:
    """The rows of ``source`` with their locations, read as they are asked for (the
    file's size does not decide the memory); every row must be a mapping, and a file
    without rows is an error (raised once the end is reached) unless ``require_rows`` is
    False: a stream counts the rows of all its files, and of every pass, itself."""
    empty = True
    for value, where in READERS[suffix](source, label):
        if not isinstance(value, dict):
            raise _fail(
                label,
                where,
                f'is {type(value).__name__}, expected an object ({{"column": value, ...}})',
            )
        empty = False
        yield SourceRow(value, where)
    if empty and require_rows:
        raise DataError(f"{label}: the file holds no rows")


def read_rows(source: Source, suffix: str, label: str) -> list[SourceRow]:
    """All rows of ``source`` with their locations; every row must be a mapping."""
    return list(iter_rows(source, suffix, label))
