"""DPO on two CPU processes (torchrun, gloo): the reference policy is the unwrapped
model with its adapter off on each rank, outside DistributedDataParallel's hooks, and
each rank's loss is its share of the step's pairs, so two ranks train exactly what one
process with two micro-batches per step trains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from test_distributed import launch
from test_preference_run import preference_rows

from conftest import write_jsonl
from finetune_api.config import TrainerConfig
from finetune_trainer.publish import verify_manifest


def write_config(tmp: Path, model_dir: Path, name: str, **training: Any) -> Path:
    train = write_jsonl(tmp / "train.jsonl", preference_rows(32))
    validation = write_jsonl(tmp / "validation.jsonl", preference_rows(8))
    processes = training.pop("processes", 1)
    config = TrainerConfig.model_validate(
        {
            "jobName": name,
            "task": "preference",
            "model": {"uri": f"file://{model_dir}"},
            "dataset": {
                "train": f"file://{train}",
                "validation": f"file://{validation}",
                "format": "preference",
                "deduplicate": False,
            },
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "preference": {"loss": "dpo"},
            "training": {
                "epochs": 1,
                "learningRate": 1e-2,
                "batchSize": 4,
                "maxSeqLength": 64,
                "metricsPort": 0,
                **training,
            },
            "evaluation": {"exactMatchSamples": 0},
            "output": {"uri": f"file://{tmp / name}"},
            "distributed": {"processesPerNode": processes},
        }
    )
    (tmp / name).mkdir()
    path = tmp / f"{name}.json"
    path.write_text(config.to_json())
    return path


def test_dpo_on_two_gloo_ranks_matches_one_process(tmp_path: Path, tiny_model_dir: Path) -> None:
    ddp = write_config(tmp_path, tiny_model_dir, "ddp", processes=2)
    result = launch(tmp_path, ddp, tmp_path / "ddp-marks", processes=2)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    assert verify_manifest(tmp_path / "ddp") == []
    rank0 = load_file(tmp_path / "ddp-marks" / "weights-rank-0.safetensors")
    rank1 = load_file(tmp_path / "ddp-marks" / "weights-rank-1.safetensors")
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert rank0[name].equal(rank1[name]), name

    single = write_config(tmp_path, tiny_model_dir, "single", gradientAccumulation=2)
    result = launch(tmp_path, single, tmp_path / "single-marks", processes=1)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    alone = load_file(tmp_path / "single-marks" / "weights-rank-0.safetensors")
    for name in rank0:
        assert (rank0[name] - alone[name]).abs().max() < 1e-4, name
    # The adapter trained: LoRA's B matrices start at zero.
    assert any("lora_B" in name and bool(alone[name].abs().max() > 0) for name in alone)
