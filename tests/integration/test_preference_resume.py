"""A preference (DPO) run killed after a checkpoint and restarted ends with the weights
of the uninterrupted run: the reference policy, its precomputed log-probabilities and
the random state all come back the same on resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file
from test_preference_run import preference_rows
from test_resume import newest_complete, wait_for_checkpoint_after

from conftest import write_jsonl
from finetune_api.config import TrainerConfig
from finetune_trainer.checkpoint import prefix_for
from finetune_trainer.publish import verify_manifest
from finetune_trainer.storage.store import MANIFEST

FINETUNE = str(Path(sys.executable).parent / "finetune")
STEPS = 24
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def trainer_config(
    tmp: Path, model_dir: Path, out: Path, method: dict[str, Any], preference: dict[str, Any]
) -> Path:
    """A DPO-family TrainerConfig with frequent checkpoints; lora dropout (when LoRA) so
    that the random state matters."""
    train = write_jsonl(tmp / "train.jsonl", preference_rows(48))
    validation = write_jsonl(tmp / "validation.jsonl", preference_rows(8))
    config = TrainerConfig.model_validate(
        {
            "jobName": "dpo-resume",
            "task": "preference",
            "model": {"uri": f"file://{model_dir}"},
            "dataset": {
                "train": f"file://{train}",
                "validation": f"file://{validation}",
                "format": "preference",
                "deduplicate": False,
            },
            "method": method,
            "preference": preference,
            "training": {
                "maxSteps": STEPS,
                "learningRate": 1e-3 if method["type"] == "full" else 1e-2,
                "batchSize": 4,
                "maxSeqLength": 64,
                "metricsPort": 0,
            },
            "evaluation": {"exactMatchSamples": 0},
            "output": {"uri": f"file://{out}", "checkpointEvery": 4},
        }
    )
    path = tmp / f"config-{out.name}.json"
    path.write_text(config.to_json())
    return path


def start(config: Path, tmp: Path) -> subprocess.Popen[bytes]:
    log = (tmp / "trainer.log").open("ab")
    return subprocess.Popen(
        [FINETUNE, "train", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT, env=ENV
    )


@pytest.mark.parametrize(
    ("method", "preference", "stop", "weights"),
    [
        (
            {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1}},
            {"loss": "dpo", "labelSmoothing": 0.1},
            signal.SIGKILL,
            "adapter_model.safetensors",
        ),
        (
            {"type": "full"},
            {"loss": "dpo", "precomputeReference": True},
            signal.SIGTERM,
            "model.safetensors",
        ),
    ],
    ids=["lora-dpo-sigkill", "full-dpo-precomputed-sigterm"],
)
def test_an_interrupted_dpo_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path,
    tiny_model_dir: Path,
    method: dict[str, Any],
    preference: dict[str, Any],
    stop: signal.Signals,
    weights: str,
) -> None:
    reference_out, out = tmp_path / "reference", tmp_path / "interrupted"
    config = trainer_config(tmp_path, tiny_model_dir, reference_out, method, preference)
    uninterrupted = subprocess.run(
        [FINETUNE, "train", "--config", str(config)], capture_output=True, env=ENV, timeout=300
    )
    assert uninterrupted.returncode == 0, uninterrupted.stderr.decode()[-3000:]

    config = trainer_config(tmp_path, tiny_model_dir, out, method, preference)
    proc = start(config, tmp_path)
    wait_for_checkpoint_after(proc, out, 7)
    proc.send_signal(stop)
    proc.wait(timeout=60)
    stopped_at = newest_complete(out)
    assert 8 <= stopped_at < STEPS, stopped_at
    assert not (out / MANIFEST).exists()

    proc = start(config, tmp_path)
    assert proc.wait(timeout=300) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    log = (tmp_path / "trainer.log").read_text()
    assert f"resuming from file://{out}/{prefix_for(stopped_at)}" in log
    assert verify_manifest(out) == []

    a, b = load_file(out / weights), load_file(reference_out / weights)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].equal(b[name]), name  # bit for bit: one thread, same random state
