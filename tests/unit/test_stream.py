"""The training stream (dataset.streaming): the prepared path's examples row by row, a
seeded shuffle buffer, and a state that resumes at the very next example."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from conftest import colour_rows, write_jsonl
from finetune_api.config import ColumnMapping, DatasetSpec, TrainingSpec
from finetune_trainer.data.loading import read_rows
from finetune_trainer.data.prepare import prepare_data
from finetune_trainer.data.stream import ExampleStream, StreamSettings, open_source, open_stream
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.errors import DataError, StorageError
from finetune_trainer.steps import stream_step_groups
from finetune_trainer.storage.backends import Access

MAX_LENGTH = 48


def varied_rows(n: int) -> list[dict[str, Any]]:
    """Rows of different lengths, a few empty and a few too long (dropped or cut)."""
    rows = []
    for i in range(n):
        answer = " ".join(f"w{i}x{j}" for j in range(i % 7 + 1))
        if i % 11 == 5:
            answer = "   "  # empty: dropped by the cleaning
        if i % 13 == 7:
            answer = "long " * 60  # longer than MAX_LENGTH
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Question {i}?"},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def stream_of(
    path: Path, tokenizer: Any, *, buffer: int = 1, seed: int = 0, overlong: str = "truncate"
) -> ExampleStream:
    settings = StreamSettings("messages", ColumnMapping(), MAX_LENGTH, overlong=overlong)
    return open_stream(
        f"file://{path}", Access(), tokenizer, settings, seed=seed, buffer_size=buffer
    )


def key(example: TokenizedExample) -> tuple[Any, ...]:
    return (tuple(example.input_ids), tuple(example.labels), example.truncated, example.label)


def take(stream: ExampleStream, n: int) -> list[tuple[Any, ...]]:
    return [key(next(stream)) for _ in range(n)]


@pytest.mark.parametrize("overlong", ["truncate", "drop"])
def test_a_buffer_of_one_yields_the_prepared_examples_in_file_order(
    tmp_path: Path, tiny_tokenizer: Any, overlong: str
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(60))
    validation = write_jsonl(tmp_path / "val.jsonl", colour_rows(4))
    spec = DatasetSpec.model_validate(
        {
            "train": f"file://{train}",
            "validation": f"file://{validation}",
            "deduplicate": False,
            "overlong": overlong,
        }
    )
    prepared = prepare_data(
        tiny_tokenizer, spec, max_length=MAX_LENGTH, seed=0, eval_samples=0, use_cache=False
    )
    stream = stream_of(train, tiny_tokenizer, overlong=overlong)
    n = len(prepared.train)
    assert take(stream, n) == [key(e) for e in prepared.train]
    # The pass ends: the next example is the file's first usable one again.
    assert key(next(stream)) == key(prepared.train[0])
    assert stream.pass_ == 1
    report = stream.report()
    assert report["rowsRead"] == 60 + 1  # a whole pass and the next pass's first row
    first = prepared.train[0]
    assert report["trainTokens"] == prepared.report.train_tokens + first.input_tokens
    assert report["trainedTokens"] == prepared.report.trained_tokens + first.trained_tokens
    assert report["droppedEmpty"] == prepared.report.dropped_empty > 0
    if overlong == "drop":
        assert report["droppedOverlong"] == prepared.report.dropped_overlong > 0
    else:
        assert report["truncated"] == prepared.report.truncated > 0


def test_a_seeded_shuffle_is_deterministic_differs_by_seed_and_by_pass(
    tmp_path: Path, tiny_tokenizer: Any
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(40))
    in_order = one_pass(stream_of(train, tiny_tokenizer))
    usable = len(in_order)
    first = take(stream_of(train, tiny_tokenizer, buffer=8, seed=1), 66)
    again = take(stream_of(train, tiny_tokenizer, buffer=8, seed=1), 66)
    other = take(stream_of(train, tiny_tokenizer, buffer=8, seed=2), 66)
    assert first == again
    assert first != other
    assert first[:usable] != in_order
    # A pass is a permutation of the usable examples; the next pass is drawn again.
    assert sorted(first[:usable]) == sorted(in_order)
    assert first[usable : 2 * usable] != first[:usable]


def one_pass(stream: ExampleStream) -> list[tuple[Any, ...]]:
    """The examples of the stream's first pass."""
    out = []
    while True:
        example = key(next(stream))
        if stream.pass_ > 0:
            return out
        out.append(example)


@pytest.mark.parametrize("buffer", [1, 5, 64])
def test_a_restored_stream_continues_at_the_same_example(
    tmp_path: Path, tiny_tokenizer: Any, buffer: int
) -> None:
    """Property-style: cut anywhere (mid-pass, at and across a pass boundary), go
    through JSON, restore into a new stream: the same examples follow."""
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(30))
    reference = take(stream_of(train, tiny_tokenizer, buffer=buffer, seed=3), 90)
    cuts = sorted([*random.Random(buffer).sample(range(1, 85), 6), 24, 25, 26])
    for cut in cuts:
        stream = stream_of(train, tiny_tokenizer, buffer=buffer, seed=3)
        assert take(stream, cut) == reference[:cut]
        state = json.loads(json.dumps(stream.state_dict()))
        restored = stream_of(train, tiny_tokenizer, buffer=buffer, seed=3)
        restored.load_state_dict(state)
        assert take(restored, 90 - cut) == reference[cut:], f"cut at {cut}"
        assert restored.report() == stream_of_report_after(train, tiny_tokenizer, buffer, 90)


def stream_of_report_after(path: Path, tokenizer: Any, buffer: int, n: int) -> dict[str, Any]:
    stream = stream_of(path, tokenizer, buffer=buffer, seed=3)
    take(stream, n)
    return stream.report()


def test_step_groups_from_a_stream_share_micro_batches_like_the_prepared_plan(
    tmp_path: Path, tiny_tokenizer: Any
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", varied_rows(30))
    spec = TrainingSpec.model_validate({"batchSize": 2, "gradientAccumulation": 3, "maxSteps": 9})
    order = take(stream_of(train, tiny_tokenizer), 2 * 3 * 2 * 9)
    groups = stream_step_groups(stream_of(train, tiny_tokenizer), spec, world_size=2)
    seen = []
    ends = []
    for _ in range(9):
        group = next(groups)
        assert [len(rank) for rank in group.per_rank] == [3, 3]
        batches = [group.per_rank[k % 2][k // 2] for k in range(6)]
        seen += [key(e) for batch in batches for e in batch]
        ends.append(group.end_of_epoch)
    assert seen == order
    assert any(ends)  # 108 examples of a 26-example file: several passes ended


def test_streaming_refuses_a_json_document_naming_the_field_and_the_fix(
    tmp_path: Path,
) -> None:
    path = tmp_path / "train.json"
    path.write_text(json.dumps(colour_rows(3)))
    with pytest.raises(DataError, match=r"dataset\.train .*\.jsonl"):
        open_source(f"file://{path}", Access())


def test_a_missing_file_is_a_storage_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"no such file .*absent\.jsonl"):
        open_source(f"file://{tmp_path / 'absent.jsonl'}", Access())


def test_a_file_without_rows_and_one_without_anything_to_learn_fail_clearly(
    tmp_path: Path, tiny_tokenizer: Any
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="holds no rows"):
        next(stream_of(empty, tiny_tokenizer))
    blank = write_jsonl(tmp_path / "blank.jsonl", [varied_rows(6)[5]] * 3)
    with pytest.raises(DataError, match="no row has anything to learn"):
        next(stream_of(blank, tiny_tokenizer))


def test_a_broken_line_is_named_as_the_prepared_reader_names_it(
    tmp_path: Path, tiny_tokenizer: Any
) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(colour_rows(1)[0]) + "\n\n{not json\n")
    stream = stream_of(path, tiny_tokenizer)
    next(stream)
    with pytest.raises(DataError, match=r"dataset\.train \(file://.*\): line 3 is not valid JSON"):
        next(stream)


GOOD = json.dumps(colour_rows(1)[0]).encode()


@pytest.mark.parametrize(
    ("suffix", "data"),
    [
        (".jsonl", GOOD + b"\n\n" + b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"),
        (".jsonl", GOOD + b'\n{"messages": "caf\xe9"}\n'),
        (".jsonl", GOOD + b'\n{"messages": "\\ud800"}\n'),
        (".jsonl", GOOD + b"\n[1, 2]\n"),
        (".csv", b"prompt,completion\nSay,hi\n\nSay,hi,there\n"),
        (".csv", b"prompt,prompt\nSay,hi\n"),
        (".parquet", b"PAR1 not parquet at all PAR1"),
    ],
)
def test_a_broken_file_is_named_as_the_prepared_reader_names_it(
    tmp_path: Path, tiny_tokenizer: Any, suffix: str, data: bytes
) -> None:
    """One reader for both paths: the stream's message is the prepared reader's, word for
    word (a line nested too deeply too, which the stream once reported in Python's words)."""
    path = tmp_path / f"train{suffix}"
    path.write_bytes(data)
    with pytest.raises(DataError) as prepared:
        read_rows(path, suffix, f"dataset.train (file://{path})")
    fmt = "messages" if suffix == ".jsonl" else "prompt-completion"
    settings = StreamSettings(fmt, ColumnMapping(), MAX_LENGTH)
    uri = f"file://{path}"
    stream = open_stream(uri, Access(), tiny_tokenizer, settings, seed=0, buffer_size=1)
    with pytest.raises(DataError) as streamed:
        take(stream, 3)
    assert str(streamed.value) == str(prepared.value)


def test_csv_and_parquet_stream_as_they_are_prepared(tmp_path: Path, tiny_tokenizer: Any) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"Say {i}", "completion": f"number {i} " * (i % 4 + 1)} for i in range(25)]
    csv_path = tmp_path / "train.csv"
    with csv_path.open("w", newline="") as f:
        import csv

        writer = csv.DictWriter(f, fieldnames=["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    parquet_path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet_path, row_group_size=7)
    validation = write_jsonl(tmp_path / "val.jsonl", rows[:3])
    settings = StreamSettings("prompt-completion", ColumnMapping(), MAX_LENGTH)
    for path in (csv_path, parquet_path):
        spec = DatasetSpec.model_validate(
            {
                "train": f"file://{path}",
                "validation": f"file://{validation}",
                "format": "prompt-completion",
                "deduplicate": False,
            }
        )
        prepared = prepare_data(
            tiny_tokenizer, spec, max_length=MAX_LENGTH, seed=0, eval_samples=0, use_cache=False
        )
        stream = open_stream(
            f"file://{path}", Access(), tiny_tokenizer, settings, seed=0, buffer_size=1
        )
        assert take(stream, len(prepared.train)) == [key(e) for e in prepared.train], path.name
