"""Streaming runs (dataset.streaming): killed and resumed they end with the uninterrupted
run's weights (the stream's position comes back with the checkpoint), an S3 object is
read as it arrives rather than downloaded, and validate refuses what cannot stream."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from test_resume import newest_complete

from conftest import colour_rows, write_jsonl
from finetune_api.config import ColumnMapping, TrainerConfig
from finetune_api.uri import Role
from finetune_trainer.checkpoint import DATA_STREAM, prefix_for
from finetune_trainer.data.stream import StreamSettings, open_source, open_stream
from finetune_trainer.storage.backends import Access
from finetune_trainer.storage.store import MANIFEST

FINETUNE = str(Path(sys.executable).parent / "finetune")
STEPS = 12


def streaming_config(tmp: Path, model_dir: Path, out: Path) -> Path:
    """A streaming run with dropout (random state matters), a shuffle buffer smaller than
    the file, and passes that end mid-run (20 rows, 4 per step)."""
    rows = colour_rows(20)
    for i, row in enumerate(rows):  # distinct rows, so the order shows in the weights
        row["messages"][0]["content"] += f" ({i})"
    train = write_jsonl(tmp / "train.jsonl", rows)
    validation = write_jsonl(tmp / "validation.jsonl", colour_rows(8))
    config = TrainerConfig.model_validate(
        {
            "jobName": "streaming",
            "model": {"uri": f"file://{model_dir}"},
            "dataset": {
                "train": f"file://{train}",
                "validation": f"file://{validation}",
                "deduplicate": False,
                "streaming": True,
                "shuffleBuffer": 6,
            },
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1}},
            "training": {
                "maxSteps": STEPS,
                "learningRate": 1e-2,
                "batchSize": 4,
                "maxSeqLength": 64,
                "metricsPort": 0,
            },
            "evaluation": {"exactMatchSamples": 0},
            "output": {"uri": f"file://{out}", "checkpointEvery": 2},
        }
    )
    path = tmp / f"config-{out.name}.json"
    path.write_text(config.to_json())
    return path


def train(config: Path, tmp: Path) -> subprocess.Popen[bytes]:
    log = (tmp / "trainer.log").open("ab")
    return subprocess.Popen(
        [FINETUNE, "train", "--config", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_a_killed_streaming_run_resumes_to_the_same_weights(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    reference_out, out = tmp_path / "reference", tmp_path / "interrupted"
    reference = train(streaming_config(tmp_path, tiny_model_dir, reference_out), tmp_path)
    assert reference.wait(timeout=300) == 0, (tmp_path / "trainer.log").read_text()[-3000:]

    config = streaming_config(tmp_path, tiny_model_dir, out)
    proc = train(config, tmp_path)
    while newest_complete(out) < 2:  # SIGKILL right after the first checkpoint
        assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = newest_complete(out)
    assert 2 <= killed_at < STEPS, "the run was not interrupted mid-way"
    saved = json.loads((out / prefix_for(killed_at) / DATA_STREAM).read_text())
    assert saved["counts"]["examples"] == 4 * killed_at  # the position: 4 examples a step
    manifest = json.loads((out / prefix_for(killed_at) / MANIFEST).read_text())
    assert DATA_STREAM in {entry["path"] for entry in manifest["files"]}

    proc = train(config, tmp_path)
    assert proc.wait(timeout=300) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    assert (
        f"resuming from file://{out}/{prefix_for(killed_at)}"
        in (tmp_path / "trainer.log").read_text()
    )

    resumed = json.loads((out / "metrics.json").read_text())
    uninterrupted = json.loads((reference_out / "metrics.json").read_text())
    assert resumed["steps"] == uninterrupted["steps"] == STEPS
    assert resumed["data"] == uninterrupted["data"]
    assert resumed["data"]["streamed"] is True
    assert resumed["data"]["trainRows"] == 4 * STEPS
    assert resumed["data"]["passes"] >= 3  # 48 examples of 20 rows
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(reference_out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-4, name


def test_streaming_from_s3_reads_the_object_as_it_arrives(
    s3_env: Any, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    """The S3 body is read as a stream: no copy of the object lands in the cache (where
    a download would put it), and the examples are the local file's."""
    local = write_jsonl(tmp_path / "train.jsonl", colour_rows(300))
    s3_env.client.upload_file(str(local), s3_env.bucket, "data/train.jsonl")
    settings = StreamSettings("messages", ColumnMapping(), 64)
    remote = open_stream(
        s3_env.uri("data/train.jsonl"), Access(), tiny_tokenizer, settings, seed=0, buffer_size=1
    )
    from_file = open_stream(
        f"file://{local}", Access(), tiny_tokenizer, settings, seed=0, buffer_size=1
    )
    for _ in range(320):  # across the end of the first pass
        assert next(remote).input_ids == next(from_file).input_ids
    cache = Path(os.environ["FINETUNE_CACHE_DIR"])
    assert not [p for p in cache.rglob("*") if p.is_file()], "the object was downloaded"
    # The run's identity knows the object's version: rewritten, it is other data.
    before = open_source(s3_env.uri("data/train.jsonl"), Access()).version
    s3_env.client.upload_file(
        str(write_jsonl(local, colour_rows(5))), s3_env.bucket, "data/train.jsonl"
    )
    after = open_source(s3_env.uri("data/train.jsonl"), Access()).version
    assert "@" in before and before != after


def test_validate_refuses_a_json_train_with_streaming(make_job: Any, tmp_path: Path) -> None:
    train = tmp_path / "rows.json"
    train.write_text(json.dumps(colour_rows(4)))
    job = make_job(dataset={"train": f"file://{train}", "streaming": True, "deduplicate": False})
    result = subprocess.run(
        [FINETUNE, "validate", str(job)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "dataset" in result.stdout + result.stderr
    assert "convert train to JSON Lines (.jsonl)" in result.stdout + result.stderr


def rss_kib() -> int:
    """This process's resident memory now (not its peak: loading the libraries set that)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.parametrize("rows", [50_000])
def test_a_stream_memory_does_not_grow_with_rows(
    tmp_path: Path, tiny_tokenizer: Any, rows: int
) -> None:
    """Reading 50k rows through a stream keeps its memory flat: the RSS after the first
    5k rows and after all of them differ by little (a prepared list would grow)."""
    path = write_jsonl(tmp_path / "big.jsonl", colour_rows(rows))
    settings = StreamSettings("messages", ColumnMapping(), 64)
    stream = open_stream(
        f"file://{path}", Access(), tiny_tokenizer, settings, seed=0, buffer_size=1000
    )
    for _ in range(5_000):
        next(stream)
    early = rss_kib()
    for _ in range(rows - 5_000):
        next(stream)
    late = rss_kib()
    assert stream.report()["rowsRead"] == rows
    print(f"stream RSS: {early} KiB after 5k rows, {late} KiB after {rows}")
    assert late - early < 20_000, (early, late)  # KiB


def test_streaming_from_the_hub_reads_the_file_as_it_arrives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    """One file of a Hub dataset repository streams over HTTP from the endpoint (the
    local Hub stand-in): the examples are the file's, and neither the Hub's cache nor the
    trainer's holds a copy."""
    from hub_server import HubStandIn

    local = write_jsonl(tmp_path / "train.jsonl", colour_rows(40))
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        hub.add_dataset("acme/chats", {"data/train.jsonl": local.read_bytes()})
        settings = StreamSettings("messages", ColumnMapping(), 64)
        remote = open_stream(
            "hf://datasets/acme/chats/data/train.jsonl",
            Access(),
            tiny_tokenizer,
            settings,
            seed=0,
            buffer_size=1,
        )
        from_file = open_stream(
            f"file://{local}", Access(), tiny_tokenizer, settings, seed=0, buffer_size=1
        )
        for _ in range(50):  # across the end of the first pass
            assert next(remote).input_ids == next(from_file).input_ids
    for cache in (tmp_path / "hf-cache", Path(os.environ["FINETUNE_CACHE_DIR"])):
        assert not [p for p in cache.rglob("*") if p.is_file()], f"a copy in {cache}"


def test_an_s3_stream_cut_mid_read_resumes_at_the_byte_and_refuses_a_replaced_object(
    s3_env: Any, tmp_path: Path
) -> None:
    """A connection lost while reading is picked up where it stopped (a ranged GET of
    the same version); the object replaced in between is an error, not two files mixed."""
    from botocore.exceptions import IncompleteReadError

    from finetune_trainer.errors import StorageError
    from finetune_trainer.storage.backends import backend_for
    from finetune_trainer.storage.s3 import ObjectStream

    content = b"".join(b"%06d\n" % i for i in range(20_000))
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="t.jsonl", Body=content)
    backend, parsed = backend_for(s3_env.uri("t.jsonl"), Role.DATASET)

    class Cut:
        """The first body's connection drops after its first read."""

        def __init__(self, body: Any) -> None:
            self.body, self.reads = body, 0

        def read(self, n: int) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise IncompleteReadError(actual_bytes=0, expected_bytes=n)
            return bytes(self.body.read(n))

        def close(self) -> None:
            self.body.close()

    stream = backend.open_stream(parsed, Access())
    assert isinstance(stream, ObjectStream)
    stream.body = Cut(stream.body)
    assert stream.read(1000) + stream.read() == content

    replaced = backend.open_stream(parsed, Access())
    assert isinstance(replaced, ObjectStream)
    first = replaced.read(1000)
    replaced.body = Cut(replaced.body)
    replaced.body.reads = 1
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="t.jsonl", Body=b"other\n")
    with pytest.raises(StorageError, match=r"t\.jsonl"):
        replaced.read()
    assert first == content[:1000]


def test_a_hub_dataset_split_streams_with_its_held_out_split(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, make_job: Any
) -> None:
    """dataset.hub with streaming: the subset's train split (two files, read one after
    the other) is the stream, its held-out split the validation; a run trains on it."""
    from typer.testing import CliRunner

    from finetune_cli.app import app
    from hub_server import HubStandIn

    rows = [json.dumps(r) + "\n" for r in colour_rows(48)]
    card = """---
configs:
- config_name: colours
  data_files:
  - split: train
    path: "colours/train-*.jsonl"
  - split: test
    path: "colours/test.jsonl"
---
"""
    with HubStandIn() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        hub.add_dataset(
            "acme/chats",
            {
                "README.md": card,
                "colours/train-00000.jsonl": "".join(rows[:24]),
                "colours/train-00001.jsonl": "".join(rows[24:40]),
                "colours/test.jsonl": "".join(rows[40:]),
            },
        )
        job = make_job(
            dataset={
                "train": "hf://datasets/acme/chats",
                "validation": None,
                "deduplicate": False,
                "streaming": True,
                "shuffleBuffer": 1,
                "hub": {"subset": "colours", "split": "train", "validation": "test"},
            },
            training={"maxSteps": 6, "batchSize": 8},
        )
        result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads((job.parent / "out" / "metrics.json").read_text())["data"]
    assert data["streamed"] is True
    assert data["validationRows"] == 8
    assert data["trainRows"] == 48  # 6 steps of 8: the 40 train rows, and a second pass
    assert data["passes"] == 2


def test_plan_does_not_read_a_stream(make_job: Any, tmp_path: Path) -> None:
    """`finetune plan` plans a streaming job from the spec (maxSteps, maxSeqLength) rather
    than preparing a train file that may be larger than the machine: a train file it
    could not even parse does not stop it."""
    from typer.testing import CliRunner

    from finetune_cli.app import app

    train = tmp_path / "huge.jsonl"
    train.write_bytes(b"not json at all\n")
    job = make_job(dataset={"train": f"file://{train}", "streaming": True, "deduplicate": False})
    result = CliRunner().invoke(app, ["plan", str(job)])
    assert result.exit_code == 0, result.output
    assert "huge.jsonl" not in result.output
    assert "not read: sequences of up to 64 tokens assumed" in result.output
