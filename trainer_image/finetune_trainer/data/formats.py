"""Dataset formats: one registry entry per ``dataset.format``.

Each entry turns a row into an :class:`Example`: a chat conversation (trained on the
assistant turns only), a raw text (every token trained), a text to classify (a text,
optionally a second text, and a label), a preference pair (a prompt conversation, a
chosen and a rejected answer) or a prompt to answer (with an optional reference answer).
Column names come from ``dataset.columns``; a missing column is reported with the
setting that fixes it.

In the preference and prompts formats a string is one chat turn (a prompt string is a
user turn, an answer string an assistant turn) and a list is chat messages, so both
render through the model's chat template like every other chat format.
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

    A preference pair has ``chosen`` and ``rejected`` (the answers, assistant turns),
    and ``messages`` holds only the prompt turns they answer, never an answer. So does a
    prompt to answer (``prompt_only``, the prompts format), with its optional
    ``reference`` answer: whether a conversation ends with a user turn does not say
    which it is (the messages format accepts one), so the format says it.
    """

    messages: tuple[Message, ...] | None = None
    text: str | None = None
    text_pair: str | None = None
    label: Label | None = None
    chosen: tuple[Message, ...] | None = None
    rejected: tuple[Message, ...] | None = None
    reference: str | None = None
    prompt_only: bool = False
    negative: str | None = None
    """Format pairs: the text that does not match (``text`` the anchor, ``text_pair``
    its positive); None when the row has none."""
    pairs: bool = False
    """Format pairs: an (anchor, positive[, negative]) row of task sentence-embedding."""

    @property
    def is_classification(self) -> bool:
        return self.label is not None

    @property
    def is_preference(self) -> bool:
        return self.chosen is not None

    @property
    def answer(self) -> str | None:
        """The answer the model should give: the last assistant turn (of the chosen
        answer, for a pair; a prompt's reference answer), the reference for exact match."""
        if self.prompt_only:
            return self.reference
        turns = self.chosen if self.chosen is not None else self.messages
        if not turns or turns[-1]["role"] != "assistant":
            return None
        return turns[-1]["content"]

    @property
    def prompt(self) -> tuple[Message, ...] | None:
        """Everything before that answer: what the model is asked."""
        if self.prompt_only or self.chosen is not None:
            return (self.messages or ()) + (self.chosen or ())[:-1]
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


def _message_list(raw: object, column: str, what: str = "message") -> list[Message]:
    """A non-empty list of {role, content} with known roles, as plain dicts."""
    if not isinstance(raw, list) or not raw:
        raise RowError(f"column '{column}' must be a non-empty list of {{role, content}}")
    messages = []
    for i, msg in enumerate(raw):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise RowError(f"{what} {i} must be an object with role and content")
        role = msg["role"]
        if role not in ROLES:
            raise RowError(f"{what} {i} has role {role!r}; use one of {', '.join(ROLES)}")
        messages.append({"role": role, "content": _text(msg["content"], f"{what} {i} content")})
    return messages


def _messages(row: Row, cols: ColumnMapping) -> Example:
    messages = _message_list(_column(row, cols.messages, "messages"), cols.messages)
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


def _turn_list(raw: object, column: str) -> list[Message]:
    """Chat messages of a column that may also hold a string (the caller's case)."""
    if not isinstance(raw, list):
        raise RowError(
            f"column '{column}' must be a string or a non-empty list of {{role, content}}, "
            f"got {type(raw).__name__}"
        )
    return _message_list(raw, column, f"column '{column}' message")


def _prompt_turns(row: Row, cols: ColumnMapping) -> tuple[Message, ...]:
    """The conversation so far, which an answer continues: a string is one user turn;
    messages must not end with an assistant turn (that would be an answer). The system
    column, when configured, opens it, as in the prompt-completion format."""
    raw = _column(row, cols.prompt, "prompt")
    if isinstance(raw, str):
        turns = [{"role": "user", "content": raw}]
    else:
        turns = _turn_list(raw, cols.prompt)
        if turns[-1]["role"] == "assistant":
            raise RowError(
                f"column '{cols.prompt}' ends with an assistant turn; the prompt is the "
                "conversation the answer continues, so the answer goes in its own column "
                "(dataset.columns.chosen and .rejected for preference pairs, .answer for "
                "prompts)"
            )
    system = _column(row, cols.system, "system", optional=True) if cols.system else None
    if system:
        if turns[0]["role"] == "system":
            raise RowError(
                f"column '{cols.prompt}' already opens with a system turn and column "
                f"'{cols.system}' gives another; unset dataset.columns.system or drop one"
            )
        turns.insert(0, {"role": "system", "content": _text(system, "system")})
    return tuple(turns)


def _answer_turns(row: Row, column: str, setting: str) -> tuple[Message, ...]:
    """An answer: a string is one assistant turn; messages must open and close with an
    assistant turn. A list opening with the user's turn is the usual mistake of a
    dataset that stores whole conversations, so the message says where the prompt goes."""
    raw = _column(row, column, setting)
    if isinstance(raw, str):
        return ({"role": "assistant", "content": raw},)
    turns = _turn_list(raw, column)
    if turns[0]["role"] != "assistant" or turns[-1]["role"] != "assistant":
        raise RowError(
            f"column '{column}' must hold the answer only: assistant turns, starting and "
            f"ending with one (it has roles {', '.join(m['role'] for m in turns)}); the "
            "conversation before the answer goes in the prompt column (dataset.columns.prompt)"
        )
    if any(m["role"] == "system" for m in turns):
        raise RowError(f"column '{column}' has a system turn; put it in the prompt")
    return tuple(turns)


def _stripped(turns: tuple[Message, ...]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"].strip()) for m in turns]


def _preference(row: Row, cols: ColumnMapping) -> Example:
    prompt = _prompt_turns(row, cols)
    chosen = _answer_turns(row, cols.chosen, "chosen")
    rejected = _answer_turns(row, cols.rejected, "rejected")
    if _stripped(chosen) == _stripped(rejected):
        raise RowError(
            f"columns '{cols.chosen}' and '{cols.rejected}' hold the same answer, so there is "
            "no preference to learn; remove the row, or check that dataset.columns.chosen and "
            ".rejected name different columns"
        )
    return Example(messages=prompt, chosen=chosen, rejected=rejected)


def _prompts(row: Row, cols: ColumnMapping) -> Example:
    prompt = _prompt_turns(row, cols)
    reference = _column(row, cols.answer, "answer", optional=True)
    return Example(
        messages=prompt,
        reference=None if reference is None else _text(reference, f"column '{cols.answer}'"),
        prompt_only=True,
    )


def _pairs(row: Row, cols: ColumnMapping) -> Example:
    """An anchor and its positive (``text``, ``text_pair``), and a negative when the row
    has one: a blank negative is none (a triplet loss then says which rows lack one)."""
    anchor = _text(_column(row, cols.anchor, "anchor"), f"column '{cols.anchor}'")
    positive = _text(_column(row, cols.positive, "positive"), f"column '{cols.positive}'")
    raw = _column(row, cols.negative, "negative", optional=True)
    negative = None if raw is None else _text(raw, f"column '{cols.negative}'")
    return Example(
        text=anchor,
        text_pair=positive,
        negative=negative if negative and negative.strip() else None,
        pairs=True,
    )


FORMATS: dict[str, Callable[[Row, ColumnMapping], Example]] = {
    "messages": _messages,
    "instruction": _instruction,
    "prompt-completion": _prompt_completion,
    "text": _raw_text,
    "classification": _classification,
    "preference": _preference,
    "prompts": _prompts,
    "pairs": _pairs,
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
