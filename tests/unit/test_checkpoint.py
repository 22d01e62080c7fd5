"""Checkpoint files, their manifest, choosing one to resume from, pruning, and SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_api.config import TrainerConfig
from finetune_trainer import checkpoint
from finetune_trainer.errors import Preempted, StorageError
from finetune_trainer.loop import Checkpointable, LoopState
from finetune_trainer.preemption import handle_sigterm
from finetune_trainer.storage.store import MANIFEST, LocalStore


def config(**training: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "jobName": "ckpt",
            "model": {"uri": "file:///models/tiny"},
            "dataset": {"train": "file:///data/train.jsonl"},
            "training": {"maxSteps": 10, **training},
            "output": {"uri": "file:///out", "keepCheckpoints": 2},
        }
    )


@pytest.fixture
def accelerator() -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=True)


def live(step: int) -> Checkpointable:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 2)
    model.bias.requires_grad_(False)
    optimizer = torch.optim.AdamW([model.weight], lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    scheduler.step()
    state = LoopState(
        step=step,
        tokens=100 * step,
        samples=8 * step,
        seconds=1.5,
        history=[{"step": 1, "loss": 2.0}],
        eval_history=[],
        carry={"before": {"evalLossBefore": 3.0}},
    )
    return Checkpointable(state, model, optimizer, scheduler, None, None, end_of_epoch=False)


def test_save_then_load_round_trips_every_part(tmp_path: Path, accelerator: Any) -> None:
    store = LocalStore("file://out", tmp_path)
    cp = live(4)
    checkpoint.save(store, cp, config=config(), accelerator=accelerator)

    manifest = json.loads((tmp_path / "checkpoints/step-4" / MANIFEST).read_text())
    assert {f["path"] for f in manifest["files"]} == {
        "trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json", "rng/rank-0.pt",
    }  # fmt: skip
    assert manifest["fingerprint"] == checkpoint.fingerprint(config())

    expected = [random.random(), torch.rand(3).tolist()]  # what follows the saved RNG state
    random.seed(123)
    torch.manual_seed(123)
    resume = checkpoint.load(store, 4, rank=0)
    resume.restore_rng()
    assert [random.random(), torch.rand(3).tolist()] == expected

    assert resume.state.step == 4 and resume.state.tokens == 400
    assert resume.state.carry == {"before": {"evalLossBefore": 3.0}}
    assert set(resume.trainable) == {"weight"}  # only what requires a gradient
    assert torch.equal(resume.trainable["weight"], cp.model.weight.detach())
    exp_avg = resume.optimizer["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, cp.optimizer.state_dict()["state"][0]["exp_avg"])
    assert resume.scheduler["last_epoch"] == 1


def test_the_newest_complete_checkpoint_is_chosen(tmp_path: Path, accelerator: Any) -> None:
    store = LocalStore("file://out", tmp_path)
    for step in (2, 4):
        checkpoint.save(store, live(step), config=config(), accelerator=accelerator)
    # step 6 was being written when the pod was killed: no manifest, so it does not exist.
    (tmp_path / "checkpoints/step-6").mkdir()
    (tmp_path / "checkpoints/step-6/trainable.safetensors").write_bytes(b"partial")

    assert checkpoint.latest_usable(store, checkpoint.fingerprint(config()), tmp_path) == 4


def test_a_checkpoint_of_another_configuration_is_not_resumed(
    tmp_path: Path, accelerator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore("file://out", tmp_path)
    checkpoint.save(store, live(4), config=config(learningRate=1e-3), accelerator=accelerator)

    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        found = checkpoint.latest_usable(store, checkpoint.fingerprint(config()), tmp_path)
    assert found is None
    assert "different configuration (changed: training)" in caplog.text

    # The metrics port and evaluation settings do not make a checkpoint foreign.
    same = checkpoint.fingerprint(config(metricsPort=0))
    assert checkpoint.fingerprint(config()) == same

    # This run's first checkpoint removes the foreign one.
    checkpoint.save(store, live(2), config=config(), accelerator=accelerator)
    assert sorted(checkpoint.complete_checkpoints(store)) == [2]


def test_older_checkpoints_beyond_keep_and_debris_are_removed(
    tmp_path: Path, accelerator: Any
) -> None:
    store = LocalStore("file://out", tmp_path)
    (tmp_path / "checkpoints/step-1").mkdir(parents=True)
    (tmp_path / "checkpoints/step-1/optimizer.pt").write_bytes(b"debris of a killed save")
    for step in (2, 4, 6):
        checkpoint.save(store, live(step), config=config(), accelerator=accelerator)
    assert sorted(checkpoint.complete_checkpoints(store)) == [4, 6]
    assert not (tmp_path / "checkpoints/step-1").exists()


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path: Path, accelerator: Any) -> None:
    store = LocalStore("file://out", tmp_path)
    checkpoint.save(store, live(4), config=config(), accelerator=accelerator)
    target = tmp_path / "checkpoints/step-4/optimizer.pt"
    target.write_bytes(target.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(StorageError, match=r"step-4/optimizer.pt: does not match its manifest"):
        checkpoint.load(store, 4, rank=0)


def test_a_planted_pickle_is_not_executed(tmp_path: Path, accelerator: Any) -> None:
    """State dicts are read with weights_only: a pickle that runs code is refused."""
    store = LocalStore("file://out", tmp_path)
    checkpoint.save(store, live(4), config=config(), accelerator=accelerator)

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    target = tmp_path / "checkpoints/step-4/scheduler.pt"
    torch.save({"x": Evil()}, target)
    manifest_path = tmp_path / "checkpoints/step-4" / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    from finetune_trainer.publish import sha256_file

    for entry in manifest["files"]:
        if entry["path"] == "scheduler.pt":
            entry.update(size=target.stat().st_size, sha256=sha256_file(target))
    manifest_path.write_text(json.dumps(manifest))

    with pytest.raises(Exception, match="Weights only load failed"):
        checkpoint.load(store, 4, rank=0)
    assert not (tmp_path / "pwned").exists()


def test_sigterm_outside_training_stops_at_once_and_inside_waits_for_the_step() -> None:
    with handle_sigterm() as stop:
        with pytest.raises(Preempted):
            os.kill(os.getpid(), signal.SIGTERM)
        stop.requested = False
        with stop.during_training():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop() is True  # flagged, not raised: the loop saves, then stops
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
