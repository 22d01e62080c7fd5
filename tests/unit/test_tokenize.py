"""The label mask: only assistant turns (with their end-of-turn token) are trained.

Uses the session's tiny ChatML tokenizer, so every expectation is spelled in the text
the template renders; a mask that is off by one token shows up as a wrong string.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from finetune_trainer.data.formats import Example
from finetune_trainer.data.tokenize import (
    IGNORE_INDEX,
    TemplateError,
    TokenizedExample,
    generation_prompt_ids,
    tokenize_chat,
    tokenize_classification,
    tokenize_example,
    tokenize_text,
)

IM_END = "<|im_end|>"

MULTI_TURN = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "What is colour 0?"},
    {"role": "assistant", "content": "red"},
]


def labelled_runs(tokenizer: Any, example: TokenizedExample) -> list[str]:
    """The decoded text of each maximal run of labelled tokens, in order."""
    runs: list[list[int]] = []
    previous_labelled = False
    for label in example.labels:
        labelled = label != IGNORE_INDEX
        if labelled and not previous_labelled:
            runs.append([])
        if labelled:
            runs[-1].append(label)
        previous_labelled = labelled
    return [tokenizer.decode(run) for run in runs]


def test_labels_cover_exactly_each_assistant_turn(tiny_tokenizer: Any) -> None:
    tokenized = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512)

    assert labelled_runs(tiny_tokenizer, tokenized) == [
        f"Paris.{IM_END}\n",
        f"red{IM_END}\n",
    ]
    assert not tokenized.truncated
    assert len(tokenized.labels) == len(tokenized.input_ids)


def test_labels_are_the_input_ids_themselves_where_set(tiny_tokenizer: Any) -> None:
    # The model shifts labels itself; a pre-shifted mask would train on the wrong token.
    tokenized = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512)

    pairs = list(zip(tokenized.input_ids, tokenized.labels, strict=True))
    assert all(label in (IGNORE_INDEX, token) for token, label in pairs)
    assert tokenized.trained_tokens == sum(label != IGNORE_INDEX for _, label in pairs)


def test_input_ids_are_the_whole_rendered_conversation(tiny_tokenizer: Any) -> None:
    tokenized = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512)

    rendered = tiny_tokenizer.apply_chat_template(MULTI_TURN, tokenize=False)
    assert tiny_tokenizer.decode(tokenized.input_ids) == rendered


def test_system_and_user_tokens_are_ignored(tiny_tokenizer: Any) -> None:
    tokenized = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512)

    ignored = [
        t
        for t, lab in zip(tokenized.input_ids, tokenized.labels, strict=True)
        if lab == IGNORE_INDEX
    ]
    ignored_text = tiny_tokenizer.decode(ignored)
    for message in MULTI_TURN:
        if message["role"] != "assistant":
            assert message["content"] in ignored_text
    # The assistant headers are prompt, not answer.
    assert ignored_text.count("<|im_start|>assistant\n") == 2
    assert "Paris" not in ignored_text
    assert "red" not in ignored_text


def test_end_of_turn_token_is_labelled_only_after_assistant_turns(tiny_tokenizer: Any) -> None:
    im_end = tiny_tokenizer.convert_tokens_to_ids(IM_END)
    tokenized = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512)

    im_end_labels = [
        label
        for token, label in zip(tokenized.input_ids, tokenized.labels, strict=True)
        if token == im_end
    ]
    # system, user, assistant, user, assistant: one <|im_end|> each.
    assert im_end_labels == [IGNORE_INDEX, IGNORE_INDEX, im_end, IGNORE_INDEX, im_end]


def test_truncation_keeps_the_start_and_says_so(tiny_tokenizer: Any) -> None:
    full = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512)
    cut = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=20)

    assert cut.truncated
    assert cut.input_ids == full.input_ids[:20]
    assert cut.labels == full.labels[:20]


def test_an_exactly_fitting_example_is_not_truncated(tiny_tokenizer: Any) -> None:
    n = len(tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512).input_ids)

    fitting = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=n)
    assert not fitting.truncated
    assert len(fitting.input_ids) == n
    assert tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=n - 1).truncated


def test_tokenize_text_labels_every_token_and_appends_eos(tiny_tokenizer: Any) -> None:
    text = "colour red green blue"
    tokenized = tokenize_text(tiny_tokenizer, text, max_length=512)

    assert tokenized.input_ids[-1] == tiny_tokenizer.eos_token_id
    assert tokenized.labels == tokenized.input_ids
    assert tiny_tokenizer.decode(tokenized.input_ids) == text + IM_END
    assert not tokenized.truncated


def test_tokenize_text_truncation_keeps_the_start(tiny_tokenizer: Any) -> None:
    text = "the capital of France is Paris " * 10
    full = tokenize_text(tiny_tokenizer, text, max_length=10_000)
    cut = tokenize_text(tiny_tokenizer, text, max_length=16)

    assert cut.truncated
    assert cut.input_ids == full.input_ids[:16]
    assert cut.labels == cut.input_ids


def test_tokenize_example_dispatches_on_kind(tiny_tokenizer: Any) -> None:
    chat = tokenize_example(tiny_tokenizer, Example(messages=tuple(MULTI_TURN)), 512)
    text = tokenize_example(tiny_tokenizer, Example(text="colour red"), 512)

    assert chat == tokenize_chat(tiny_tokenizer, MULTI_TURN, 512)
    assert text == tokenize_text(tiny_tokenizer, "colour red", 512)


def test_generation_prompt_ends_with_the_assistant_header(tiny_tokenizer: Any) -> None:
    prompt = MULTI_TURN[:2]
    ids = generation_prompt_ids(tiny_tokenizer, prompt)

    text = tiny_tokenizer.decode(ids)
    assert text.endswith(f"What is the capital of France?{IM_END}\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\nBe brief.")
    # It is exactly what precedes the first answer in the training rendering, so the
    # model is asked in evaluation the way it was taught.
    trained = tokenize_chat(tiny_tokenizer, MULTI_TURN[:3], max_length=512)
    first_label = next(i for i, lab in enumerate(trained.labels) if lab != IGNORE_INDEX)
    assert trained.input_ids[:first_label] == ids


LAST_ROLE_ONLY = (
    "{% for message in messages %}"
    "{% if loop.last %}{{ '<|im_start|>' + message['role'] + '\n' }}{% endif %}"
    "{{ message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def test_a_template_that_rewrites_earlier_turns_is_refused(tiny_tokenizer: Any) -> None:
    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = LAST_ROLE_ONLY
    messages = MULTI_TURN[1:3]
    # The premise: the prompt alone renders differently from the prompt inside the whole.
    alone = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not whole.startswith(alone)

    with pytest.raises(TemplateError, match="renders earlier turns differently"):
        tokenize_chat(tokenizer, messages, max_length=512)
    # The shared fixture is untouched.
    assert tokenize_chat(tiny_tokenizer, messages, max_length=512).trained_tokens > 0


# --------------------------------------------------------------------------- lossOn: all


def test_loss_on_all_labels_every_token_of_the_conversation(tiny_tokenizer: Any) -> None:
    completion = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512)
    everything = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512, loss_on="all")

    assert everything.input_ids == completion.input_ids
    assert everything.labels == everything.input_ids
    assert everything.trained_tokens == len(everything.input_ids) > completion.trained_tokens


def test_loss_on_all_truncates_like_completion(tiny_tokenizer: Any) -> None:
    full = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=512, loss_on="all")
    cut = tokenize_chat(tiny_tokenizer, MULTI_TURN, max_length=20, loss_on="all")

    assert cut.truncated
    assert cut.input_ids == cut.labels == full.input_ids[:20]


def test_tokenize_example_passes_loss_on_to_chat_only(tiny_tokenizer: Any) -> None:
    chat = Example(messages=tuple(MULTI_TURN))
    assert tokenize_example(tiny_tokenizer, chat, 512, loss_on="all") == tokenize_chat(
        tiny_tokenizer, MULTI_TURN, 512, loss_on="all"
    )
    # Raw text trains on every token either way.
    text = Example(text="colour red")
    assert tokenize_example(tiny_tokenizer, text, 512, loss_on="completion") == tokenize_text(
        tiny_tokenizer, "colour red", 512
    )


# --------------------------------------------------------------------------- classification


@pytest.fixture
def pairing_tokenizer(tiny_tokenizer: Any) -> Any:
    """The tiny tokenizer with a BERT-like post-processor: specials around each text."""
    from tokenizers.processors import TemplateProcessing

    tokenizer = copy.deepcopy(tiny_tokenizer)
    start, end = "<|im_start|>", IM_END
    ids = [(t, tokenizer.convert_tokens_to_ids(t)) for t in (start, end)]
    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single=f"{start} $A {end}", pair=f"{start} $A {end} $B:1 {end}:1", special_tokens=ids
    )
    return tokenizer


def test_classification_encodes_with_the_tokenizers_special_tokens(pairing_tokenizer: Any) -> None:
    tokenized = tokenize_example(
        pairing_tokenizer, Example(text="colour red", label="pos"), max_length=64
    )

    assert pairing_tokenizer.decode(tokenized.input_ids) == f"<|im_start|>colour red{IM_END}"
    # The target is one class, set from the vocabulary later; no token is a label.
    assert tokenized.labels == [IGNORE_INDEX] * len(tokenized.input_ids)
    assert tokenized.label is None
    assert not tokenized.truncated


def test_classification_pairs_are_encoded_as_the_tokenizer_pairs_them(
    pairing_tokenizer: Any,
) -> None:
    tokenized = tokenize_classification(pairing_tokenizer, "colour red", "the answer", 64)

    assert tokenized.input_ids == pairing_tokenizer("colour red", "the answer")["input_ids"]
    assert pairing_tokenizer.decode(tokenized.input_ids) == (
        f"<|im_start|>colour red{IM_END}the answer{IM_END}"
    )


def test_classification_truncation_cuts_the_longer_text_and_keeps_the_specials(
    pairing_tokenizer: Any,
) -> None:
    long_text = "colour red green blue yellow " * 20
    full = tokenize_classification(pairing_tokenizer, long_text, "the answer", 10_000)
    cut = tokenize_classification(pairing_tokenizer, long_text, "the answer", 24)

    assert len(full.input_ids) > 24
    assert cut.truncated
    assert len(cut.input_ids) == 24
    decoded = pairing_tokenizer.decode(cut.input_ids)
    assert decoded.startswith("<|im_start|>colour red")
    assert decoded.endswith(f"{IM_END}the answer{IM_END}")  # the short pair survives whole


# --------------------------------------------------------------------------- failing templates


def test_whatever_a_template_raises_is_a_template_error(tiny_tokenizer: Any) -> None:
    from finetune_trainer.data.tokenize import template_problem

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = (
        "{% if messages[0]['content'] == 'boom' %}{{ raise_exception('boom row') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    boom = [{"role": "user", "content": "boom"}, {"role": "assistant", "content": "a"}]

    with pytest.raises(TemplateError, match="the chat template failed: TemplateError: boom row"):
        tokenize_chat(tokenizer, boom, max_length=512)
    # One row's failure says nothing about the template: a plain conversation renders.
    assert template_problem(tokenizer) is None
    tokenizer.chat_template = "{{ ''.__class__.__mro__ }}"
    problem = template_problem(tokenizer)
    assert problem is not None and problem.startswith("the chat template failed: SecurityError")
