"""data.parallel: chunks tokenized by worker processes give the very table one process
gives (same bytes, same examples, same report); a template failure in a worker names
its row; the default process count follows the container; the node lock serialises."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import write_jsonl
from finetune_api.config import DatasetSpec
from finetune_trainer.data import parallel, prepare
from finetune_trainer.data.prepare import prepare_data
from finetune_trainer.data.table import TableView
from finetune_trainer.errors import DataError


def chat_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is colour {i}?"},
                {"role": "assistant", "content": "red " * (1 + i % 6)},
            ]
        }
        for i in range(n)
    ]


def prepared(tokenizer: Any, path: Path, processes: int) -> Any:
    spec = DatasetSpec.model_validate({"train": f"file://{path}", "tokenizeProcesses": processes})
    return prepare_data(tokenizer, spec, max_length=32, seed=3, eval_samples=2, use_cache=False)


def test_two_processes_give_the_table_one_process_gives(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare, "CHUNK_ROWS", 16)  # 10 chunks, several in flight
    path = write_jsonl(tmp_path / "train.jsonl", chat_rows(150) + chat_rows(10))

    one = prepared(tiny_tokenizer, path, 1)
    two = prepared(tiny_tokenizer, path, 2)

    assert isinstance(one.train, TableView) and isinstance(two.train, TableView)
    assert one.train.tables[0].content_digest == two.train.tables[0].content_digest
    assert list(two.train) == list(one.train) and list(two.validation) == list(one.validation)
    assert two.report == one.report
    assert one.report.dropped_duplicates == 10  # across chunks: rows 150.. repeat rows 0..


def test_a_workers_template_failure_names_the_row(
    tiny_tokenizer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prepare, "CHUNK_ROWS", 4)
    rows = chat_rows(20)
    rows[13] = {"messages": [{"role": "assistant", "content": "no user turn"}]}
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if loop.first and m['role'] != 'user' %}"
        "{{ raise_exception('the first turn must be the user') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )

    with pytest.raises(DataError, match=r"dataset.train \(file://.*\): line 14: "):
        prepared(tokenizer, path, 2)


def test_the_default_follows_the_cpus_and_stops_at_eight(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _: set(range(32)))
    monkeypatch.setattr(parallel, "_cgroup_cpus", lambda: None)
    assert parallel.default_processes() == 8
    monkeypatch.setattr(parallel, "_cgroup_cpus", lambda: 2.5)  # cpu.max 250000 100000
    assert parallel.default_processes() == 2
    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda _: {0})
    assert parallel.default_processes() == 1


def test_the_node_lock_lets_one_holder_in_at_a_time(tmp_path: Path) -> None:
    lock = tmp_path / "entry.lock"
    events: list[str] = []

    def second() -> None:
        with parallel.node_lock(lock):
            events.append("second in")

    with parallel.node_lock(lock) as held:
        assert held
        other = threading.Thread(target=second)
        other.start()
        time.sleep(0.3)
        events.append("first out")
    other.join(5)
    assert events == ["first out", "second in"]


def test_workers_are_never_forked_from_the_trainer() -> None:
    """A trainer has threads by the time it prepares data (metrics server, lease
    renewal); a plain fork inherits their held locks and can hang forever, as a suite
    run did. Workers come from a fork server, or are spawned."""
    assert parallel.worker_context().get_start_method() in ("forkserver", "spawn")


def test_a_pool_tokenizes_in_other_processes() -> None:
    chunks = [[i, i + 1] for i in range(0, 16, 2)]
    results = list(parallel.tokenize_chunks(chunks, _pid_of, processes=2))
    assert [len(r) for r in results if isinstance(r, list)] == [2] * 8
    pids = {pid for r in results if isinstance(r, list) for pid in r}
    assert pids and os.getpid() not in pids


def _pid_of(_: object) -> Any:
    return os.getpid()
