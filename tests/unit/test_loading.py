"""Reading dataset files: every supported type yields the same rows, and a broken file
is reported with its label and where in it the problem is."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_api.uri import DATA_SUFFIXES
from finetune_trainer.data.loading import READERS, read_rows
from finetune_trainer.errors import DataError

ROWS: list[dict[str, Any]] = [
    {"prompt": "2+2=", "completion": "4"},
    {"prompt": "capital of France?", "completion": "Paris, of course"},
    {"prompt": 'quote "this"', "completion": "done"},
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_every_dataset_suffix_has_a_reader() -> None:
    assert set(READERS) == set(DATA_SUFFIXES)


def test_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS))

    assert read_rows(path, ".jsonl", "dataset.train") == ROWS


def test_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    text = "\n" + json.dumps(ROWS[0]) + "\n   \n" + json.dumps(ROWS[1])  # no final newline
    path = write(tmp_path / "d.jsonl", text)

    assert read_rows(path, ".jsonl", "dataset.train") == ROWS[:2]


def test_jsonl_reads_utf8(tmp_path: Path) -> None:
    row = {"text": "Grüße, 東京 🙂"}
    path = tmp_path / "d.jsonl"
    path.write_bytes((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    assert read_rows(path, ".jsonl", "dataset.train") == [row]


def test_a_bad_jsonl_line_is_named_by_number(tmp_path: Path) -> None:
    lines = [json.dumps(ROWS[0]), "", json.dumps(ROWS[1]), '{"prompt": "x",', json.dumps(ROWS[2])]
    path = write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")

    with pytest.raises(DataError) as info:
        read_rows(path, ".jsonl", "dataset.train (file://d.jsonl)")
    message = str(info.value)
    assert message.startswith("dataset.train (file://d.jsonl): line 4 is not valid JSON")


def test_json_list(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps(ROWS, indent=2))

    assert read_rows(path, ".json", "dataset.train") == ROWS


def test_json_data_wrapper(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps({"version": 1, "data": ROWS}))

    assert read_rows(path, ".json", "dataset.train") == ROWS


@pytest.mark.parametrize("payload", [{"rows": []}, {"data": "x"}, "just text", 3])
def test_json_that_is_not_a_list_of_rows(tmp_path: Path, payload: Any) -> None:
    path = write(tmp_path / "d.json", json.dumps(payload))

    with pytest.raises(DataError, match=r"dataset.validation: a \.json dataset must be a list"):
        read_rows(path, ".json", "dataset.validation")


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '[\n  {"a": 1},\n  {"a": 2,}\n]\n')

    with pytest.raises(DataError, match=r"dataset.train: not valid JSON at line 3"):
        read_rows(path, ".json", "dataset.train")


def test_csv(tmp_path: Path) -> None:
    text = 'prompt,completion\n2+2=,4\ncapital of France?,"Paris, of course"\n'
    text += '"quote ""this""",done\n'
    path = write(tmp_path / "d.csv", text)

    assert read_rows(path, ".csv", "dataset.train") == ROWS


def test_csv_values_stay_text_whatever_they_look_like(tmp_path: Path) -> None:
    # A column of dates or numbers is still the text the model must learn to write.
    text = (
        "prompt,completion,flag,input\n"
        "March 5 2021,2021-03-05,true,\n"
        "May 8 1971,1971-05-08,false,\n"
    )
    path = write(tmp_path / "d.csv", text)

    assert read_rows(path, ".csv", "dataset.train") == [
        {"prompt": "March 5 2021", "completion": "2021-03-05", "flag": "true", "input": ""},
        {"prompt": "May 8 1971", "completion": "1971-05-08", "flag": "false", "input": ""},
    ]


def test_unreadable_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b\n1,2,3\n")

    with pytest.raises(DataError, match=r"dataset\.train: cannot read CSV"):
        read_rows(path, ".csv", "dataset.train")


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    table = pa.Table.from_pylist([*ROWS, {"prompt": "p", "completion": None}])
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    nested = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": messages}]), nested)

    assert read_rows(path, ".parquet", "dataset.train") == [
        *ROWS,
        {"prompt": "p", "completion": None},
    ]
    assert read_rows(nested, ".parquet", "dataset.train") == [{"messages": messages}]


def test_unreadable_parquet(tmp_path: Path) -> None:
    path = write(tmp_path / "d.parquet", "not parquet at all")

    with pytest.raises(DataError, match=r"dataset\.train: cannot read Parquet"):
        read_rows(path, ".parquet", "dataset.train")


@pytest.mark.parametrize(
    ("suffix", "text"),
    [
        (".jsonl", ""),
        (".jsonl", "\n\n  \n"),
        (".json", "[]"),
        (".json", '{"data": []}'),
        (".csv", "prompt,completion\n"),
    ],
)
def test_an_empty_file_is_an_error(tmp_path: Path, suffix: str, text: str) -> None:
    path = write(tmp_path / f"d{suffix}", text)

    with pytest.raises(DataError, match=r"dataset\.train: the file holds no rows"):
        read_rows(path, suffix, "dataset.train")


@pytest.mark.parametrize(
    ("suffix", "text", "kind"),
    [
        (".jsonl", '{"a": 1}\n[1, 2]\n', "list"),
        (".jsonl", '{"a": 1}\n{"a": 2}\n"text"\n', "str"),
        (".json", '[{"a": 1}, 5]', "int"),
        (".json", '{"data": [null]}', "NoneType"),
    ],
)
def test_rows_must_be_objects(tmp_path: Path, suffix: str, text: str, kind: str) -> None:
    path = write(tmp_path / f"d{suffix}", text)
    index = text.count("\n") - 1 if suffix == ".jsonl" else (1 if kind == "int" else 0)

    with pytest.raises(DataError) as info:
        read_rows(path, suffix, "dataset.train")
    assert str(info.value) == f"dataset.train: row {index} is {kind}, expected an object"
