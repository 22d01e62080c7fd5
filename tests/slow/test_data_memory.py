"""Peak RSS of prepare_data does not grow with the rows: the examples live in a
memory-mapped Arrow table, the file is read in chunks, and what stays per row is a few
numpy index arrays (~80 bytes a row), not Python objects (~6 KB a row before tables:
1.86 GB for 300k chat rows). Each size is prepared in its own process, its peak read
with ``resource.getrusage`` (~1 minute on two shared cores, hence slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]

MEASURE = """
import json, resource, sys
sys.path.insert(0, sys.argv[3])
from conftest import build_tokenizer
from finetune_api.config import DatasetSpec
from finetune_trainer.data.prepare import prepare_data

tokenizer = build_tokenizer()
spec = DatasetSpec.model_validate({"train": "file://" + sys.argv[1], "tokenizeProcesses": 1})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
data = prepare_data(tokenizer, spec, max_length=64, seed=0, eval_samples=2, use_cache=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"train": len(data.train), "before_kib": before, "peak_kib": peak}))
"""


def chat_file(path: Path, rows: int) -> Path:
    with path.open("w") as handle:
        for i in range(rows):
            answer = " ".join(
                ["red", "green", "blue", "yellow"][(i + k) % 4] for k in range(1 + i % 9)
            )
            row = {
                "messages": [
                    {"role": "user", "content": f"Question {i}: what colour is item {i}?"},
                    {"role": "assistant", "content": f"The colour is {answer}"},
                ]
            }
            handle.write(json.dumps(row) + "\n")
    return path


def peak_rss_kib(path: Path) -> int:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path), "", str(TESTS)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return int(result["peak_kib"])


def test_peak_rss_of_prepare_data_does_not_grow_with_the_rows(tmp_path: Path) -> None:
    small = peak_rss_kib(chat_file(tmp_path / "small.jsonl", 20_000))
    large = peak_rss_kib(chat_file(tmp_path / "large.jsonl", 100_000))

    # 80k more rows: index arrays only (measured: +9 MiB); Python examples would be ~500 MB.
    assert large - small < 16 * 1024, f"20k rows: {small} KiB, 100k rows: {large} KiB"
