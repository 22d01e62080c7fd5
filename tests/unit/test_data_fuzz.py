"""Property tests: whatever a data file holds, reading and checking it (the run's own
functions: read_rows, to_examples, clean, tokenize) either yields examples or raises a
DataError (exit 3) that points at a 1-based line inside the file; never another
exception, which the trainer would report as "unexpected" (exit 1, retried)."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune_api.config import ColumnMapping, DatasetFormat
from finetune_api.config.data import IMAGE_FORMATS
from finetune_trainer.data.cleaning import clean
from finetune_trainer.data.formats import Example, to_examples
from finetune_trainer.data.loading import read_rows
from finetune_trainer.data.tokenize import tokenize_example
from finetune_trainer.errors import DataError

FORMATS: tuple[str, ...] = tuple(f for f in get_args(DatasetFormat) if f not in IMAGE_FORMATS)
"""Every format whose rows are records (images are files, read by finetune_trainer.vision)."""
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
LOCATION = re.compile(r" line (\d+)[ :]")


def load_and_check(data: bytes, suffix: str, fmt: str) -> list[Example]:
    """The run's path from a file's bytes to clean examples."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / f"d{suffix}"
        path.write_bytes(data)
        rows = read_rows(path, suffix, "dataset.train (file://d)")
        examples = to_examples(rows, fmt, ColumnMapping(), "dataset.train (file://d)")
    kept, _ = clean(examples, deduplicate=True)
    return [examples[i] for i in kept]


def outcome(data: bytes, suffix: str, fmt: str) -> list[Example] | DataError:
    """Examples, or the DataError, checked to name a line within the file (if any)."""
    try:
        return load_and_check(data, suffix, fmt)
    except DataError as exc:
        message = str(exc)
        assert message.startswith("dataset.train (file://d)"), message
        lines = data.count(b"\n") + 1
        for found in LOCATION.finditer(message):
            assert 1 <= int(found.group(1)) <= lines, (message, lines)
        return exc


# --------------------------------------------------------------------------- strategies

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
surrogate_escapes = st.integers(0xD800, 0xDFFF).map(lambda c: f'"\\u{c:04x}"')
jsonish_lines = st.one_of(
    json_values.map(lambda v: json.dumps(v, ensure_ascii=False)),
    st.text(max_size=40),
    st.just(""),
    st.just("   "),
    surrogate_escapes.map(lambda s: '{"text": ' + s + "}"),
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 50).map(lambda n: '{"text": "' + "x" * n),  # cut short
)
roles = st.sampled_from(["user", "assistant", "system", "tool", "", 3])
contents = st.one_of(
    st.text(max_size=20), st.integers(), st.none(), st.lists(st.text(), max_size=2)
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"role": roles, "content": contents}),
        st.fixed_dictionaries({"role": roles}),
        json_values,
    ),
    max_size=4,
)
fields = st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.none(), st.booleans())
columns = [
    "messages",
    "instruction",
    "input",
    "output",
    "prompt",
    "completion",
    "text",
    "label",
    "chosen",
    "rejected",
    "answer",
]
near_valid_rows = st.dictionaries(
    st.sampled_from(columns),
    st.one_of(fields, messages),
    max_size=len(columns),
)
valid_rows = st.one_of(
    st.builds(
        lambda q, a: {
            "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        },
        st.text(max_size=30),
        st.text(max_size=30),
    ),
    st.builds(lambda t: {"text": t}, st.text(max_size=60)),
    st.builds(
        lambda p, c, r: {"prompt": p, "chosen": c, "rejected": r, "answer": c},
        st.text(max_size=30) | messages,
        st.text(max_size=30) | messages,
        st.text(max_size=30) | messages,
    ),
)


# --------------------------------------------------------------------------- properties


@FUZZ
@given(data=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_arbitrary_bytes_are_rows_or_a_data_error_at_a_line(data: bytes, suffix: str) -> None:
    outcome(data, suffix, "text")


@FUZZ
@given(lines=st.lists(jsonish_lines, max_size=8), fmt=st.sampled_from(FORMATS))
def test_jsonish_lines_are_rows_or_a_data_error_at_a_line(lines: list[str], fmt: str) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    result = outcome(data, ".jsonl", fmt)
    if isinstance(result, DataError) and "line" in str(result):
        # The line named is the first one that is wrong: every line before it is fine.
        found = LOCATION.search(str(result))
        assert found is not None
        bad = int(found.group(1))
        assert lines[bad - 1].strip(" \t\r\n"), "a blank line was blamed"


@FUZZ
@given(
    rows=st.lists(near_valid_rows, min_size=1, max_size=6),
    fmt=st.sampled_from(FORMATS),
    as_json=st.booleans(),
)
def test_near_valid_rows_of_every_format_are_examples_or_a_data_error(
    rows: list[dict[str, Any]], fmt: str, as_json: bool
) -> None:
    if as_json:
        outcome(json.dumps(rows, indent=1).encode(), ".json", fmt)
    else:
        outcome("".join(json.dumps(r) + "\n" for r in rows).encode(), ".jsonl", fmt)


@pytest.mark.parametrize("fmt", ["messages", "text", "preference", "prompts"])
@FUZZ
@given(rows=st.lists(valid_rows | near_valid_rows, min_size=1, max_size=4))
def test_whatever_passes_the_checks_tokenizes(
    tiny_tokenizer: Any, fmt: str, rows: list[dict[str, Any]]
) -> None:
    result = outcome("".join(json.dumps(r) + "\n" for r in rows).encode(), ".jsonl", fmt)
    if isinstance(result, list):
        for example in result:
            tokenize_example(tiny_tokenizer, example, 64)
