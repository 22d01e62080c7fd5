"""Two CPU processes under torchrun with the gloo backend: the DDP path of the trainer.

The processes are real (torchrun starts them, they form a gloo process group over
127.0.0.1); a small driver around ``run_training`` records each rank's trained
weights and which ranks published, which the pod entrypoint does not expose.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from conftest import colour_rows, write_jsonl
from finetune_api.config import TrainerConfig
from finetune_trainer.publish import verify_manifest

DRIVER = """
import os, sys
from pathlib import Path
from safetensors.torch import save_file
import finetune_trainer.runner as runner
from finetune_api.config import TrainerConfig
from finetune_trainer.loop import trainable_state

rank = os.environ.get("RANK", "0")
out = Path(sys.argv[2])
fine_tune, publish = runner.fine_tune, runner._publish

def recording_fine_tune(*args, **kwargs):
    run = fine_tune(*args, **kwargs)
    save_file(trainable_state(run.model), out / f"weights-rank-{rank}.safetensors")
    return run

def recording_publish(*args, **kwargs):
    (out / f"published-by-rank-{rank}").touch()
    return publish(*args, **kwargs)

runner.fine_tune, runner._publish = recording_fine_tune, recording_publish
runner.run_training(TrainerConfig.from_json(Path(sys.argv[1]).read_text()))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp: Path, model_dir: Path, name: str, **training: Any) -> Path:
    train = write_jsonl(tmp / "train.jsonl", colour_rows(40))
    validation = write_jsonl(tmp / "validation.jsonl", colour_rows(8))
    processes = training.pop("processes", 1)
    strategy = training.pop("strategy", "auto")
    config = TrainerConfig.model_validate(
        {
            "jobName": name,
            "model": {"uri": f"file://{model_dir}"},
            "dataset": {
                "train": f"file://{train}",
                "validation": f"file://{validation}",
                "deduplicate": False,
            },
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "epochs": 1,
                "learningRate": 1e-2,
                "batchSize": 4,
                "maxSeqLength": 64,
                "metricsPort": 0,
                **training,
            },
            "evaluation": {"exactMatchSamples": 0},
            "output": {"uri": f"file://{tmp / name}", "checkpointEvery": 2},
            "distributed": {"processesPerNode": processes, "strategy": strategy},
        }
    )
    (tmp / name).mkdir()
    path = tmp / f"{name}.json"
    path.write_text(config.to_json())
    return path


def launch(tmp: Path, config: Path, out: Path, processes: int) -> subprocess.CompletedProcess[str]:
    out.mkdir()
    driver = tmp / "driver.py"
    driver.write_text(DRIVER)
    command = [sys.executable, str(driver), str(config), str(out)]
    if processes > 1:
        command = [
            sys.executable, "-m", "torch.distributed.run",
            f"--nproc-per-node={processes}", "--master-addr=127.0.0.1",
            f"--master-port={free_port()}", *command[1:],
        ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def test_two_gloo_ranks_train_identical_weights_and_publish_once(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    ddp = write_config(tmp_path, tiny_model_dir, "ddp", processes=2)
    marks = tmp_path / "ddp-marks"
    result = launch(tmp_path, ddp, marks, processes=2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    out = tmp_path / "ddp"

    rank0 = load_file(marks / "weights-rank-0.safetensors")
    rank1 = load_file(marks / "weights-rank-1.safetensors")
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert (rank0[name] == rank1[name]).all(), f"{name} differs between ranks"
    assert sorted(p.name for p in marks.glob("published-by-rank-*")) == ["published-by-rank-0"]
    assert verify_manifest(out) == []
    metrics = json.loads((out / "metrics.json").read_text())
    # 40 rows in batches of 4: 10 batches, two per step (one per rank).
    assert metrics["steps"] == 5
    # Every rank's random state is in the checkpoint; the shared parts once.
    checkpoint = json.loads((out / "checkpoints" / "step-5" / "manifest.json").read_text())
    paths = [f["path"] for f in checkpoint["files"]]
    assert [p for p in paths if p.startswith("rng/")] == ["rng/rank-0.pt", "rng/rank-1.pt"]
    assert paths.count("trainable.safetensors") == 1

    # The same steps on one process (two micro-batches per step) give the same weights:
    # each rank's loss is its share of the step's token-weighted sum.
    single = write_config(tmp_path, tiny_model_dir, "single", gradientAccumulation=2)
    result = launch(tmp_path, single, tmp_path / "single-marks", processes=1)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    alone = load_file(tmp_path / "single-marks" / "weights-rank-0.safetensors")
    for name in rank0:
        assert (rank0[name] - alone[name]).abs().max() < 1e-4, name


def test_a_plain_process_refuses_a_two_process_job(tmp_path: Path, tiny_model_dir: Path) -> None:
    config = write_config(tmp_path, tiny_model_dir, "lonely", processes=2)
    finetune = str(Path(sys.executable).parent / "finetune")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    result = subprocess.run(
        [finetune, "train", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2
    assert "sees a world of 1 process(es), the job expects 2" in result.stderr
    assert "WORLD_SIZE is not set" in result.stderr
    assert not (tmp_path / "lonely" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("env", "seen", "message"),
    [
        ({"WORLD_SIZE": "1"}, 1, "the launcher started WORLD_SIZE=1 processes but the job"),
        ({"WORLD_SIZE": "4"}, 1, "did not form with every process"),
        ({}, 1, "WORLD_SIZE is not set"),
    ],
)
def test_world_size_mismatches_are_refused(env: dict[str, str], seen: int, message: str) -> None:
    from finetune_api.config import DistributedSpec
    from finetune_trainer.distributed import check_world
    from finetune_trainer.errors import ConfigError

    spec = DistributedSpec(nodes=2, processes_per_node=2)
    with pytest.raises(ConfigError, match=message):
        check_world(spec, seen, env)
    check_world(spec, 4, {"WORLD_SIZE": "4"})  # the world it asked for passes


@pytest.mark.parametrize("method", ["lora", "full", "adapter", "vera", "lora-fa"])
def test_fsdp_on_two_gloo_ranks_matches_ddp(
    tmp_path: Path, tiny_model_dir: Path, method: str
) -> None:
    """FSDP2 shards parameters and optimizer state across the ranks; the arithmetic is
    the same as DDP's, so the trained weights agree."""
    marks: dict[str, Path] = {}
    for strategy in ("ddp", "fsdp"):
        config = write_config(
            tmp_path, tiny_model_dir, f"{method}-{strategy}", processes=2, strategy=strategy
        )
        if method == "full":
            data = json.loads(config.read_text())
            data["method"] = {"type": "full"}
            # SGD: Adam turns float noise in near-zero gradients into lr-sized steps,
            # which would hide whether the two strategies compute the same thing.
            data["training"].update(learningRate=0.5, optimizer="sgd")
            config.write_text(json.dumps(data))
        if method == "adapter":  # bottleneck adapters: hooks on the sharded blocks' sublayers
            data = json.loads(config.read_text())
            data["method"] = {"type": "adapter", "adapter": {"variant": "houlsby"}}
            config.write_text(json.dumps(data))
        if method in ("vera", "lora-fa"):  # shared frozen buffers; frozen A beside sharded B
            data = json.loads(config.read_text())
            section = {"vera": "vera", "lora-fa": "loraFa"}[method]
            data["method"] = {"type": method, section: {"r": 8}}
            config.write_text(json.dumps(data))
        marks[strategy] = tmp_path / f"{method}-{strategy}-marks"
        result = launch(tmp_path, config, marks[strategy], processes=2)
        assert result.returncode == 0, (result.stdout + result.stderr)[-20000:]
    ddp = load_file(marks["ddp"] / "weights-rank-0.safetensors")
    fsdp = load_file(marks["fsdp"] / "weights-rank-0.safetensors")
    assert ddp.keys() == fsdp.keys()
    for name in ddp:
        assert (ddp[name] - fsdp[name]).abs().max() < 1e-4, name
    # The FSDP checkpoint holds one optimizer shard per rank, and whole weights once.
    out = tmp_path / f"{method}-fsdp"
    checkpoint = json.loads((out / "checkpoints" / "step-5" / "manifest.json").read_text())
    paths = [f["path"] for f in checkpoint["files"]]
    assert [p for p in paths if p.startswith("optimizer")] == [
        "optimizer/rank-0.pt",
        "optimizer/rank-1.pt",
    ]
    assert verify_manifest(out) == []

    # Resume from step 4 (as if step 5 had never been saved): the sharded optimizer state
    # (AdamW moments for lora, SGD momentum for full) is restored on each rank, and the
    # run ends with the same weights.
    shutil.rmtree(out / "checkpoints" / "step-5")
    config = tmp_path / f"{method}-fsdp.json"
    again = tmp_path / f"{method}-fsdp-again-marks"
    result = launch(tmp_path, config, again, processes=2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert "resuming from" in result.stderr and "step-4" in result.stderr
    resumed = load_file(again / "weights-rank-0.safetensors")
    for name in fsdp:
        assert (resumed[name] - fsdp[name]).abs().max() < 1e-5, name
