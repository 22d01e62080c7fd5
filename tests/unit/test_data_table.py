"""data.table: every kind of example round-trips through an Arrow file, lengths and token
counts come from the offsets, views select and order rows of one or several tables, and
a damaged file is refused (TableError, which the caches turn into a miss)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from finetune_trainer.data.packing import PackedExample
from finetune_trainer.data.table import ExampleTable, TableError, TableView, TableWriter, kind_of
from finetune_trainer.data.tokenize import (
    IGNORE_INDEX,
    PairExample,
    PreferenceExample,
    PromptExample,
    TokenizedExample,
)

X = IGNORE_INDEX

KINDS: dict[str, list[TokenizedExample]] = {
    "lm": [
        TokenizedExample([1, 2, 3], [X, 2, 3]),
        TokenizedExample([4], [X], truncated=True),
        TokenizedExample([], []),
    ],
    "prompt": [PromptExample([5, 6], [X, X]), PromptExample([7], [X], truncated=True)],
    "preference": [
        PreferenceExample([1, 2], [X, 2], rejected_ids=[1, 3, 4], rejected_labels=[X, 3, 4]),
        PreferenceExample([9], [9], truncated=True, rejected_ids=[8], rejected_labels=[X]),
    ],
    "pairs": [
        PairExample([1, 2], [X, X], positive_ids=[3], negative_ids=[4, 5, 6]),
        PairExample([7], [X], truncated=True, positive_ids=[8, 9], negative_ids=None),
        PairExample([10], [X], positive_ids=[11], negative_ids=[]),
    ],
    "packed": [
        PackedExample([1, 2, 3], [1, X, 3], lengths=(2, 1)),
        PackedExample([4], [4], lengths=(1,)),
    ],
}


def write(path: Path, kind: str, examples: list[TokenizedExample], batch: int = 2) -> ExampleTable:
    with TableWriter(path, kind) as writer:
        for start in range(0, len(examples), batch):
            writer.write(examples[start : start + batch])
    return ExampleTable(path)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_round_trips_across_batches(tmp_path: Path, kind: str) -> None:
    examples = KINDS[kind]
    table = write(tmp_path / "t.arrow", kind, examples)

    assert table.kind == kind == kind_of(examples[0])
    assert list(table) == examples and table == examples
    assert [table[k] for k in range(-len(examples), 0)] == examples
    assert table.lengths.tolist() == [e.length for e in examples]
    assert table.input_tokens == sum(e.input_tokens for e in examples)
    assert table.trained_tokens == sum(e.trained_tokens for e in examples)
    with pytest.raises(IndexError):
        table[len(examples)]


def test_extra_columns_are_stored_and_read_back(tmp_path: Path) -> None:
    examples = KINDS["lm"]
    path = tmp_path / "t.arrow"
    extra = {"where": pa.string(), "trained_tokens": pa.int32()}
    with TableWriter(path, "lm", extra) as writer:
        writer.write(examples, {"where": ["line 1", None, "line 3"], "trained_tokens": [5, 0, 0]})
    table = ExampleTable(path)

    assert [table.text("where", k) for k in range(3)] == ["line 1", None, "line 3"]
    assert table.trained_tokens == 5  # the column, not a count of the labels
    assert table.numbers("trained_tokens").tolist() == [5, 0, 0]


def test_views_select_order_slice_and_span_tables(tmp_path: Path) -> None:
    a = write(tmp_path / "a.arrow", "lm", KINDS["lm"])
    b = write(tmp_path / "b.arrow", "lm", [TokenizedExample([8, 8, 8, 8], [8, 8, 8, 8])])

    view = TableView(a, np.array([2, 0]))
    assert list(view) == [KINDS["lm"][2], KINDS["lm"][0]]
    assert view.lengths.tolist() == [0, 3] and view.input_tokens == 3
    assert list(view[1:]) == [KINDS["lm"][0]]
    assert a[1:] == KINDS["lm"][1:]

    mixed = TableView([a, b], np.array([0, 0, 1]), sources=np.array([1, 0, 0]))
    assert list(mixed) == [b[0], a[0], a[1]]
    assert mixed.lengths.tolist() == [4, 3, 1]
    assert mixed.trained_tokens == 4 + 2
    assert mixed + [a[2]] == [b[0], a[0], a[1], a[2]]  # noqa: RUF005 (TableView.__add__)


def test_the_writer_leaves_nothing_behind_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "t.arrow"
    with pytest.raises(ValueError, match="cannot hold"), TableWriter(path, "lm") as writer:
        writer.write(KINDS["preference"])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["garbage", "truncated", "empty", "foreign", "offsets"])
def test_a_damaged_or_foreign_file_is_refused(tmp_path: Path, how: str) -> None:
    path = tmp_path / "t.arrow"
    write(path, "lm", KINDS["lm"] * 50, batch=1000)
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"garbage" * 100)
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "foreign":
        table = pa.table({"input_ids": pa.array([[1.0]]), "truncated": [False]})
        with pa.ipc.new_file(str(path), table.schema.with_metadata({"kind": "lm"})) as out:
            out.write_table(table.replace_schema_metadata({"kind": "lm"}))
    else:  # an offset past the end of the values: would slice the wrong tokens
        lengths = [len(e.input_ids) for e in KINDS["lm"] * 50]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        at = data.index(offsets.tobytes())
        offsets[-1] += 5
        path.write_bytes(data[:at] + offsets.tobytes() + data[at + offsets.nbytes :])
    with pytest.raises(TableError):
        ExampleTable(path)
