"""Tokenizing examples and building the label mask: the heart of supervised fine-tuning.

For chat data the model's own chat template renders the conversation, and only the
assistant turns carry labels; the rest is ``IGNORE_INDEX``. Each assistant span runs
from the end of the generation prompt to the end of that turn as the template renders
it, so the end-of-turn token (``<|im_end|>``, ``<|eot_id|>``, EOS) is *in* the labels and
the model learns to stop. Spans are found on the rendered text and mapped to tokens
through the tokenizer's offsets, which works for any template whose rendering of a
conversation prefix is a prefix of the whole; templates that rewrite earlier turns are
reported rather than silently mis-masked. With ``training.lossOn: all`` every token of
the conversation is a label instead.

Classification examples are encoded as the tokenizer encodes a text (or a text pair)
for a sequence classifier, special tokens included; their target is one class id
(``TokenizedExample.label``), not a token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from finetune_trainer.data.formats import Example, Message

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100

LossOn = Literal["completion", "all"]


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]
    """Per-token labels (``IGNORE_INDEX`` where no loss); all ignored for classification."""
    truncated: bool = False
    label: int | None = None
    """Classification: the class id (see ``data.labels``); None for language modelling."""

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def has_target(self) -> bool:
        """Whether training on this example teaches anything: a class, or two labelled
        tokens (the first label is never predicted, there is nothing before it)."""
        return self.label is not None or self.trained_tokens >= 2


class TemplateError(ValueError):
    """The chat template cannot be used for masked training, or failed on this
    conversation; the message says why."""


PLAIN_CONVERSATION: tuple[Message, ...] = (
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hello! How can I help?"},
)
"""A conversation every chat template must render: one user turn, one answer."""


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message], *, generation_prompt: bool
) -> str:
    """The conversation as the chat template renders it.

    A template is a program shipped with the model, and it judges the conversation: it
    may ``raise_exception("Conversation roles must alternate ...")``, trip the jinja
    sandbox (``SecurityError``), hit an undefined variable or a type error, or be absent
    (transformers raises ValueError). Whatever it raises becomes a :class:`TemplateError`
    for the caller to place; only running out of memory stays what it is."""
    try:
        text = tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt
        )
    except MemoryError:
        raise
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise TemplateError(
            f"the chat template failed: {type(exc).__name__}" + (f": {reason}" if reason else "")
        ) from exc
    return str(text)


def template_problem(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """Why the chat template cannot be used for training at all (it fails on
    :data:`PLAIN_CONVERSATION`), or None when it can: a template failing on one row says
    something about the row, one failing on this says something about the template."""
    try:
        assistant_spans(tokenizer, PLAIN_CONVERSATION)
    except TemplateError as exc:
        return str(exc)
    return None


def assistant_spans(
    tokenizer: PreTrainedTokenizerBase, messages: Sequence[Message]
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of its assistant turns."""
    full = _render(tokenizer, messages, generation_prompt=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or i == 0:
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not full.startswith(before) or not full.startswith(through):
            raise TemplateError(
                "the chat template renders earlier turns differently once later turns are "
                "added, so assistant tokens cannot be located; use a template without that "
                "behaviour"
            )
        if len(through) > len(before):
            spans.append((len(before), len(through)))
    return full, spans


def tokenize_chat(
    tokenizer: PreTrainedTokenizerBase,
    messages: Sequence[Message],
    max_length: int,
    *,
    loss_on: LossOn = "completion",
) -> TokenizedExample:
    """Input ids for the whole conversation; labels on assistant turns only, or on every
    token with ``loss_on="all"``."""
    if loss_on == "all":
        ids = _encode_plain(tokenizer, _render(tokenizer, messages, generation_prompt=False))
        return _truncate(ids, list(ids), max_length)
    text, spans = assistant_spans(tokenizer, messages)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return _truncate(ids, labels, max_length)


def tokenize_text(
    tokenizer: PreTrainedTokenizerBase, text: str, max_length: int
) -> TokenizedExample:
    """Continued pretraining: every token is a label, and EOS closes the document."""
    ids: list[int] = tokenizer(text, add_special_tokens=True)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = [*ids, tokenizer.eos_token_id]
    return _truncate(ids, list(ids), max_length)


def _encode_plain(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids


def tokenize_classification(
    tokenizer: PreTrainedTokenizerBase, text: str, pair: str | None, max_length: int
) -> TokenizedExample:
    """The text (and pair) as the tokenizer encodes them for a classifier, special tokens
    included; too long, the longer of the two texts is cut first (``longest_first``).
    The class id is set by the caller, which knows the label vocabulary."""
    ids: list[int] = tokenizer(text, pair, add_special_tokens=True)["input_ids"]
    truncated = len(ids) > max_length
    if truncated:
        ids = tokenizer(
            text, pair, add_special_tokens=True, truncation="longest_first", max_length=max_length
        )["input_ids"]
    return TokenizedExample(ids, [IGNORE_INDEX] * len(ids), truncated=truncated)


def _truncate(ids: list[int], labels: list[int], max_length: int) -> TokenizedExample:
    if len(ids) <= max_length:
        return TokenizedExample(ids, labels)
    return TokenizedExample(ids[:max_length], labels[:max_length], truncated=True)


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: Example,
    max_length: int,
    *,
    loss_on: LossOn = "completion",
) -> TokenizedExample:
    """Dispatch on the kind of example; ``truncated`` says when ``max_length`` cut it."""
    if example.messages is not None:
        return tokenize_chat(tokenizer, example.messages, max_length, loss_on=loss_on)
    assert example.text is not None
    if example.is_classification:
        return tokenize_classification(tokenizer, example.text, example.text_pair, max_length)
    return tokenize_text(tokenizer, example.text, max_length)


def generation_prompt_ids(
    tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Message]
) -> list[int]:
    """The tokens a model sees when asked to answer ``prompt``."""
    text = _render(tokenizer, prompt, generation_prompt=True)
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids
