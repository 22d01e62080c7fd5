"""The data of the preference and reinforcement tasks (issue 14): the preference and
prompts formats, pair and prompt tokenization, their batches, cleaning, the cache, and
prepare_data end to end. Every expectation is spelled in the text the tiny ChatML
tokenizer renders, so a mask off by one token shows up as a wrong string."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import write_jsonl
from finetune_api.config import ColumnMapping, DatasetSpec
from finetune_trainer.data import cache, prepare
from finetune_trainer.data.batching import collate
from finetune_trainer.data.cleaning import clean, content_key, is_empty
from finetune_trainer.data.formats import Example, to_examples
from finetune_trainer.data.loading import SourceRow
from finetune_trainer.data.prepare import PreparedData, prepare_data
from finetune_trainer.data.tokenize import (
    IGNORE_INDEX,
    PreferenceExample,
    PromptExample,
    TokenizedExample,
    generation_prompt_ids,
    tokenize_chat,
    tokenize_example,
    tokenize_preference,
)
from finetune_trainer.errors import DataError
from finetune_trainer.steps import step_groups

IM_END = "<|im_end|>"
DEFAULT = ColumnMapping()
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PARIS = [{"role": "assistant", "content": "Paris."}]
RED = [{"role": "assistant", "content": "red"}]


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write a new file in ``path``'s place (a new inode, as the cache itself writes):
    the tables an earlier preparation mapped keep their content; rewriting the mapped
    file in place would pull the pages from under them (SIGBUS)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def rows(*data: dict[str, Any]) -> list[SourceRow]:
    return [SourceRow(row, f"line {i + 1}") for i, row in enumerate(data)]


def convert(fmt: str, *data: dict[str, Any], cols: ColumnMapping = DEFAULT) -> list[Example]:
    return to_examples(rows(*data), fmt, cols, "dataset.train (file://d.jsonl)")


GOOD_ROWS = {
    "preference": {"prompt": "ok", "chosen": "a", "rejected": "b"},
    "prompts": {"prompt": "ok", "answer": "a"},
}


def refusal(fmt: str, row: dict[str, Any], cols: ColumnMapping = DEFAULT) -> str:
    """The error for ``row``, after a good row: the error names line 2."""
    with pytest.raises(DataError) as caught:
        convert(fmt, GOOD_ROWS[fmt], row, cols=cols)
    return str(caught.value)


def decoded_labels(tokenizer: Any, labels: list[int]) -> str:
    return str(tokenizer.decode([t for t in labels if t != IGNORE_INDEX]))


# --------------------------------------------------------------------------- formats


def test_preference_strings_are_one_user_turn_and_one_assistant_turn_each() -> None:
    (example,) = convert("preference", {"prompt": "q?", "chosen": "yes", "rejected": "no"})

    assert example.messages == ({"role": "user", "content": "q?"},)
    assert example.chosen == ({"role": "assistant", "content": "yes"},)
    assert example.rejected == ({"role": "assistant", "content": "no"},)
    assert example.is_preference and not example.prompt_only
    # The validation sample: the prompt, with the chosen answer as the reference.
    assert example.prompt == example.messages
    assert example.answer == "yes"


def test_preference_messages_renamed_columns_and_a_system_column() -> None:
    row = {
        "conv": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"},
        ],
        "good": [{"role": "assistant", "content": "d"}],
        "bad": "e",
        "sys": "Be brief.",
    }
    cols = ColumnMapping(prompt="conv", chosen="good", rejected="bad", system="sys")

    (example,) = convert("preference", row, cols=cols)

    assert example.messages is not None
    assert [m["content"] for m in example.messages] == ["Be brief.", "a", "b", "c"]
    assert example.chosen == ({"role": "assistant", "content": "d"},)
    assert example.rejected == ({"role": "assistant", "content": "e"},)


def test_a_multi_turn_answer_gives_the_sample_its_last_turn() -> None:
    chosen = [
        {"role": "assistant", "content": "Which one?"},
        {"role": "user", "content": "France"},
        {"role": "assistant", "content": "Paris."},
    ]
    (example,) = convert("preference", {"prompt": "capital?", "chosen": chosen, "rejected": "x"})

    assert example.answer == "Paris."
    assert example.prompt is not None
    assert [m["content"] for m in example.prompt] == ["capital?", "Which one?", "France"]


@pytest.mark.parametrize(
    ("row", "fragments"),
    [
        ({"chosen": "a", "rejected": "b"}, ["line 2", "column 'prompt'", "dataset.columns.prompt"]),
        ({"prompt": "q", "rejected": "b"}, ["line 2", "column 'chosen'", "dataset.columns.chosen"]),
        ({"prompt": "q", "chosen": "a"}, ["column 'rejected'", "dataset.columns.rejected"]),
        (
            {"prompt": "q", "chosen": " same", "rejected": "same\n"},
            ["line 2", "same answer", "dataset.columns.chosen"],
        ),
        (
            {"prompt": PARIS, "chosen": "a", "rejected": "b"},
            ["line 2", "ends with an assistant turn", "dataset.columns.chosen"],
        ),
        (
            {"prompt": "q", "chosen": [*QUESTION, *PARIS], "rejected": "b"},
            ["column 'chosen'", "answer only", "dataset.columns.prompt"],
        ),
        ({"prompt": "q", "chosen": 3, "rejected": "b"}, ["column 'chosen'", "non-empty list"]),
        ({"prompt": [], "chosen": "a", "rejected": "b"}, ["column 'prompt'", "non-empty list"]),
        (
            {"prompt": [{"role": "robot", "content": "q"}], "chosen": "a", "rejected": "b"},
            ["role 'robot'"],
        ),
    ],
)
def test_bad_preference_rows_name_the_row_the_column_and_the_setting(
    row: dict[str, Any], fragments: list[str]
) -> None:
    message = refusal("preference", row)

    assert message.startswith("dataset.train (file://d.jsonl): line 2 (format preference)")
    for fragment in fragments:
        assert fragment in message


def test_two_system_turns_are_refused() -> None:
    row = {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}],
        "chosen": "a",
        "rejected": "b",
        "sys": "t",
    }
    message = refusal("preference", row, ColumnMapping(system="sys"))

    assert "dataset.columns.system" in message


def test_prompts_rows_with_and_without_a_reference_answer() -> None:
    with_answer, without = convert(
        "prompts", {"prompt": "2+2?", "answer": "4"}, {"prompt": QUESTION}
    )

    assert with_answer.messages == ({"role": "user", "content": "2+2?"},)
    assert with_answer.prompt_only and with_answer.reference == "4"
    assert with_answer.prompt == with_answer.messages and with_answer.answer == "4"
    assert without.messages == tuple(QUESTION)
    assert without.reference is None and without.answer is None


def test_a_prompts_reference_must_be_a_string() -> None:
    message = refusal("prompts", {"prompt": "q", "answer": 4})

    assert "line 2" in message and "column 'answer'" in message


# --------------------------------------------------------------------------- tokenize


def test_both_sequences_share_the_prompt_tokens_exactly(tiny_tokenizer: Any) -> None:
    pair = tokenize_preference(tiny_tokenizer, QUESTION, PARIS, RED, 512)
    prompt = generation_prompt_ids(tiny_tokenizer, QUESTION)

    assert pair.input_ids[: len(prompt)] == prompt
    assert pair.rejected_ids[: len(prompt)] == prompt
    assert pair.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert pair.rejected_labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert not pair.truncated


def test_labels_cover_each_answer_with_its_end_of_turn(tiny_tokenizer: Any) -> None:
    pair = tokenize_preference(tiny_tokenizer, QUESTION, PARIS, RED, 512)

    assert decoded_labels(tiny_tokenizer, pair.labels) == f"Paris.{IM_END}\n"
    assert decoded_labels(tiny_tokenizer, pair.rejected_labels) == f"red{IM_END}\n"
    # The same tokens and mask as supervised training on prompt + answer.
    sft = tokenize_chat(tiny_tokenizer, [*QUESTION, *PARIS], 512)
    assert (pair.input_ids, pair.labels) == (sft.input_ids, sft.labels)
    assert pair.has_target and pair.length == len(pair.input_ids)
    assert pair.trained_tokens == sft.trained_tokens + len(
        [t for t in pair.rejected_labels if t != IGNORE_INDEX]
    )


def test_earlier_assistant_turns_of_the_prompt_are_not_labelled(tiny_tokenizer: Any) -> None:
    prompt = [*QUESTION, *PARIS, {"role": "user", "content": "What is colour 0?"}]
    pair = tokenize_preference(
        tiny_tokenizer, prompt, RED, [{"role": "assistant", "content": "blue"}], 512
    )

    assert decoded_labels(tiny_tokenizer, pair.labels) == f"red{IM_END}\n"
    assert decoded_labels(tiny_tokenizer, pair.rejected_labels) == f"blue{IM_END}\n"


def test_overlong_pairs_keep_the_prompt_end_and_the_answer_start(tiny_tokenizer: Any) -> None:
    long_prompt = [{"role": "user", "content": "the colour of the answer is " * 20 + "?"}]
    long_answer = [{"role": "assistant", "content": "red green blue yellow " * 20}]
    full = tokenize_preference(tiny_tokenizer, long_prompt, long_answer, RED, 4096)
    prompt = generation_prompt_ids(tiny_tokenizer, long_prompt)
    answer = full.input_ids[len(prompt) :]
    assert len(prompt) > 40 and len(answer) > 40

    cut = tokenize_preference(tiny_tokenizer, long_prompt, long_answer, RED, 40)

    assert cut.truncated
    assert len(cut.input_ids) == 40 and len(cut.labels) == 40
    # Half the budget each: the prompt's last 20 tokens, the long answer's first 20.
    assert cut.input_ids == prompt[-20:] + answer[:20]
    assert cut.rejected_ids[:20] == prompt[-20:]
    assert decoded_labels(tiny_tokenizer, cut.rejected_labels) == f"red{IM_END}\n"
    assert cut.has_target


def test_a_short_answer_leaves_the_rest_to_the_prompt(tiny_tokenizer: Any) -> None:
    long_prompt = [{"role": "user", "content": "the colour of the answer is " * 20 + "?"}]
    prompt = generation_prompt_ids(tiny_tokenizer, long_prompt)
    short = tokenize_preference(tiny_tokenizer, long_prompt, PARIS, RED, 4096)
    answer = short.input_ids[len(prompt) :]

    cut = tokenize_preference(tiny_tokenizer, long_prompt, PARIS, RED, 30)

    assert cut.input_ids == prompt[-(30 - len(answer)) :] + answer
    assert decoded_labels(tiny_tokenizer, cut.labels) == f"Paris.{IM_END}\n"


def test_prompts_tokenize_to_the_generation_prompt_without_labels(tiny_tokenizer: Any) -> None:
    example = Example(messages=tuple(QUESTION), reference="Paris.", prompt_only=True)

    tokens = tokenize_example(tiny_tokenizer, example, 512)

    assert isinstance(tokens, PromptExample)
    assert tokens.input_ids == generation_prompt_ids(tiny_tokenizer, QUESTION)
    assert str(tiny_tokenizer.decode(tokens.input_ids)).endswith("<|im_start|>assistant\n")
    assert set(tokens.labels) == {IGNORE_INDEX}
    assert tokens.reference == "Paris." and tokens.has_target

    cut = tokenize_example(tiny_tokenizer, example, 5)
    assert cut.truncated and cut.input_ids == tokens.input_ids[-5:]


# --------------------------------------------------------------------------- batches


def pair(chosen: list[int], rejected: list[int], refs: tuple[float, float] | None = None) -> Any:
    labels = [IGNORE_INDEX, *chosen[1:]]
    return PreferenceExample(
        chosen,
        labels,
        rejected_ids=rejected,
        rejected_labels=[IGNORE_INDEX, *rejected[1:]],
        reference_logps=refs,
    )


def test_pairs_collate_to_chosen_rows_then_rejected_rows_right_padded() -> None:
    batch = collate([pair([1, 2, 3], [1, 4]), pair([5, 6], [5, 7, 8, 9])], pad_id=0)

    assert batch["input_ids"].tolist() == [
        [1, 2, 3, 0],
        [5, 6, 0, 0],
        [1, 4, 0, 0],
        [5, 7, 8, 9],
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 0],
        [1, 1, 0, 0],
        [1, 1, 0, 0],
        [1, 1, 1, 1],
    ]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 2, 3, IGNORE_INDEX],
        [IGNORE_INDEX, 6, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, 4, IGNORE_INDEX, IGNORE_INDEX],
        [IGNORE_INDEX, 7, 8, 9],
    ]
    assert "reference_logps" not in batch


def test_reference_logps_travel_in_row_order_only_when_every_pair_has_them() -> None:
    batch = collate([pair([1, 2], [1, 3], (-1.0, -2.0)), pair([4, 5], [4, 6], (-3.0, -4.5))], 0)

    assert batch["reference_logps"].tolist() == [-1.0, -3.0, -2.0, -4.5]
    mixed = collate([pair([1, 2], [1, 3], (-1.0, -2.0)), pair([4, 5], [4, 6])], 0)
    assert "reference_logps" not in mixed


def test_prompts_collate_left_padded_with_their_row_ids() -> None:
    prompts = [
        PromptExample([1, 2, 3], [IGNORE_INDEX] * 3, row=7),
        PromptExample([4], [-100], row=2),
    ]

    batch = collate(prompts, pad_id=0)

    assert batch["input_ids"].tolist() == [[1, 2, 3], [0, 0, 4]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["row_ids"].tolist() == [7, 2]
    assert set(batch) == {"input_ids", "attention_mask", "row_ids"}


def test_a_micro_batch_never_mixes_pairs_with_other_examples() -> None:
    with pytest.raises(ValueError, match="mixes"):
        collate([pair([1, 2], [1, 3]), TokenizedExample([1, 2], [1, 2])], 0)


def test_length_grouping_sorts_a_pair_by_its_longer_sequence() -> None:
    from finetune_api.config import TrainingSpec

    short_chosen = pair([1, 2], list(range(1, 30)))
    others = [pair(list(range(1, 10 + i)), list(range(1, 10 + i))) for i in range(3)]
    spec = TrainingSpec(batch_size=2, seed=0)

    steps = step_groups([*others, short_chosen], spec)
    batches = [mb for _ in range(2) for mb in next(steps).per_rank[0]]

    # Sorted by its 29 rejected tokens, the pair is the longest: batched with the next
    # longest (by its 2 chosen tokens it would be batched with the shortest).
    (with_it,) = [mb for mb in batches if short_chosen in mb]
    assert others[2] in with_it and short_chosen.length == 29


# --------------------------------------------------------------------------- cleaning


def test_a_blank_answer_is_empty_and_a_blank_prompt_too() -> None:
    blank_rejected = Example(
        messages=tuple(QUESTION),
        chosen=tuple(PARIS),
        rejected=({"role": "assistant", "content": "  "},),
    )
    blank_prompt = Example(messages=({"role": "user", "content": " "},), prompt_only=True)

    assert is_empty(blank_rejected)
    assert is_empty(blank_prompt)
    assert not is_empty(Example(messages=tuple(QUESTION), chosen=tuple(PARIS), rejected=tuple(RED)))
    assert not is_empty(Example(messages=tuple(QUESTION), prompt_only=True))


def test_identical_pairs_are_duplicates_other_pairs_for_one_prompt_are_not() -> None:
    examples = convert(
        "preference",
        {"prompt": "q", "chosen": "a", "rejected": "b"},
        {"prompt": "q ", "chosen": "a\r\n", "rejected": "b"},  # the same after normalising
        {"prompt": "q", "chosen": "a", "rejected": "c"},
        {"prompt": "q", "chosen": "b", "rejected": "a"},
    )

    kept, counts = clean(examples, deduplicate=True)

    assert kept == [0, 2, 3] and counts.duplicates == 1


def test_prompts_repeat_only_with_the_same_reference() -> None:
    examples = convert(
        "prompts",
        {"prompt": "q", "answer": "1"},
        {"prompt": "q", "answer": "1"},
        {"prompt": "q", "answer": "2"},
        {"prompt": "q"},
    )

    assert clean(examples, deduplicate=True)[0] == [0, 2, 3]


def test_existing_content_keys_are_unchanged() -> None:
    # The digest of a plain conversation is what it was before the new formats came:
    # a cache or dedup decision made before the change still holds.
    import hashlib

    conversation = Example(messages=tuple([*QUESTION, *PARIS]))
    body = b'[["user","What is the capital of France?"],["assistant","Paris."]]'

    assert content_key(conversation) == hashlib.blake2b(body, digest_size=16).digest()


# --------------------------------------------------------------------------- prepare


def preference_rows(n: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"What is colour {i}?", "chosen": f"colour {i}", "rejected": "blue"}
        for i in range(n)
    ]


def prepared(tokenizer: Any, path: Path, task: str, **fields: Any) -> PreparedData:
    dataset = DatasetSpec.model_validate({"train": f"file://{path}"} | fields)
    return prepare_data(tokenizer, dataset, max_length=64, seed=0, eval_samples=3, task=task)


@pytest.mark.parametrize("task", ["preference", "reward-model"])
def test_prepare_data_reads_pairs_end_to_end(
    tiny_tokenizer: Any, tmp_path: Path, task: str
) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(20))

    data = prepared(tiny_tokenizer, path, task, format="preference", validationSplit=0.2)

    assert all(isinstance(e, PreferenceExample) for e in data.train + data.validation)
    assert (data.report.train_rows, data.report.validation_rows) == (16, 4)
    assert len(data.eval_samples) == 3
    sample = data.eval_samples[0]
    assert sample.answer.startswith("colour ")
    assert str(tiny_tokenizer.decode(sample.prompt_ids)).endswith("<|im_start|>assistant\n")
    assert data.report.trained_tokens == sum(e.trained_tokens for e in data.train)


def test_overlong_pairs_are_dropped_or_counted(tiny_tokenizer: Any, tmp_path: Path) -> None:
    rows = [*preference_rows(6), {"prompt": "q", "chosen": "red " * 200, "rejected": "no"}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    validation = write_jsonl(tmp_path / "val.jsonl", preference_rows(2))
    fields = {"format": "preference", "validation": f"file://{validation}"}

    dropped = prepared(tiny_tokenizer, path, "preference", overlong="drop", **fields)
    kept = prepared(tiny_tokenizer, path, "preference", **fields)

    assert dropped.report.dropped_overlong == 1 and len(dropped.train) == 6
    assert kept.report.truncated == 1 and len(kept.train) == 7
    assert max(len(e.input_ids) for e in kept.train) == 64


def test_prompts_are_numbered_with_their_references_on_a_cache_hit_too(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [{"prompt": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(9)]
    path = write_jsonl(tmp_path / "prompts.jsonl", [*rows, {"prompt": "no answer"}])

    def check(data: PreparedData) -> None:
        for part in (data.train, data.validation):
            assert [e.row for e in part if isinstance(e, PromptExample)] == list(range(len(part)))
        assert all(isinstance(e, PromptExample) for e in data.train + data.validation)
        prompts = [e for e in data.train + data.validation if isinstance(e, PromptExample)]
        references = {e.reference for e in prompts}
        assert references == {str(2 * i) for i in range(9)} | {None}

    first = prepared(tiny_tokenizer, path, "reinforcement", format="prompts", validationSplit=0.3)
    check(first)
    monkeypatch.setattr(prepare, "tokenize_example", _no_tokenizing)
    again = prepared(tiny_tokenizer, path, "reinforcement", format="prompts", validationSplit=0.3)
    check(again)
    assert again.train == first.train and again.validation == first.validation
    assert again.report.files_from_cache == 1


def _no_tokenizing(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("tokenized although the cache holds these examples")


def test_pairs_come_back_from_the_cache_identical(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(10))
    first = prepared(tiny_tokenizer, path, "preference", format="preference")
    monkeypatch.setattr(prepare, "tokenize_example", _no_tokenizing)

    again = prepared(tiny_tokenizer, path, "preference", format="preference")

    assert again.train == first.train and again.validation == first.validation
    assert again.report.files_from_cache == 1


@pytest.mark.parametrize(
    "columns", [{"chosen": "rejected", "rejected": "chosen"}, {"answer": "other"}]
)
def test_the_new_columns_are_in_the_cache_key(
    tiny_tokenizer: Any, tmp_path: Path, columns: dict[str, str]
) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(10))
    prepared(tiny_tokenizer, path, "preference", format="preference")

    again = prepared(tiny_tokenizer, path, "preference", format="preference", columns=columns)

    assert again.report.files_from_cache == 0 and again.report.files_tokenized == 1


def test_a_corrupt_pair_entry_is_tokenized_again(tiny_tokenizer: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(10))
    first = prepared(tiny_tokenizer, path, "preference", format="preference")
    (entry,) = cache.cache_dir().glob("*.arrow")
    import pyarrow as pa

    # The rejected sequences' offsets reversed, in place: the table must refuse them.
    table = pa.ipc.open_file(pa.memory_map(str(entry))).read_all()
    offsets = table.column("rejected_ids").chunk(0).offsets.to_numpy()
    data = entry.read_bytes()
    at = data.index(offsets.tobytes())
    _replace_bytes(entry, data[:at] + offsets[::-1].tobytes() + data[at + offsets.nbytes :])

    again = prepared(tiny_tokenizer, path, "preference", format="preference")

    assert again.train == first.train and again.report.files_from_cache == 0


@pytest.mark.parametrize(
    ("task", "fmt", "section", "kind"),
    [
        ("reward-model", "preference", {}, PreferenceExample),
        ("preference", "preference", {"preference": {"loss": "dpo"}}, PreferenceExample),
        (
            "reinforcement",
            "prompts",
            {"reinforcement": {"rewards": [{"type": "exactMatch"}]}},
            PromptExample,
        ),
    ],
)
def test_setup_data_prepares_each_new_task_from_its_trainer_config(
    tiny_tokenizer: Any,
    tmp_path: Path,
    task: str,
    fmt: str,
    section: dict[str, Any],
    kind: type[TokenizedExample],
) -> None:
    from finetune_api.config import TrainerConfig
    from finetune_trainer.recipe.setup import setup_data

    rows = [{**row, "answer": row["chosen"]} for row in preference_rows(12)]
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    config = TrainerConfig.model_validate(
        {
            "jobName": "align",
            "task": task,
            "model": {"uri": "file:///models/tiny"},
            "dataset": {"train": f"file://{path}", "format": fmt},
            "training": {"maxSteps": 2, "maxSeqLength": 64},
            "output": {"uri": f"file://{tmp_path / 'out'}"},
            **section,
        }
    )

    data = setup_data(config, tiny_tokenizer)

    assert data.train and data.validation
    assert all(type(e) is kind for e in data.train + data.validation)
    assert data.eval_samples and data.eval_samples[0].answer.startswith("colour ")


@pytest.mark.parametrize(
    ("fmt", "task"), [("preference", "preference"), ("prompts", "reinforcement")]
)
def test_without_a_chat_template_the_new_formats_are_a_config_error(
    tiny_tokenizer: Any, tmp_path: Path, fmt: str, task: str
) -> None:
    import copy

    from finetune_trainer.errors import ConfigError

    tokenizer = copy.deepcopy(tiny_tokenizer)
    tokenizer.chat_template = None
    path = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(4))

    with pytest.raises(ConfigError, match="chat template cannot be used for training"):
        prepared(tokenizer, path, task, format=fmt)
