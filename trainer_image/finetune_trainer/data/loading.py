"""Reading dataset files into rows (dicts): jsonl and json with the standard library,
csv and parquet with pyarrow. Errors name the file and the row so the user can fix it."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetune_trainer.errors import DataError

Row = dict[str, Any]
"""One row of a dataset file: column name to value (whatever JSON, CSV or Parquet held)."""

Reader = Callable[[Path, str], list[object]]
"""(path, label for messages) -> the file's rows, not yet checked to be mappings."""


def _read_jsonl(path: Path, label: str) -> list[object]:
    rows: list[object] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{label}: line {number} is not valid JSON ({exc.msg})") from None
    return rows


def _read_json(path: Path, label: str) -> list[object]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{label}: not valid JSON at line {exc.lineno} ({exc.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(f'{label}: a .json dataset must be a list of rows (or {{"data": [...]}})')
    return data


def _read_csv(path: Path, label: str) -> list[object]:
    import csv

    import pyarrow as pa
    import pyarrow.csv as pcsv

    # Every column is text: left to inference, pyarrow would turn answers such as
    # 2021-03-05 or 4 into dates and numbers, which the formats rightly refuse.
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
        text = pcsv.ConvertOptions(column_types={name: pa.string() for name in header})
        rows: list[object] = pcsv.read_csv(path, convert_options=text).to_pylist()
    except Exception as exc:  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"{label}: cannot read CSV: {exc}") from None
    return rows


def _read_parquet(path: Path, label: str) -> list[object]:
    import pyarrow.parquet as pq

    try:
        rows: list[object] = pq.read_table(path).to_pylist()
    except Exception as exc:
        raise DataError(f"{label}: cannot read Parquet: {exc}") from None
    return rows


READERS: dict[str, Reader] = {
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def read_rows(path: Path, suffix: str, label: str) -> list[Row]:
    """All rows of ``path``; every row must be a mapping."""
    rows: list[Row] = []
    for index, row in enumerate(READERS[suffix](path, label)):
        if not isinstance(row, dict):
            raise DataError(f"{label}: row {index} is {type(row).__name__}, expected an object")
        rows.append(row)
    if not rows:
        raise DataError(f"{label}: the file holds no rows")
    return rows
