"""Dataset formats: one registry entry per ``dataset.format``.

Each entry turns a row into an :class:`Example`: a chat conversation (trained on the
assistant turns only), a raw text (every token trained), or a text to classify (a text,
optionally a second text, and a label). Column names come from ``dataset.columns``; a
missing column is reported with the setting that fixes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from finetune_api.config import ColumnMapping
from finetune_trainer.data.loading import Row, SourceRow
from finetune_trainer.errors import DataError

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


Label = str | int


@dataclass(frozen=True)
class Example:
    """A conversation (``messages``) or a text (``text``); exactly one is set.

    A text with a ``label`` is a classification example (``text_pair`` optionally
    holds its second text); a text without one is continued pretraining.
    """

    messages: tuple[Message, ...] | None = None
    text: str | None = None
    text_pair: str | None = None
    label: Label | None = None

    @property
    def is_classification(self) -> bool:
        return self.label is not None

    @property
    def answer(self) -> str | None:
        """The last assistant turn: the reference for exact match."""
        if not self.messages or self.messages[-1]["role"] != "assistant":
            return None
        return self.messages[-1]["content"]

    @property
    def prompt(self) -> tuple[Message, ...] | None:
        """Everything before the last assistant turn: what the model is asked."""
        return self.messages[:-1] if self.answer is not None and self.messages else None


class RowError(ValueError):
    """What is wrong with one row; the caller adds where."""


def _column(row: Row, name: str, setting: str, *, optional: bool = False) -> object:
    if name not in row or row[name] is None:
        if optional:
            return None
        columns = ", ".join(sorted(map(str, row))) or "none"
        raise RowError(
            f"column '{name}' is missing (columns: {columns}); set dataset.columns.{setting} "
            "to the column that holds it"
        )
    return row[name]


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RowError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _messages(row: Row, cols: ColumnMapping) -> Example:
    raw = _column(row, cols.messages, "messages")
    if not isinstance(raw, list) or not raw:
        raise RowError(f"column '{cols.messages}' must be a non-empty list of {{role, content}}")
    messages = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RowError(f"message {i} must be an object with role and content")
        role = msg["role"]
        if role not in ROLES:
            raise RowError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        messages.append({"role": role, "content": _text(msg["content"], f"message {i} content")})
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("has no assistant message, so there is nothing to learn")
    return Example(messages=tuple(messages))


def _with_system(row: Row, cols: ColumnMapping, turns: list[Message]) -> Example:
    if cols.system is not None:
        system = _column(row, cols.system, "system", optional=True)
        if system:
            turns.insert(0, {"role": "system", "content": _text(system, "system")})
    return Example(messages=tuple(turns))


def _instruction(row: Row, cols: ColumnMapping) -> Example:
    instruction = _text(_column(row, cols.instruction, "instruction"), "instruction")
    context = _column(row, cols.input, "input", optional=True)
    user = f"{instruction}\n\n{_text(context, 'input')}" if context else instruction
    answer = _text(_column(row, cols.output, "output"), "output")
    return _with_system(
        row, cols, [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    )


def _prompt_completion(row: Row, cols: ColumnMapping) -> Example:
    prompt = _text(_column(row, cols.prompt, "prompt"), "prompt")
    completion = _text(_column(row, cols.completion, "completion"), "completion")
    return _with_system(
        row,
        cols,
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}],
    )


def _raw_text(row: Row, cols: ColumnMapping) -> Example:
    return Example(text=_text(_column(row, cols.text, "text"), "text"))


def _label(value: object, column: str) -> Label:
    # Parquet written from pandas stores an integer column with gaps as floats.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise RowError(
            f"column '{column}' must hold a string or an integer label, got "
            f"{type(value).__name__} {value!r}"
        )
    if isinstance(value, str) and not value.strip():
        raise RowError(f"column '{column}' holds an empty label")
    return value


def _classification(row: Row, cols: ColumnMapping) -> Example:
    text = _text(_column(row, cols.text, "text"), "text")
    pair = None
    if cols.text_pair is not None:
        pair = _text(_column(row, cols.text_pair, "textPair"), "textPair")
    label = _label(_column(row, cols.label, "label"), cols.label)
    return Example(text=text, text_pair=pair, label=label)


FORMATS: dict[str, Callable[[Row, ColumnMapping], Example]] = {
    "messages": _messages,
    "instruction": _instruction,
    "prompt-completion": _prompt_completion,
    "text": _raw_text,
    "classification": _classification,
}


def to_examples(rows: list[SourceRow], fmt: str, cols: ColumnMapping, label: str) -> list[Example]:
    """Each row as an :class:`Example`; a row that does not fit the format is reported at
    its location in the file (``label`` names the file)."""
    convert = FORMATS[fmt]
    examples = []
    for row in rows:
        try:
            examples.append(convert(row.data, cols))
        except RowError as exc:
            raise DataError(f"{label}: {row.where} (format {fmt}): {exc}") from None
    return examples
