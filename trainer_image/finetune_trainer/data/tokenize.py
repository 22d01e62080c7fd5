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

A preference pair becomes one :class:`PreferenceExample`: the prompt rendered with the
generation prompt and tokenized alone, then each answer's continuation of the rendered
text tokenized alone and appended. The two sequences therefore share the prompt's
tokens exactly (what the losses compare is the answers, and a BPE merge across the
prompt's end would make the "same" prompt differ between them), and the prompt is
tokenized as generation sees it. Labels cover the answer's assistant turns with their
end-of-turn token, as in supervised training. A prompt of the prompts format becomes a
:class:`PromptExample`: the tokens a model sees when asked to answer it.

Too long, a pair keeps the prompt's *end* (the question right before the answer) and
the answers' *start*: the prompt is cut first, down to half of ``max_length`` at most,
then the answers, so both sides keep something to compare.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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

    @property
    def length(self) -> int:
        """The longest row this example puts in a batch: what length grouping sorts by."""
        return len(self.input_ids)

    @property
    def input_tokens(self) -> int:
        """The tokens this example puts through the model (every text of a pair)."""
        return len(self.input_ids)


def _predicted_labels(labels: Sequence[int]) -> int:
    """Labelled tokens that a preceding token predicts (all but a label at position 0)."""
    return sum(1 for label in labels[1:] if label != IGNORE_INDEX)


@dataclass(frozen=True)
class PreferenceExample(TokenizedExample):
    """A preference pair: ``input_ids``/``labels`` are the prompt and the chosen answer,
    ``rejected_ids``/``rejected_labels`` the same prompt tokens and the rejected answer;
    labels only on the answers. ``reference_logps`` (chosen, rejected): the reference
    policy's summed answer log-probs, when they are computed once before training."""

    rejected_ids: list[int] = field(default_factory=list)
    rejected_labels: list[int] = field(default_factory=list)
    reference_logps: tuple[float, float] | None = None

    @property
    def trained_tokens(self) -> int:
        return super().trained_tokens + sum(1 for t in self.rejected_labels if t != IGNORE_INDEX)

    @property
    def has_target(self) -> bool:
        """Both answers keep at least one predicted label token: a comparison needs two."""
        return _predicted_labels(self.labels) >= 1 and _predicted_labels(self.rejected_labels) >= 1

    @property
    def length(self) -> int:
        return max(len(self.input_ids), len(self.rejected_ids))


@dataclass(frozen=True)
class PromptExample(TokenizedExample):
    """A prompt to answer: ``input_ids`` end with the generation prompt, no labels.
    ``row`` is its index in the prepared train or validation list (so a loss given that
    list finds its ``reference`` answer from a batch's ``row_ids``)."""

    reference: str | None = None
    row: int = 0

    @property
    def has_target(self) -> bool:
        """A prompt is always something to learn from: the target is generated."""
        return True


@dataclass(frozen=True)
class PairExample(TokenizedExample):
    """A sentence-embedding row: ``input_ids`` the anchor, ``positive_ids`` its match,
    ``negative_ids`` a non-match or None; each encoded alone as the encoder reads a
    sentence (special tokens included), no labels (the target is the pairing)."""

    positive_ids: list[int] = field(default_factory=list)
    negative_ids: list[int] | None = None

    @property
    def has_target(self) -> bool:
        """A pair always teaches: its texts are pulled together, others pushed apart."""
        return True

    @property
    def length(self) -> int:
        return max(len(self.input_ids), len(self.positive_ids), len(self.negative_ids or ()))

    @property
    def input_tokens(self) -> int:
        return len(self.input_ids) + len(self.positive_ids) + len(self.negative_ids or ())


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


def _continuation(
    tokenizer: PreTrainedTokenizerBase, prompt: Sequence[Message], answer: Sequence[Message]
) -> tuple[list[int], list[int]]:
    """The tokens the rendered ``answer`` adds after the rendered prompt (with its
    generation prompt), labelled on its assistant turns (end-of-turn included)."""
    before = _render(tokenizer, prompt, generation_prompt=True)
    text, spans = assistant_spans(tokenizer, [*prompt, *answer])
    if not text.startswith(before):
        raise TemplateError(
            "the chat template renders the prompt differently once the answer is added, so "
            "the answer's tokens cannot be located; use a template without that behaviour"
        )
    tail = text[len(before) :]
    spans = [
        (start - len(before), end - len(before)) for start, end in spans if start >= len(before)
    ]
    encoded = tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = encoded["input_ids"]
    labels = [
        token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
        for token, (begin, _) in zip(ids, encoded["offset_mapping"], strict=True)
    ]
    return ids, labels


def _pair_budget(prompt: int, answer: int, max_length: int) -> int:
    """How many prompt tokens (its end) to keep when the prompt and its longest answer
    (``answer`` tokens) must fit ``max_length``: all when they fit; else the prompt gives
    way first, down to half the length, and the answers take the rest (their start)."""
    if prompt + answer <= max_length:
        return prompt
    return min(prompt, max(max_length - answer, max_length // 2))


def tokenize_preference(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[Message],
    chosen: Sequence[Message],
    rejected: Sequence[Message],
    max_length: int,
) -> PreferenceExample:
    """The prompt's tokens shared by both answers, each answer labelled."""
    prompt_ids = generation_prompt_ids(tokenizer, prompt)
    chosen_ids, chosen_labels = _continuation(tokenizer, prompt, chosen)
    rejected_ids, rejected_labels = _continuation(tokenizer, prompt, rejected)
    keep = _pair_budget(len(prompt_ids), max(len(chosen_ids), len(rejected_ids)), max_length)
    room = max_length - keep
    truncated = keep < len(prompt_ids) or max(len(chosen_ids), len(rejected_ids)) > room
    head = prompt_ids[len(prompt_ids) - keep :]
    ignored = [IGNORE_INDEX] * keep
    return PreferenceExample(
        [*head, *chosen_ids[:room]],
        [*ignored, *chosen_labels[:room]],
        truncated=truncated,
        rejected_ids=[*head, *rejected_ids[:room]],
        rejected_labels=[*ignored, *rejected_labels[:room]],
    )


def tokenize_prompt(
    tokenizer: PreTrainedTokenizerBase,
    prompt: Sequence[Message],
    max_length: int,
    reference: str | None = None,
) -> PromptExample:
    """The prompt as generation sees it; too long, its end is kept (the question)."""
    ids = generation_prompt_ids(tokenizer, prompt)
    kept = ids[max(0, len(ids) - max_length) :]
    return PromptExample(
        kept,
        [IGNORE_INDEX] * len(kept),
        truncated=len(kept) < len(ids),
        reference=reference,
    )


def tokenize_pair(
    tokenizer: PreTrainedTokenizerBase,
    anchor: str,
    positive: str,
    negative: str | None,
    max_length: int,
) -> PairExample:
    """Each text as the encoder reads one sentence; too long, a text keeps its start
    (``truncated`` when any of them was cut)."""
    encoded = [
        tokenizer(t, add_special_tokens=True)["input_ids"] if t is not None else None
        for t in (anchor, positive, negative)
    ]
    truncated = any(ids is not None and len(ids) > max_length for ids in encoded)
    if truncated:
        encoded = [
            tokenizer(t, add_special_tokens=True, truncation=True, max_length=max_length)[
                "input_ids"
            ]
            if t is not None
            else None
            for t in (anchor, positive, negative)
        ]
    a, p, n = encoded
    assert a is not None and p is not None
    return PairExample(
        a, [IGNORE_INDEX] * len(a), truncated=truncated, positive_ids=p, negative_ids=n
    )


def tokenize_example(
    tokenizer: PreTrainedTokenizerBase,
    example: Example,
    max_length: int,
    *,
    loss_on: LossOn = "completion",
) -> TokenizedExample:
    """Dispatch on the kind of example; ``truncated`` says when ``max_length`` cut it."""
    if example.pairs:
        assert example.text is not None and example.text_pair is not None
        return tokenize_pair(
            tokenizer, example.text, example.text_pair, example.negative, max_length
        )
    if example.chosen is not None:
        assert example.messages is not None and example.rejected is not None
        return tokenize_preference(
            tokenizer, example.messages, example.chosen, example.rejected, max_length
        )
    if example.prompt_only:
        assert example.messages is not None
        return tokenize_prompt(tokenizer, example.messages, max_length, example.reference)
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
