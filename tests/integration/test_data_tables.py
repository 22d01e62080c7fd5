"""`finetune run` on tokenized tables: the run trains from the Arrow entry, a rerun maps
the local entry, and a pod with an empty disk (a fresh FINETUNE_CACHE_DIR) but the same
output downloads the output's copy instead of tokenizing; a damaged copy is a slower
run, never a failed one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from finetune_cli.app import app
from finetune_trainer.data import cache, prepare
from finetune_trainer.storage.cache import CACHE_DIR_ENV

runner = CliRunner()


def run(job: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics: dict[str, Any] = json.loads((job.parent / "out" / "metrics.json").read_text())
    return metrics


def files(data: dict[str, Any]) -> tuple[int, int]:
    return data["filesTokenized"], data["filesFromCache"]


def no_tokenizing(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("tokenized although a cache holds these examples")


def test_a_fresh_pod_reuses_the_outputs_copy_of_the_tokens(
    make_job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_cache_dir: Path
) -> None:
    job = make_job(training={"maxSteps": 2})

    first = run(job)
    assert files(first["data"]) == (2, 0)
    assert len(first["history"]) == 2  # trained from the table
    local = sorted(p.name for p in (private_cache_dir / "tokenized").glob("*.arrow"))
    assert [name.split(".")[0] for name in local] == ["train", "validation"]
    copies = tmp_path / "out" / cache.REMOTE_PREFIX
    assert sorted(p.suffix for p in copies.iterdir()) == [".arrow", ".arrow", ".json", ".json"]
    published = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert not [f for f in published["files"] if "data-cache" in f["path"]]

    assert files(run(job)["data"]) == (0, 2)  # the same node: its local entries

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "another-node"))
    monkeypatch.setattr(prepare, "tokenize_example", no_tokenizing)
    fresh = run(job)
    assert files(fresh["data"]) == (0, 2)
    counts = {k: v for k, v in first["data"].items() if not k.startswith("files")}
    assert {k: fresh["data"][k] for k in counts} == counts
    downloaded = tmp_path / "another-node" / "tokenized"
    assert sorted(p.name for p in downloaded.glob("*.arrow")) == local


def test_a_damaged_copy_in_the_output_is_tokenized_again(
    make_job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job(training={"maxSteps": 1})
    run(job)
    for copy in (tmp_path / "out" / cache.REMOTE_PREFIX).glob("*.arrow"):
        data = bytearray(copy.read_bytes())
        data[len(data) // 2] ^= 0xFF  # same size, another sha256
        copy.write_bytes(bytes(data))

    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "another-node"))
    assert files(run(job)["data"]) == (2, 0)
