"""Reading dataset files: every supported type yields the same rows, and a broken file
is reported with its label and where in it the problem is."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import IO, Any

import pytest

from finetune_api.uri import DATA_SUFFIXES
from finetune_trainer.data import loading
from finetune_trainer.data.loading import READERS, SourceRow, iter_rows, read_rows
from finetune_trainer.errors import DataError

ROWS: list[dict[str, Any]] = [
    {"prompt": "2+2=", "completion": "4"},
    {"prompt": "capital of France?", "completion": "Paris, of course"},
    {"prompt": 'quote "this"', "completion": "done"},
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def values(rows: list[SourceRow]) -> list[dict[str, Any]]:
    return [row.data for row in rows]


def problem(path: Path, suffix: str, label: str = "dataset.train") -> str:
    with pytest.raises(DataError) as info:
        read_rows(path, suffix, label)
    return str(info.value)


def test_every_dataset_suffix_has_a_reader() -> None:
    assert set(READERS) == set(DATA_SUFFIXES)


def test_jsonl(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", "".join(json.dumps(r) + "\n" for r in ROWS))

    assert values(read_rows(path, ".jsonl", "dataset.train")) == ROWS


def test_jsonl_skips_blank_lines(tmp_path: Path) -> None:
    text = "\n" + json.dumps(ROWS[0]) + "\n   \n" + json.dumps(ROWS[1])  # no final newline
    path = write(tmp_path / "d.jsonl", text)

    assert values(read_rows(path, ".jsonl", "dataset.train")) == ROWS[:2]


def test_jsonl_reads_utf8(tmp_path: Path) -> None:
    row = {"text": "Grüße, 東京 🙂"}
    path = tmp_path / "d.jsonl"
    path.write_bytes((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    assert values(read_rows(path, ".jsonl", "dataset.train")) == [row]


def test_a_bad_jsonl_line_is_named_by_number(tmp_path: Path) -> None:
    lines = [json.dumps(ROWS[0]), "", json.dumps(ROWS[1]), '{"prompt": "x",', json.dumps(ROWS[2])]
    path = write(tmp_path / "d.jsonl", "\n".join(lines) + "\n")

    with pytest.raises(DataError) as info:
        read_rows(path, ".jsonl", "dataset.train (file://d.jsonl)")
    message = str(info.value)
    assert message.startswith("dataset.train (file://d.jsonl): line 4 is not valid JSON")
    assert "at column 16" in message


def test_json_list(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps(ROWS, indent=2))

    assert values(read_rows(path, ".json", "dataset.train")) == ROWS


def test_json_data_wrapper(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps({"version": 1, "data": ROWS}))

    assert values(read_rows(path, ".json", "dataset.train")) == ROWS


@pytest.mark.parametrize("payload", [{"rows": []}, {"data": "x"}, "just text", 3])
def test_json_that_is_not_a_list_of_rows(tmp_path: Path, payload: Any) -> None:
    path = write(tmp_path / "d.json", json.dumps(payload))

    with pytest.raises(DataError, match=r"dataset.validation: a \.json dataset must be a list"):
        read_rows(path, ".json", "dataset.validation")


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", '[\n  {"a": 1},\n  {"a": 2,}\n]\n')

    with pytest.raises(DataError, match=r"dataset.train: line 3 is not valid JSON"):
        read_rows(path, ".json", "dataset.train")


def test_csv(tmp_path: Path) -> None:
    text = 'prompt,completion\n2+2=,4\ncapital of France?,"Paris, of course"\n'
    text += '"quote ""this""",done\n'
    path = write(tmp_path / "d.csv", text)

    assert values(read_rows(path, ".csv", "dataset.train")) == ROWS


def test_csv_values_stay_text_whatever_they_look_like(tmp_path: Path) -> None:
    # A column of dates or numbers is still the text the model must learn to write.
    text = (
        "prompt,completion,flag,input\n"
        "March 5 2021,2021-03-05,true,\n"
        "May 8 1971,1971-05-08,false,\n"
    )
    path = write(tmp_path / "d.csv", text)

    assert values(read_rows(path, ".csv", "dataset.train")) == [
        {"prompt": "March 5 2021", "completion": "2021-03-05", "flag": "true", "input": ""},
        {"prompt": "May 8 1971", "completion": "1971-05-08", "flag": "false", "input": ""},
    ]


def test_unreadable_csv(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "a,b\n1,2\n\n1,2,3\n")

    assert problem(path, ".csv") == (
        "dataset.train: line 4 has 3 fields but the header (line 1) has 2; "
        "quote fields that contain a comma"
    )


def test_parquet(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    table = pa.Table.from_pylist([*ROWS, {"prompt": "p", "completion": None}])
    path = tmp_path / "d.parquet"
    pq.write_table(table, path)
    nested = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": messages}]), nested)

    assert values(read_rows(path, ".parquet", "dataset.train")) == [
        *ROWS,
        {"prompt": "p", "completion": None},
    ]
    assert values(read_rows(nested, ".parquet", "dataset.train")) == [{"messages": messages}]


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
    ("suffix", "text", "where", "kind"),
    [
        (".jsonl", '{"a": 1}\n[1, 2]\n', "line 2", "list"),
        (".jsonl", '{"a": 1}\n\n{"a": 2}\n"text"\n', "line 4", "str"),
        (".json", '[{"a": 1},\n 5]', "line 2", "int"),
        (".json", '[{"a": 1}, 5]', "line 1 (row 2 of the list)", "int"),
        (".json", '{"data": [null]}', "line 1", "NoneType"),
    ],
)
def test_rows_must_be_objects(
    tmp_path: Path, suffix: str, text: str, where: str, kind: str
) -> None:
    path = write(tmp_path / f"d{suffix}", text)

    assert problem(path, suffix).startswith(f"dataset.train: {where} is {kind}, expected an object")


# --------------------------------------------------------------------------- locations


def test_every_row_knows_its_physical_line(tmp_path: Path) -> None:
    """1-based, blank lines counted: the number an editor shows."""
    text = "\n" + json.dumps(ROWS[0]) + "\n  \n\r\n" + json.dumps(ROWS[1]) + "\n"
    path = write(tmp_path / "d.jsonl", text)

    assert [r.where for r in read_rows(path, ".jsonl", "x")] == ["line 2", "line 5"]


def test_json_rows_know_the_line_they_start_on(tmp_path: Path) -> None:
    path = write(tmp_path / "d.json", json.dumps({"version": 1, "data": ROWS}, indent=2))

    rows = read_rows(path, ".json", "x")

    lines = path.read_text().splitlines()
    starts = [int(r.where.removeprefix("line ")) for r in rows]
    assert values(rows) == ROWS
    assert [lines[n - 1].strip() for n in starts] == ["{"] * 3
    assert lines[starts[1]].strip() == f'"prompt": {json.dumps(ROWS[1]["prompt"])},'


def test_csv_rows_know_their_line_even_after_a_multiline_field(tmp_path: Path) -> None:
    text = 'prompt,completion\n"two\nlines",x\n\nthird,y\n'
    path = write(tmp_path / "d.csv", text)

    rows = read_rows(path, ".csv", "x")

    assert values(rows) == [
        {"prompt": "two\nlines", "completion": "x"},
        {"prompt": "third", "completion": "y"},
    ]
    assert [r.where for r in rows] == ["line 2", "line 5"]


def test_parquet_rows_are_numbered_from_one(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)

    assert [r.where for r in read_rows(path, ".parquet", "x")] == ["row 1", "row 2", "row 3"]


# --------------------------------------------------------------------------- hostile bytes


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv"])
def test_invalid_utf8_is_reported_at_its_line(tmp_path: Path, suffix: str) -> None:
    good = {
        ".jsonl": [b'{"text": "a"}', b'{"text": "b"}', b'{"text": "caf\xe9"}'],
        ".json": [b"[", b'{"text": "b"},', b'{"text": "caf\xe9"}', b"]"],
        ".csv": [b"text", b"b", b"caf\xe9"],
    }[suffix]
    path = tmp_path / f"d{suffix}"
    path.write_bytes(b"\n".join(good) + b"\n")

    message = problem(path, suffix, "dataset.train (file://d)")

    assert message.startswith("dataset.train (file://d): line 3 is not valid UTF-8 (byte 0xe9")
    assert "save the file as UTF-8" in message


def test_a_utf8_byte_order_mark_is_not_part_of_the_data(tmp_path: Path) -> None:
    for suffix, body in ((".jsonl", json.dumps(ROWS[0])), (".csv", "prompt,completion\n2+2=,4")):
        path = tmp_path / f"d{suffix}"
        path.write_bytes(b"\xef\xbb\xbf" + body.encode())

        assert values(read_rows(path, suffix, "x")) == [ROWS[0]]


@pytest.mark.parametrize(
    ("suffix", "text", "where"),
    [
        (".jsonl", '{"text": "ok"}\n\n{"text": "bad \\ud800 here"}\n', "line 3"),
        (".jsonl", '{"text": "ok"}\n{"m": [{"content": "\\udfff"}]}\n', "line 2"),
        (".json", '[{"text": "ok"},\n {"x": {"\\ud83d": 1}}]', "line 2"),
    ],
)
def test_a_lone_surrogate_escape_is_refused_at_its_line(
    tmp_path: Path, suffix: str, text: str, where: str
) -> None:
    path = write(tmp_path / f"d{suffix}", text)

    message = problem(path, suffix)

    assert message.startswith(f"dataset.train: {where} holds the escape \\ud")
    assert "surrogate" in message


def test_a_surrogate_pair_is_one_character_and_fine(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"text": "\\ud83d\\ude00"}\n')

    assert values(read_rows(path, ".jsonl", "x")) == [{"text": "\U0001f600"}]


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_json_nested_too_deeply_is_a_data_error_at_its_line(tmp_path: Path, suffix: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    text = '{"text": "ok"}\n\n{"text": ' + deep + "}\n"
    if suffix == ".json":
        text = "[" + text.replace("}\n\n{", "},\n\n{") + "]"
    path = write(tmp_path / f"d{suffix}", text)

    message = problem(path, suffix)

    assert message.startswith("dataset.train: line 3 is not readable JSON: it is nested too")


def test_an_integer_too_long_to_convert_is_a_data_error(tmp_path: Path) -> None:
    path = write(tmp_path / "d.jsonl", '{"label": ' + "9" * 5000 + "}\n")

    assert problem(path, ".jsonl").startswith("dataset.train: line 1 is not readable JSON (")


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ('[{"a": 1}\n {"a": 2}]', "line 2", "expecting ',' or ']'"),
        ('[{"a": 1}]\n\n[]', "line 3", "extra data"),
        ('[{"a": 1},\n', "line 2", "Expecting value"),
        ('{"data"\n [{"a": 1}]}', "line 2", "expecting ':'"),
    ],
)
def test_broken_json_structure_is_named_by_line(
    tmp_path: Path, text: str, where: str, fragment: str
) -> None:
    path = write(tmp_path / "d.json", text)

    message = problem(path, ".json")

    assert message.startswith(f"dataset.train: {where} is not valid JSON"), message
    assert fragment in message


def test_a_csv_header_naming_a_column_twice_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "\nprompt,prompt\na,b\n")

    assert problem(path, ".csv").startswith(
        "dataset.train: line 2 is a header naming column 'prompt' more than once"
    )


def test_a_long_csv_field_is_data_not_an_error(tmp_path: Path) -> None:
    long = "word " * 100_000
    path = write(tmp_path / "d.csv", f"text\n{long}\n")

    assert values(read_rows(path, ".csv", "x")) == [{"text": long}]


# --------------------------------------------------------------------------- handles


class Trickle(io.BytesIO):
    """A backend's body: a read returns fewer bytes than asked (at most ``step``, a
    whole ``read()`` too), and only ``read`` is used."""

    def __init__(self, data: bytes, step: int = 3) -> None:
        super().__init__(data)
        self.step = step

    def read(self, size: int | None = -1) -> bytes:
        return super().read(self.step if size is None or size < 0 else min(size, self.step))


def outcome(source: Path | IO[bytes], suffix: str) -> list[tuple[Any, str]] | str:
    try:
        return [(r.data, r.where) for r in read_rows(source, suffix, "dataset.train")]
    except DataError as exc:
        return str(exc)


@pytest.mark.parametrize(
    ("suffix", "data"),
    [
        (".jsonl", b'\n{"a": "x"}\n  \n\r\n{"a": "y\\u2028z"}'),  # no final newline
        (".jsonl", b'\xef\xbb\xbf{"a": "bom"}\n{"a": "caf\xc3\xa9 \xf0\x9f\x99\x82"}\n'),
        (".jsonl", b'{"a": "ok"}\n{"a": "ok"}\n{"a": "caf\xe9"}\n'),
        (".jsonl", b'{"a": "ok"}\n\n{"a": "\\ud800"}\n'),
        (".jsonl", b'{"a": "ok"}\n{"a": \n'),
        (".jsonl", b'{"a": 1}\n[1]\n'),
        (".jsonl", b"\n\n"),
        (".csv", b'\xef\xbb\xbfprompt,completion\n"two\nlines",x\n\nthird,y\n'),
        (".csv", b"a,b\n1,2\n\n1,2,3\n"),
        (".csv", b"\nprompt,prompt\na,b\n"),
        (".csv", b"text\nb\ncaf\xe9\n"),
        (".json", b'{"version": 1,\n "data": [{"a": 1},\n {"a": 2}, {"a": 3}]}'),
        (".json", b'[{"a": 1},\n {"x": {"\\ud83d": 1}}]'),
        (".json", b'[{"a": 1}]\n\n[]'),
    ],
)
def test_a_handle_reads_exactly_as_the_file_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str, data: bytes
) -> None:
    """A stream reads a backend's body, not a path: the same rows, locations and
    messages, whatever the reads' sizes (lines spanning reads are joined)."""
    path = tmp_path / f"d{suffix}"
    path.write_bytes(data)
    monkeypatch.setattr(loading, "CHUNK", 4)

    expected = outcome(path, suffix)

    assert outcome(Trickle(data), suffix) == expected
    assert outcome(io.BytesIO(data), suffix) == expected
    assert outcome(Trickle(data, step=1000), suffix) == expected


def test_a_parquet_handle_reads_as_the_file(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)

    assert outcome(io.BytesIO(path.read_bytes()), ".parquet") == outcome(path, ".parquet")
    assert outcome(io.BytesIO(b"not parquet"), ".parquet") == outcome(
        write(tmp_path / "bad.parquet", "not parquet"), ".parquet"
    )


def test_an_empty_file_may_be_allowed_by_its_reader() -> None:
    """A stream counts the rows of all its files itself: one empty file is no error."""
    assert list(iter_rows(io.BytesIO(b"\n\n"), ".jsonl", "x", require_rows=False)) == []
    with pytest.raises(DataError, match="no rows"):
        list(iter_rows(io.BytesIO(b"\n\n"), ".jsonl", "x"))
