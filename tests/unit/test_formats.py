"""Dataset formats: each row becomes a conversation or a raw text, and a row that does
not fit says which row, what is wrong and which ``dataset.columns`` setting fixes it."""

from __future__ import annotations

from typing import Any

import pytest

from finetune_api.config import ColumnMapping
from finetune_trainer.data.formats import FORMATS, Example, to_examples
from finetune_trainer.data.loading import SourceRow
from finetune_trainer.errors import DataError

DEFAULT = ColumnMapping()


def located(*rows: dict[str, Any]) -> list[SourceRow]:
    """Rows as the loader gives them, on lines 1, 3, 5, ... (a blank line between)."""
    return [SourceRow(row, f"line {2 * i + 1}") for i, row in enumerate(rows)]


def convert(fmt: str, row: dict[str, Any], cols: ColumnMapping = DEFAULT) -> Example:
    [example] = to_examples(located(row), fmt, cols, "dataset.train")
    return example


def test_every_declared_format_has_a_converter() -> None:
    from typing import get_args

    from finetune_api.config import DatasetFormat
    from finetune_api.config.data import IMAGE_FORMATS

    # Image formats are read as files by finetune_trainer.vision, not as rows.
    assert set(FORMATS) == set(get_args(DatasetFormat)) - set(IMAGE_FORMATS)


# --------------------------------------------------------------------------- messages


def test_messages_are_kept_in_order() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    example = convert("messages", {"messages": messages})

    assert example.messages == tuple(messages)
    assert example.text is None


def test_messages_extra_keys_are_dropped() -> None:
    row = {
        "messages": [
            {"role": "user", "content": "Hi", "name": "x"},
            {"role": "assistant", "content": "Hello", "weight": 1},
        ]
    }
    example = convert("messages", row)

    assert example.messages == (
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    )


def test_messages_from_a_renamed_column() -> None:
    row = {
        "conversation": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
        ]
    }
    example = convert("messages", row, ColumnMapping(messages="conversation"))

    assert example.answer == "Hello"


def test_unknown_role_is_refused_with_the_allowed_ones() -> None:
    row = {
        "messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    }

    with pytest.raises(DataError) as info:
        convert("messages", row)
    message = str(info.value)
    assert "message 0 has role 'human'" in message
    assert "system, user, assistant" in message


def test_a_conversation_without_an_assistant_turn_is_refused() -> None:
    row = {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    }

    with pytest.raises(DataError, match="no assistant message"):
        convert("messages", row)


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        ([], "must be a non-empty list"),
        ("Hi", "must be a non-empty list"),
        ([{"role": "user"}], "message 0 must be an object with role and content"),
        (["Hi"], "message 0 must be an object with role and content"),
        ([{"role": "user", "content": 3}], "message 0 content must be a string, got int"),
    ],
)
def test_malformed_messages_are_refused(messages: Any, fragment: str) -> None:
    with pytest.raises(DataError, match=fragment):
        convert("messages", {"messages": messages})


# --------------------------------------------------------------------------- instruction


def test_instruction_without_input() -> None:
    example = convert("instruction", {"instruction": "Name a colour.", "output": "red"})

    assert example.messages == (
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "red"},
    )


@pytest.mark.parametrize("empty", [None, ""])
def test_instruction_with_empty_input_is_the_instruction_alone(empty: str | None) -> None:
    example = convert(
        "instruction", {"instruction": "Name a colour.", "input": empty, "output": "red"}
    )

    assert example.messages is not None
    assert example.messages[0]["content"] == "Name a colour."


def test_instruction_with_input_appends_it_after_a_blank_line() -> None:
    row = {"instruction": "Convert to ISO 8601.", "input": "March 5, 2021", "output": "2021-03-05"}
    example = convert("instruction", row)

    assert example.messages == (
        {"role": "user", "content": "Convert to ISO 8601.\n\nMarch 5, 2021"},
        {"role": "assistant", "content": "2021-03-05"},
    )


def test_instruction_with_a_system_column_and_renamed_columns() -> None:
    cols = ColumnMapping(instruction="task", input="context", output="answer", system="persona")
    row = {
        "task": "Convert.",
        "context": "May 8th 1971",
        "answer": "1971-05-08",
        "persona": "You convert dates.",
    }
    example = convert("instruction", row, cols)

    assert example.messages == (
        {"role": "system", "content": "You convert dates."},
        {"role": "user", "content": "Convert.\n\nMay 8th 1971"},
        {"role": "assistant", "content": "1971-05-08"},
    )


def test_a_blank_system_value_adds_no_system_turn() -> None:
    cols = ColumnMapping(system="persona")
    example = convert("instruction", {"instruction": "a", "output": "b", "persona": ""}, cols)

    assert example.messages is not None
    assert [m["role"] for m in example.messages] == ["user", "assistant"]


def test_the_system_column_is_ignored_unless_configured() -> None:
    example = convert("instruction", {"instruction": "a", "output": "b", "system": "x"})

    assert example.messages is not None
    assert [m["role"] for m in example.messages] == ["user", "assistant"]


# --------------------------------------------------------------------------- prompt-completion


def test_prompt_completion() -> None:
    example = convert("prompt-completion", {"prompt": "2+2=", "completion": "4"})

    assert example.messages == (
        {"role": "user", "content": "2+2="},
        {"role": "assistant", "content": "4"},
    )


def test_prompt_completion_with_system_column() -> None:
    cols = ColumnMapping(prompt="q", completion="a", system="sys")
    example = convert("prompt-completion", {"q": "2+2=", "a": "4", "sys": "Maths."}, cols)

    assert example.messages is not None
    assert example.messages[0] == {"role": "system", "content": "Maths."}
    assert example.prompt == (
        {"role": "system", "content": "Maths."},
        {"role": "user", "content": "2+2="},
    )


# --------------------------------------------------------------------------- text


def test_text_rows_become_raw_text() -> None:
    example = convert("text", {"text": "Once upon a time."})

    assert example == Example(text="Once upon a time.")
    assert example.messages is None
    assert example.answer is None
    assert example.prompt is None


def test_text_must_be_a_string() -> None:
    with pytest.raises(DataError, match="text must be a string, got list"):
        convert("text", {"text": ["a", "b"]})


# --------------------------------------------------------------------------- classification


@pytest.mark.parametrize("label", ["positive", 3, 0])
def test_classification_rows_carry_text_and_label(label: str | int) -> None:
    example = convert("classification", {"text": "great film", "label": label})

    assert example == Example(text="great film", label=label)
    assert example.is_classification
    assert example.text_pair is None
    # Not a conversation: no exact-match sample.
    assert example.answer is None and example.prompt is None


def test_classification_pairs_and_renamed_columns() -> None:
    cols = ColumnMapping(text="premise", text_pair="hypothesis", label="gold")
    row = {"premise": "A man sleeps.", "hypothesis": "A person rests.", "gold": "entailment"}

    example = convert("classification", row, cols)

    assert example == Example(text="A man sleeps.", text_pair="A person rests.", label="entailment")


def test_a_configured_pair_column_must_be_there() -> None:
    cols = ColumnMapping(text_pair="hypothesis")
    with pytest.raises(
        DataError, match=r"column 'hypothesis' is missing.*dataset\.columns\.textPair"
    ):
        convert("classification", {"text": "x", "label": 1}, cols)


def test_a_whole_float_label_is_the_integer() -> None:
    # pandas writes an integer column with gaps to Parquet as floats.
    assert convert("classification", {"text": "x", "label": 2.0}).label == 2


@pytest.mark.parametrize(
    ("label", "fragment"),
    [
        (0.5, "string or an integer label, got float 0.5"),
        (True, "string or an integer label, got bool True"),
        (["a"], "got list"),
        ("  ", "holds an empty label"),
    ],
)
def test_bad_labels_are_refused_with_the_row(label: object, fragment: str) -> None:
    with pytest.raises(DataError) as info:
        to_examples(
            located({"text": "x", "label": label}), "classification", DEFAULT, "dataset.train"
        )
    assert str(info.value).startswith("dataset.train: line 1 (format classification):")
    assert fragment in str(info.value)
    assert "column 'label'" in str(info.value)


# --------------------------------------------------------------------------- missing columns


@pytest.mark.parametrize(
    ("fmt", "row", "column", "setting"),
    [
        ("messages", {"conversation": []}, "messages", "messages"),
        ("instruction", {"output": "x"}, "instruction", "instruction"),
        ("instruction", {"instruction": "x"}, "output", "output"),
        ("prompt-completion", {"completion": "x"}, "prompt", "prompt"),
        ("prompt-completion", {"prompt": "x", "completion": None}, "completion", "completion"),
        ("text", {"body": "x"}, "text", "text"),
        ("classification", {"label": "pos"}, "text", "text"),
        ("classification", {"text": "x"}, "label", "label"),
    ],
)
def test_a_missing_column_names_the_setting_and_the_row(
    fmt: str, row: dict[str, Any], column: str, setting: str
) -> None:
    good = {
        "messages": {
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        },
        "instruction": {"instruction": "q", "output": "a"},
        "prompt-completion": {"prompt": "q", "completion": "a"},
        "text": {"text": "t"},
        "classification": {"text": "t", "label": "pos"},
    }[fmt]

    with pytest.raises(DataError) as info:
        to_examples(located(good, good, row), fmt, DEFAULT, "dataset.validation")
    message = str(info.value)
    # The row's own line in the file, as the loader located it.
    assert message.startswith(f"dataset.validation: line 5 (format {fmt}):")
    assert f"column '{column}' is missing" in message
    assert f"set dataset.columns.{setting} " in message
    # It lists what the row does have, so the user can pick the right column.
    for present in row:
        assert present in message


def test_a_renamed_column_that_is_missing_names_the_configured_name() -> None:
    cols = ColumnMapping(prompt="question", completion="answer")

    with pytest.raises(DataError) as info:
        convert("prompt-completion", {"prompt": "q", "answer": "a"}, cols)
    assert "column 'question' is missing (columns: answer, prompt)" in str(info.value)
    assert "dataset.columns.prompt" in str(info.value)


def test_data_error_is_a_trainer_error_with_its_exit_code() -> None:
    with pytest.raises(DataError) as info:
        convert("text", {})
    assert info.value.exit_code == 3
    assert info.value.reason == "InvalidData"


def test_to_examples_converts_every_row_in_order() -> None:
    rows = [{"text": str(i)} for i in range(5)]

    assert [e.text for e in to_examples(located(*rows), "text", DEFAULT, "x")] == list("01234")


# --------------------------------------------------------------------------- Example


def test_prompt_and_answer_of_a_multi_turn_conversation() -> None:
    messages = (
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    )
    example = Example(messages=messages)

    assert example.answer == "d"
    assert example.prompt == messages[:3]


def test_a_conversation_ending_with_a_user_turn_has_no_answer_or_prompt() -> None:
    example = Example(
        messages=({"role": "assistant", "content": "b"}, {"role": "user", "content": "c"})
    )

    assert example.answer is None
    assert example.prompt is None
