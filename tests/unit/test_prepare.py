"""prepare_data: cleaning counts, overlong rows, lossOn, classification ids, packing,
mixtures, reading through storage URIs, and the tokenization cache."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from conftest import colour_rows, write_jsonl
from finetune_api.config import DatasetSpec
from finetune_trainer.data import cache, prepare
from finetune_trainer.data.packing import PackedExample
from finetune_trainer.data.prepare import PreparedData, prepare_data
from finetune_trainer.errors import DataError


def _replace_bytes(path: Path, data: bytes) -> None:
    """Write a new file in ``path``'s place (a new inode, as the cache itself writes):
    the tables an earlier preparation mapped keep their content; rewriting the mapped
    file in place would pull the pages from under them (SIGBUS)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def chat_row(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def distinct_rows(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [chat_row(f"{prefix} {i}?", f"answer {i}") for i in range(n)]


def spec(**fields: Any) -> DatasetSpec:
    return DatasetSpec.model_validate(fields)


def prepared(tokenizer: Any, dataset: DatasetSpec, **options: Any) -> PreparedData:
    settings: dict[str, Any] = {"max_length": 64, "seed": 0, "eval_samples": 4}
    return prepare_data(tokenizer, dataset, **(settings | options))


class Explode:
    """Stands in for tokenize_example where a test proves it is not called."""

    calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        type(self).calls += 1
        raise AssertionError("tokenized although the cache holds these examples")


# --------------------------------------------------------------------------- cleaning


def test_duplicates_and_empty_rows_are_dropped_and_counted(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    rows = [
        *distinct_rows(6),
        chat_row("q 1?", "answer 1"),  # duplicate of row 1
        chat_row("q 2?  ", "answer 2\r\n"),  # duplicate after trimming
        chat_row("q 9?", "   "),  # empty answer
        chat_row("q 10?", ""),  # empty answer
    ]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(tmp_path / "val.jsonl", [*distinct_rows(2), *distinct_rows(2)])

    data = prepared(
        tiny_tokenizer, spec(train=f"file://{train}", validation=f"file://{validation}")
    )

    report = data.report
    assert report.rows_read == 10 + 4
    assert report.dropped_duplicates == 2 + 2
    assert report.dropped_empty == 2
    assert (report.train_rows, report.validation_rows) == (6, 2)
    assert len(data.train) == 6 and len(data.validation) == 2
    assert [s.answer for s in data.eval_samples] == ["answer 0", "answer 1"]


def test_deduplicate_off_keeps_repeated_rows(tiny_tokenizer: Any, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", colour_rows(12))

    kept = prepared(tiny_tokenizer, spec(train=f"file://{train}", deduplicate=False))
    deduplicated = prepared(tiny_tokenizer, spec(train=f"file://{train}"))

    assert kept.report.dropped_duplicates == 0
    assert kept.report.train_rows + kept.report.validation_rows == 12
    assert deduplicated.report.dropped_duplicates == 8  # four distinct colour questions
    assert deduplicated.report.train_rows + deduplicated.report.validation_rows == 4


# --------------------------------------------------------------------------- overlong rows


def overlong_dataset(tmp_path: Path, **fields: Any) -> DatasetSpec:
    rows = [*distinct_rows(4), chat_row("colour " * 40 + "?", "answer long")]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(tmp_path / "val.jsonl", distinct_rows(2, prefix="v"))
    return spec(train=f"file://{train}", validation=f"file://{validation}", **fields)


def test_overlong_truncate_keeps_the_start_and_counts_it(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    data = prepared(tiny_tokenizer, overlong_dataset(tmp_path), max_length=32)

    # The long row's answer is cut off entirely: truncated, then nothing left to learn.
    assert data.report.truncated == 1
    assert data.report.dropped_no_labels == 1
    assert data.report.dropped_overlong == 0
    assert data.report.train_rows == 4


def test_overlong_truncate_keeps_a_row_whose_answer_survives(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    rows = [*distinct_rows(4), chat_row("q?", "colour red " * 40)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dataset = spec(train=f"file://{train}", validation=f"file://{train}")

    data = prepared(tiny_tokenizer, dataset, max_length=32)

    assert data.report.truncated == 2  # once in train, once in validation
    assert data.report.train_rows == 5
    assert max(len(e.input_ids) for e in data.train) == 32


def test_overlong_drop_leaves_the_row_out(tiny_tokenizer: Any, tmp_path: Path) -> None:
    data = prepared(tiny_tokenizer, overlong_dataset(tmp_path, overlong="drop"), max_length=32)

    assert data.report.dropped_overlong == 1
    assert data.report.truncated == 0
    assert data.report.dropped_no_labels == 0
    assert data.report.train_rows == 4
    assert all(not e.truncated for e in data.train)


# --------------------------------------------------------------------------- lossOn, packing


def test_loss_on_all_trains_the_prompt_too(tiny_tokenizer: Any, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(6))
    dataset = spec(train=f"file://{train}", validation=f"file://{train}")

    completion = prepared(tiny_tokenizer, dataset)
    everything = prepared(tiny_tokenizer, dataset, loss_on="all")

    assert everything.report.train_tokens == completion.report.train_tokens
    assert everything.report.trained_tokens == everything.report.train_tokens
    assert completion.report.trained_tokens < completion.report.train_tokens / 2
    assert all(e.labels == e.input_ids for e in everything.validation)


def test_packing_packs_train_only(tiny_tokenizer: Any, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(20))
    dataset = spec(train=f"file://{train}", validation=f"file://{train}")

    plain = prepared(tiny_tokenizer, dataset)
    packed = prepared(tiny_tokenizer, dataset, packing=True)

    assert all(isinstance(e, PackedExample) for e in packed.train)
    assert packed.report.packed_sequences == len(packed.train) < len(plain.train) / 2
    assert sum(len(e.lengths) for e in packed.train) == packed.report.train_rows == 20
    assert sorted(len(e.input_ids) for e in plain.train) == sorted(
        n for e in packed.train for n in e.lengths
    )
    assert all(len(e.input_ids) <= 64 for e in packed.train)
    # Validation stays one example per row, so eval loss compares with unpacked runs.
    assert packed.validation == plain.validation
    assert plain.report.packed_sequences == 0


# --------------------------------------------------------------------------- classification


def test_classification_ids_follow_the_sorted_training_labels(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    labels = ["positive", "negative", "neutral"]
    rows = [{"text": f"review {i}", "label": labels[i % 3]} for i in range(9)]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    validation = write_jsonl(tmp_path / "val.jsonl", [{"text": "fine", "label": "neutral"}])
    dataset = spec(
        train=f"file://{train}", validation=f"file://{validation}", format="classification"
    )

    data = prepared(tiny_tokenizer, dataset, task="sequence-classification")

    assert data.labels is not None
    assert data.labels.names == ("negative", "neutral", "positive")
    assert data.report.classes == 3
    assert [e.label for e in data.train] == [2, 0, 1] * 3
    assert [e.label for e in data.validation] == [1]
    assert data.eval_samples == []


def test_a_validation_label_unseen_in_training_is_an_error(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    train = write_jsonl(
        tmp_path / "train.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    )
    validation = write_jsonl(
        tmp_path / "val.jsonl", [{"text": "c", "label": 1}, {"text": "d", "label": 7}]
    )
    dataset = spec(
        train=f"file://{train}", validation=f"file://{validation}", format="classification"
    )

    with pytest.raises(DataError) as info:
        prepared(tiny_tokenizer, dataset, task="sequence-classification")
    assert str(info.value).startswith(
        f"dataset.validation (file://{validation}): line 2: label '7' does not occur"
    )


# --------------------------------------------------------------------------- mixture


def mixture_files(tmp_path: Path) -> tuple[Path, Path]:
    big = write_jsonl(tmp_path / "big.jsonl", distinct_rows(40, prefix="big"))
    small = tmp_path / "small.jsonl"
    small.write_text(
        "".join(
            json.dumps({"instruction": f"small {i}", "output": f"o{i}"}) + "\n" for i in range(10)
        )
    )
    return big, small


def test_mixture_samples_each_source_its_share(tiny_tokenizer: Any, tmp_path: Path) -> None:
    big, small = mixture_files(tmp_path)
    dataset = spec(
        mixture=[
            {"train": f"file://{big}", "weight": 1},
            {"train": f"file://{small}", "weight": 1, "format": "instruction"},
        ],
        validationSplit=0.1,
    )

    data = prepared(tiny_tokenizer, dataset)

    # 36 + 9 rows after holding out 10% of each source; 45 mixed 50/50 (23 / 22).
    assert data.report.mixture == [
        {"train": f"file://{big}", "weight": 1.0, "rows": 36, "sampled": 23},
        {"train": f"file://{small}", "weight": 1.0, "rows": 9, "sampled": 22},
    ]
    assert data.report.train_rows == len(data.train) == 45
    # Validation is held out per source (4 + 1), interleaved for exact match.
    assert data.report.validation_rows == 5
    answers = [s.answer for s in data.eval_samples]
    assert answers[0].startswith("answer") and answers[1].startswith("o")
    # The small source is repeated (22 draws from 9 rows); the big one subsampled.
    decoded = Counter(tiny_tokenizer.decode(e.input_ids) for e in data.train)
    assert max(decoded.values()) == 3
    assert sum(1 for text in decoded if "big" in text) == 23


def test_mixture_is_the_same_for_the_same_seed(tiny_tokenizer: Any, tmp_path: Path) -> None:
    big, small = mixture_files(tmp_path)
    dataset = spec(
        mixture=[
            {"train": f"file://{big}", "weight": 3},
            {"train": f"file://{small}", "format": "instruction"},
        ]
    )

    first, again = prepared(tiny_tokenizer, dataset), prepared(tiny_tokenizer, dataset)
    other = prepared(tiny_tokenizer, dataset, seed=1)

    assert first.train == again.train
    assert first.validation == again.validation
    assert first.train != other.train


def test_a_mixture_source_with_nothing_to_learn_is_named(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    big, _ = mixture_files(tmp_path)
    blank = write_jsonl(tmp_path / "blank.jsonl", [chat_row(f"q{i}", " ") for i in range(3)])
    dataset = spec(
        mixture=[{"train": f"file://{big}"}, {"train": f"file://{blank}"}],
        validation=f"file://{big}",
    )

    with pytest.raises(DataError) as info:
        prepared(tiny_tokenizer, dataset)
    assert str(info.value).startswith(
        f"dataset.mixture[1] (file://{blank}): no row has anything to learn "
        "(3 rows read, 3 dropped as empty: 0 usable rows); check its format and columns"
    )


# --------------------------------------------------------------------------- storage


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".json"])
def test_every_file_type_reads_through_a_pvc_uri(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(6)]
    directory = tmp_path / "claims" / "data-claim" / "sets"
    directory.mkdir(parents=True)
    path = directory / f"train{suffix}"
    table = pa.Table.from_pylist(rows)
    if suffix == ".csv":
        pcsv.write_csv(table, path)
    elif suffix == ".parquet":
        pq.write_table(table, path)
    else:
        path.write_text(json.dumps(rows))
    monkeypatch.setenv("FINETUNE_PVC_ROOT", str(tmp_path / "claims"))
    dataset = spec(train=f"pvc://data-claim/sets/train{suffix}", format="prompt-completion")

    data = prepared(tiny_tokenizer, dataset)

    assert data.report.rows_read == 6
    assert data.report.train_rows + data.report.validation_rows == 6
    assert [p.name.split(".")[0] for p in cache_entries()] == ["train"]
    assert sorted(p.name for p in directory.iterdir()) == [f"train{suffix}"]


# --------------------------------------------------------------------------- cache


def cache_entries() -> list[Path]:
    """The tokenization cache's entries (in this test's FINETUNE_CACHE_DIR, conftest)."""
    return sorted(cache.cache_dir().glob("*.arrow"))


def test_a_second_run_reads_the_cache_and_gets_identical_data(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [*distinct_rows(10), *distinct_rows(3), chat_row("blank", " ")]
    rows.append(chat_row("colour " * 40, "long"))
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dataset = spec(train=f"file://{train}")

    first = prepared(tiny_tokenizer, dataset, max_length=32)
    assert first.report.files_tokenized == 1 and first.report.files_from_cache == 0
    assert len(cache_entries()) == 1

    monkeypatch.setattr(prepare, "tokenize_example", Explode())
    second = prepared(tiny_tokenizer, dataset, max_length=32)

    assert second.report.files_from_cache == 1 and second.report.files_tokenized == 0
    assert second.train == first.train
    assert second.validation == first.validation
    assert second.eval_samples == first.eval_samples
    # Every count is reported on a hit as on a miss.
    counts = {k: v for k, v in first.report.as_dict().items() if not k.startswith("files")}
    assert {k: second.report.as_dict()[k] for k in counts} == counts
    assert counts["droppedDuplicates"] == 3 and counts["droppedEmpty"] == 1
    assert counts["truncated"] + counts["droppedNoLabels"] >= 1


@pytest.mark.parametrize(
    "change",
    ["max_length", "loss_on", "file", "columns", "tokenizer"],
)
def test_what_changes_the_tokens_misses_the_cache(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    import copy

    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(8))
    dataset = spec(train=f"file://{train}")
    prepared(tiny_tokenizer, dataset)
    calls: list[Any] = []
    real = prepare.tokenize_example
    monkeypatch.setattr(
        prepare, "tokenize_example", lambda *a, **k: calls.append(1) or real(*a, **k)
    )

    tokenizer, options = tiny_tokenizer, {}
    if change == "max_length":
        options = {"max_length": 48}
    elif change == "loss_on":
        options = {"loss_on": "all"}
    elif change == "file":
        write_jsonl(train, distinct_rows(9))
    elif change == "columns":
        dataset = spec(train=f"file://{train}", columns={"messages": "messages", "system": "sys"})
    else:
        tokenizer = copy.deepcopy(tiny_tokenizer)
        tokenizer.chat_template += "{# another template #}"
    data = prepared(tokenizer, dataset, **options)

    assert data.report.files_tokenized == 1
    assert calls, "the tokenizer was not called"
    assert len(cache_entries()) == 2


def test_overlong_and_seed_share_the_cache(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(8))
    prepared(tiny_tokenizer, spec(train=f"file://{train}"))
    monkeypatch.setattr(prepare, "tokenize_example", Explode())

    data = prepared(tiny_tokenizer, spec(train=f"file://{train}", overlong="drop"), seed=5)

    assert data.report.files_from_cache == 1


def test_the_cache_lives_in_the_cache_dir_never_beside_the_data(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    train = write_jsonl(data_dir / "train.jsonl", distinct_rows(8))
    home = tmp_path / "cache-home"
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(home))

    prepared(tiny_tokenizer, spec(train=f"file://{train}"))
    assert len(list((home / "tokenized").glob("train.jsonl.*.arrow"))) == 1
    assert [p.name for p in data_dir.iterdir()] == ["train.jsonl"]

    monkeypatch.setattr(prepare, "tokenize_example", Explode())
    assert prepared(tiny_tokenizer, spec(train=f"file://{train}")).report.files_from_cache == 1


def test_an_unwritable_cache_dir_is_a_slower_run_not_a_failed_one(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(8))
    blocked = tmp_path / "blocked"
    blocked.write_text("not a directory")  # mkdir below it fails, even as root
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(blocked))

    first = prepared(tiny_tokenizer, spec(train=f"file://{train}"))
    again = prepared(tiny_tokenizer, spec(train=f"file://{train}"))

    assert first.report.files_tokenized == again.report.files_tokenized == 1
    assert again.train == first.train
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked", "train.jsonl"]


def test_a_corrupt_cache_entry_is_tokenized_again(tiny_tokenizer: Any, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(8))
    first = prepared(tiny_tokenizer, spec(train=f"file://{train}"))
    [entry] = cache_entries()
    _replace_bytes(entry, b"garbage")

    again = prepared(tiny_tokenizer, spec(train=f"file://{train}"))

    assert again.report.files_tokenized == 1
    assert again.train == first.train


def _rewritten(entry: Path, **changes: Any) -> None:
    """The entry's table with some columns replaced (or, given None, removed), its
    metadata kept."""
    import pyarrow as pa

    table = pa.ipc.open_file(pa.memory_map(str(entry))).read_all()
    for name, value in changes.items():
        at = table.schema.get_field_index(name)
        table = table.remove_column(at) if value is None else table.set_column(at, name, value)
    entry.unlink()
    with pa.ipc.new_file(str(entry), table.schema) as out:
        out.write_table(table)


def _poison(entry: Path, how: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import pyarrow as pa

    if how == "garbage":
        _replace_bytes(entry, b"garbage")
    elif how == "truncated":
        _replace_bytes(entry, entry.read_bytes()[: entry.stat().st_size // 2])
    elif how == "empty":
        _replace_bytes(entry, b"")
    elif how == "npy-not-npz":  # another format, same size: the table refuses it
        size = entry.stat().st_size
        _replace_bytes(entry, b"\x93NUMPY" + b"\0" * (size - 6))
    elif how == "missing-array":
        _rewritten(entry, labels=None)
    elif how == "offsets-out-of-range":  # one offset past the tokens, same size
        table = pa.ipc.open_file(pa.memory_map(str(entry))).read_all()
        offsets = table.column("input_ids").chunk(0).offsets.to_numpy()
        data = entry.read_bytes()
        at = data.index(offsets.tobytes())
        bad = offsets.copy()
        bad[-1] += 5
        _replace_bytes(entry, data[:at] + bad.tobytes() + data[at + bad.nbytes :])
    elif how == "wrong-dtype":
        table = pa.ipc.open_file(pa.memory_map(str(entry))).read_all()
        floats = pa.array(table.column("input_ids").to_pylist(), type=pa.list_(pa.float32()))
        _rewritten(entry, input_ids=floats)
    elif how == "directory":
        entry.unlink()
        (entry / "inside").mkdir(parents=True)
    elif how == "permission-denied":  # root reads through chmod 000: make the open fail
        real = pa.memory_map
        refused: list[Path] = []

        def denied(file: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(file) == entry and not refused:  # the entry found, not the one rewritten
                refused.append(entry)
                raise PermissionError(13, "Permission denied", str(file))
            return real(file, *args, **kwargs)

        monkeypatch.setattr(pa, "memory_map", denied)


def _same_size(entry: Path, how: str) -> None:
    """Record the poisoned file's size in the entry's .json, so the table's own checks
    (not the size) must find the damage."""
    from finetune_trainer.data.cache import EntryInfo, info_path

    if entry.is_file():
        info = EntryInfo.from_json(info_path(entry).read_text())
        fields = info.__dict__ | {"size": entry.stat().st_size}
        info_path(entry).write_text(EntryInfo(**fields).to_json())


@pytest.mark.parametrize(
    "how",
    [
        "garbage",
        "truncated",
        "empty",
        "npy-not-npz",
        "missing-array",
        "offsets-out-of-range",
        "wrong-dtype",
        "directory",
        "permission-denied",
    ],
)
def test_a_poisoned_cache_entry_is_a_warning_and_a_fresh_tokenization(
    tiny_tokenizer: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    """The cache's promise: a slower run, never a failed one, and never wrong tokens."""
    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(8))
    first = prepared(tiny_tokenizer, spec(train=f"file://{train}"))
    [entry] = cache_entries()
    _poison(entry, how, monkeypatch)
    _same_size(entry, how)

    with caplog.at_level("WARNING", logger="finetune.trainer"):
        again = prepared(tiny_tokenizer, spec(train=f"file://{train}"))

    assert again.report.files_tokenized == 1 and again.report.files_from_cache == 0
    assert again.train == first.train and again.validation == first.validation
    assert f"tokenization cache {entry} is unusable" in caplog.text


def test_use_cache_false_neither_reads_nor_writes(tiny_tokenizer: Any, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(8))

    data = prepared(tiny_tokenizer, spec(train=f"file://{train}"), use_cache=False)

    assert data.report.files_tokenized == 1
    assert cache_entries() == []


# --------------------------------------------------------------------------- messages


def test_too_few_rows_to_split_says_why(tiny_tokenizer: Any, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row("same?", "same")] * 40)

    with pytest.raises(DataError) as info:
        prepared(tiny_tokenizer, spec(train=f"file://{train}"))

    assert str(info.value) == (
        f"dataset.train (file://{train}): 40 rows read, 39 dropped as exact duplicates: "
        "1 usable row; at least 2 are needed to split off validation; add rows or set "
        "dataset.validation"
    )


def test_nothing_to_learn_counts_every_reason(tiny_tokenizer: Any, tmp_path: Path) -> None:
    rows = [chat_row("colour " * 40 + f"{i}?", "answer") for i in range(3)]
    rows += [chat_row("blank", " "), rows[0]]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    dataset = spec(train=f"file://{train}", validation=f"file://{train}", overlong="drop")

    with pytest.raises(DataError) as info:
        prepared(tiny_tokenizer, dataset, max_length=32)

    assert str(info.value).startswith(
        f"dataset.train (file://{train}): no row has anything to learn (5 rows read, 1 dropped "
        "as exact duplicates, 1 dropped as empty, 3 dropped as longer than "
        "training.maxSeqLength: 0 usable rows)"
    )


def test_a_bad_row_is_named_by_its_line_with_blank_lines_counted(
    tiny_tokenizer: Any, tmp_path: Path
) -> None:
    train = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in distinct_rows(3)]
    train.write_text("\n".join([lines[0], "", "", lines[1], json.dumps({"text": "x"}), ""]))

    with pytest.raises(DataError) as info:
        prepared(tiny_tokenizer, spec(train=f"file://{train}"))

    assert str(info.value).startswith(
        f"dataset.train (file://{train}): line 5 (format messages): column 'messages' is missing"
    )


ALTERNATING = (
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant') }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
ESCAPING = "{{ messages.__class__.__mro__ }}"
PROBING = (  # the sandbox only trips on rows whose answer says "escape"
    "{% for m in messages %}{% if m['content'] == 'escape' %}{{ m.__class__.__subclasses__() }}"
    "{% endif %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
)


def with_template(tokenizer: Any, template: str) -> Any:
    import copy

    changed = copy.deepcopy(tokenizer)
    changed.chat_template = template
    return changed


@pytest.mark.parametrize(
    ("template", "second", "message"),
    [
        (
            ALTERNATING,
            {"messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            "the chat template failed: TemplateError: Conversation roles must alternate",
        ),
        (PROBING, chat_row("q", "escape"), "the chat template failed: SecurityError: "),
    ],
    ids=["role-order", "sandbox"],
)
def test_a_template_failing_on_a_row_names_the_row(
    tiny_tokenizer: Any, tmp_path: Path, template: str, second: dict[str, Any], message: str
) -> None:
    if second["messages"][-1]["role"] != "assistant":
        second = {"messages": [*second["messages"], {"role": "assistant", "content": "z"}]}
    train = write_jsonl(tmp_path / "train.jsonl", [chat_row("q0", "a0"), second])
    tokenizer = with_template(tiny_tokenizer, template)

    with pytest.raises(DataError) as info:
        prepared(tokenizer, spec(train=f"file://{train}"), use_cache=False)

    assert str(info.value).startswith(f"dataset.train (file://{train}): line 2: {message}")
    assert info.value.exit_code == 3


@pytest.mark.parametrize(
    ("template", "fragment"),
    [
        (ESCAPING, "SecurityError"),
        ("{{ raise_exception('no') }}", "TemplateError: no"),
        (None, "chat_template"),
    ],
    ids=["sandbox-everywhere", "always-raises", "no-template"],
)
def test_a_template_that_fails_on_a_plain_conversation_is_a_config_error(
    tiny_tokenizer: Any, tmp_path: Path, template: str | None, fragment: str
) -> None:
    from finetune_trainer.errors import ConfigError

    train = write_jsonl(tmp_path / "train.jsonl", distinct_rows(4))

    with pytest.raises(ConfigError) as info:
        prepared(with_template(tiny_tokenizer, template), spec(train=f"file://{train}"))

    message = str(info.value)
    assert message.startswith("the model's chat template cannot be used for training")
    assert fragment in message
    assert info.value.exit_code == 2
