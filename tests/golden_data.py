"""Golden digests of prepared data and step groups, recorded from a known-good version.

The data pipeline's refactors (Arrow tables, chunked reading, parallel tokenisation) must
leave every prepared example and every step's example order exactly as they were. This
script prepares a set of fixture configurations (every format, a mixture, dedup on and
off, overlong drop and truncate, validation file and split, packing, CSV and Parquet
input) with the tiny tokenizer of ``conftest.build_tokenizer`` and records a sha256 per
configuration over: every train and validation example's fields in order, the eval
samples, the report's counts, and the examples of the step groups of two epochs (seeded,
batch 3, world sizes 1 and 2). ``tests/unit/test_data_goldens.py`` compares.

Run ``python tests/golden_data.py --write`` to record (only from a version whose data
you trust: the goldens are what "unchanged" means).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
GOLDENS = HERE / "fixtures" / "data_goldens.json"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


def _chat(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def chat_rows() -> list[dict[str, Any]]:
    """Distinct rows, duplicates (exact and after trimming), empty answers, long answers."""
    rows = [
        _chat(f"What is colour {i}?", f"colour {i % 7} is " + "red " * (i % 5)) for i in range(30)
    ]
    rows += [
        _chat("What is colour 3?", "colour 3 is red red red "),
        _chat("What is colour 4? ", "colour 4 is red red red red \r\n"),
    ]
    rows += [
        _chat("blank", "  "),
        _chat("long one", "blue green " * 40),
        _chat("long two", "yellow " * 60),
    ]
    return rows


def instruction_rows(prefix: str = "") -> list[dict[str, Any]]:
    rows = [
        {
            "instruction": f"{prefix}Convert March {i}, 2021",
            "input": "" if i % 2 else "ISO 8601",
            "output": f"2021-03-{i:02d}",
        }
        for i in range(1, 22)
    ]
    return [*rows, rows[3], {"instruction": "long", "output": "January " * 50}]


def completion_rows() -> list[dict[str, Any]]:
    rows = [
        {"prompt": f"Question {i}: the capital?", "completion": " Paris." * (1 + i % 3)}
        for i in range(20)
    ]
    return [*rows, {"prompt": "the a of is " * 30, "completion": "answer"}, rows[0]]


def text_rows() -> list[dict[str, Any]]:
    return [{"text": f"colour {i} " + "green blue " * (i % 9)} for i in range(25)] + [
        {"text": "  "}
    ]


def classification_rows() -> list[dict[str, Any]]:
    colours = ["red", "green", "blue", "yellow"]
    return [{"text": f"the {i} colour answer", "label": colours[i % 4]} for i in range(24)]


def preference_rows() -> list[dict[str, Any]]:
    rows = [
        {"prompt": f"What is colour {i}?", "chosen": f"colour {i}", "rejected": "blue"}
        for i in range(18)
    ]
    return [*rows, {"prompt": "q", "chosen": "red " * 80, "rejected": "no"}, rows[2]]


def prompts_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [
        {"prompt": f"What is {i}+{i}?", "answer": str(2 * i)} for i in range(14)
    ]
    return [*rows, {"prompt": "no answer"}, rows[5]]


def pairs_rows() -> list[dict[str, Any]]:
    return [
        {
            "anchor": f"question {i} colour",
            "positive": f"answer {i} red",
            "negative": "blue" if i % 2 else "",
        }
        for i in range(16)
    ]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    import csv

    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=7)
    return path


Case = dict[str, Any]


def cases(root: Path) -> dict[str, Case]:
    """Each configuration: the dataset spec, the task and prepare_data's options."""
    f = {
        "chat": _write_jsonl(root / "chat.jsonl", chat_rows()),
        "chat_val": _write_jsonl(root / "chat_val.jsonl", chat_rows()[5:12]),
        "chat_parquet": _write_parquet(root / "chat.parquet", chat_rows()),
        "instruction": _write_jsonl(root / "instruction.jsonl", instruction_rows()),
        "instruction_b": _write_jsonl(root / "instruction_b.jsonl", instruction_rows("b ")),
        "completion": _write_jsonl(root / "completion.jsonl", completion_rows()),
        "text": _write_jsonl(root / "text.jsonl", text_rows()),
        "text_csv": _write_csv(root / "text.csv", text_rows()),
        "classification": _write_jsonl(root / "classes.jsonl", classification_rows()),
        "preference": _write_jsonl(root / "preference.jsonl", preference_rows()),
        "prompts": _write_jsonl(root / "prompts.jsonl", prompts_rows()),
        "pairs": _write_jsonl(root / "pairs.jsonl", pairs_rows()),
    }
    u = {name: f"file://{path}" for name, path in f.items()}
    return {
        "messages-split-dedup": {"dataset": {"train": u["chat"], "validationSplit": 0.2}},
        "messages-nodedup-drop": {
            "dataset": {
                "train": u["chat"],
                "deduplicate": False,
                "overlong": "drop",
                "validationSplit": 0.25,
            }
        },
        "messages-validation-file": {"dataset": {"train": u["chat"], "validation": u["chat_val"]}},
        "messages-parquet": {"dataset": {"train": u["chat_parquet"], "validationSplit": 0.2}},
        "instruction-truncate": {
            "dataset": {"train": u["instruction"], "format": "instruction", "overlong": "truncate"}
        },
        "prompt-completion-loss-all": {
            "dataset": {
                "train": u["completion"],
                "format": "prompt-completion",
                "overlong": "drop",
            },
            "options": {"loss_on": "all"},
        },
        "text-packing": {
            "dataset": {"train": u["text"], "format": "text"},
            "options": {"packing": True},
        },
        "text-csv": {"dataset": {"train": u["text_csv"], "format": "text", "validationSplit": 0.3}},
        "classification": {
            "dataset": {"train": u["classification"], "format": "classification"},
            "task": "sequence-classification",
        },
        "preference": {
            "dataset": {"train": u["preference"], "format": "preference", "overlong": "drop"},
            "task": "preference",
        },
        "prompts": {
            "dataset": {"train": u["prompts"], "format": "prompts", "validationSplit": 0.3},
            "task": "reinforcement",
        },
        "pairs": {
            "dataset": {"train": u["pairs"], "format": "pairs"},
            "task": "sentence-embedding",
        },
        "mixture-split": {
            "dataset": {
                "mixture": [
                    {"train": u["chat"], "weight": 2.0},
                    {"train": u["instruction"], "format": "instruction", "weight": 1.0},
                ]
            }
        },
        "mixture-validation-file": {
            "dataset": {
                "mixture": [
                    {"train": u["instruction"], "weight": 1.0},
                    {"train": u["instruction_b"], "weight": 3.0},
                ],
                "format": "instruction",
                "validation": u["chat_val"].replace("chat_val", "instruction"),
            }
        },
    }


def _plain(value: Any) -> Any:
    """JSON-able form of an example field (tuples as lists, numpy scalars as ints)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def example_record(example: Any) -> list[Any]:
    """An example's class and every field, in declaration order."""
    return [type(example).__name__] + [
        [f.name, _plain(getattr(example, f.name))] for f in dataclasses.fields(example)
    ]


def _digest(records: Iterable[Any]) -> str:
    digest = hashlib.sha256()
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, default=str).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _step_digest(train: Any, world: int, seed: int) -> str:
    from finetune_api.config import TrainingSpec
    from finetune_trainer.steps import step_groups

    spec = TrainingSpec.model_validate({"batchSize": 3, "seed": seed})
    records: list[Any] = []
    epochs = 0
    for group in step_groups(train, spec, world_size=world):
        records.append(
            [group.epoch, group.end_of_epoch]
            + [[[example_record(e) for e in mb] for mb in rank] for rank in group.per_rank]
        )
        epochs += group.end_of_epoch
        if epochs == 2:
            break
    return _digest(records)


def digests(case: Case, prepare: Callable[..., Any] | None = None) -> dict[str, str]:
    """The digests of one configuration, prepared by ``prepare`` (default prepare_data)."""
    from conftest import build_tokenizer
    from finetune_api.config import DatasetSpec
    from finetune_trainer.data.prepare import prepare_data

    tokenizer = _tokenizer(build_tokenizer)
    options = {
        "max_length": 32,
        "seed": 7,
        "eval_samples": 3,
        "task": case.get("task", "causal-lm"),
    }
    options |= case.get("options", {})
    data = (prepare or prepare_data)(
        tokenizer, DatasetSpec.model_validate(case["dataset"]), **options
    )
    report = {k: v for k, v in data.report.as_dict().items() if not k.startswith("files")}
    for source in report.get("mixture", []):
        source["train"] = Path(source["train"]).name  # not the temporary directory
    labels = None if data.labels is None else _plain(getattr(data.labels, "names", None))
    return {
        "train": _digest(example_record(e) for e in data.train),
        "validation": _digest(example_record(e) for e in data.validation),
        "samples": _digest([s.prompt_ids, s.answer] for s in data.eval_samples),
        "report": _digest([report, labels]),
        "steps_world1": _step_digest(data.train, 1, 11),
        "steps_world2": _step_digest(data.train, 2, 11),
    }


_TOKENIZER: list[Any] = []


def _tokenizer(build: Callable[[], Any]) -> Any:
    if not _TOKENIZER:
        _TOKENIZER.append(build())
    return _TOKENIZER[0]


def all_digests(root: Path) -> dict[str, dict[str, str]]:
    return {name: digests(case) for name, case in cases(root).items()}


def main(argv: list[str]) -> int:
    import os

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FINETUNE_CACHE_DIR"] = str(Path(tmp) / "cache")
        data = Path(tmp) / "data"
        data.mkdir()
        result = all_digests(data)
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    if "--write" in argv:
        GOLDENS.parent.mkdir(parents=True, exist_ok=True)
        GOLDENS.write_text(text)
        print(f"wrote {GOLDENS} ({len(result)} configurations)")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
