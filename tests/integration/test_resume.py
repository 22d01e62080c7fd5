"""Checkpoints and resume, the way a cluster exercises them: `finetune train` processes
killed with SIGKILL (a node lost) and stopped with SIGTERM (a pod evicted), restarted on
the same output, ending where an uninterrupted run with the same seed ends."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from conftest import colour_rows, write_jsonl
from finetune_api.config import TrainerConfig
from finetune_trainer.checkpoint import complete_checkpoints, prefix_for
from finetune_trainer.publish import verify_manifest
from finetune_trainer.storage.store import MANIFEST, LocalStore

FINETUNE = str(Path(sys.executable).parent / "finetune")
STEPS = 60


LORA_METHOD: dict[str, Any] = {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1}}


def trainer_config(
    tmp: Path, model_dir: Path, out: Path, method: dict[str, Any] | None = None, **output: Any
) -> Path:
    """A TrainerConfig with dropout (so random state matters) and frequent checkpoints."""
    train = write_jsonl(tmp / "train.jsonl", colour_rows(96))
    validation = write_jsonl(tmp / "validation.jsonl", colour_rows(16))
    config = TrainerConfig.model_validate(
        {
            "jobName": "resume",
            "model": {"uri": f"file://{model_dir}"},
            "dataset": {
                "train": f"file://{train}",
                "validation": f"file://{validation}",
                "deduplicate": False,
            },
            "method": method or LORA_METHOD,
            "training": {
                "maxSteps": STEPS,
                "learningRate": 1e-2,
                "batchSize": 4,
                "maxSeqLength": 64,
                "metricsPort": 0,
            },
            "evaluation": {"exactMatchSamples": 0},
            "output": {"uri": f"file://{out}", "checkpointEvery": 4, **output},
        }
    )
    path = tmp / f"config-{out.name}.json"
    path.write_text(config.to_json())
    return path


def start(config: Path, tmp: Path) -> subprocess.Popen[bytes]:
    log = (tmp / "trainer.log").open("ab")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [FINETUNE, "train", "--config", str(config), "--termination-log", str(tmp / "term")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def newest_complete(out: Path) -> int:
    steps = complete_checkpoints(LocalStore("file://out", out))
    return max((s for s, keys in steps.items() if MANIFEST in keys), default=0)


def wait_for_checkpoint_after(proc: subprocess.Popen[bytes], out: Path, step: int) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        newest = newest_complete(out)
        if newest > step:
            return newest
        assert proc.poll() is None, f"trainer exited early ({proc.returncode})"
        time.sleep(0.02)
    raise AssertionError("no new checkpoint within 120 s")


def metrics(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def test_killed_and_terminated_run_resumes_to_the_same_result(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    rng = random.Random()
    kill_after = rng.choice([4, 8, 12, 16])
    reference_out, out = tmp_path / "reference", tmp_path / "interrupted"

    reference = subprocess.run(
        [
            FINETUNE,
            "train",
            "--config",
            str(trainer_config(tmp_path, tiny_model_dir, reference_out)),
        ],
        capture_output=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr.decode()[-3000:]

    config = trainer_config(tmp_path, tiny_model_dir, out)
    # 1. SIGKILL (no chance to save) a moment after a random checkpoint: a lost node.
    proc = start(config, tmp_path)
    reached = wait_for_checkpoint_after(proc, out, kill_after - 1)
    time.sleep(rng.uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = newest_complete(out)
    assert killed_at >= reached

    # 2. Restart: it resumes by itself; SIGTERM once it has made progress: an eviction.
    proc = start(config, tmp_path)
    wait_for_checkpoint_after(proc, out, killed_at)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, (tmp_path / "trainer.log").read_text()[-3000:]
    terminated_at = newest_complete(out)
    assert killed_at < terminated_at < STEPS
    termination = json.loads((tmp_path / "term").read_text())
    assert termination["reason"] == "Preempted"
    assert not (out / MANIFEST).exists(), "a preempted run must not publish"

    # 3. Restart again: it finishes and publishes.
    proc = start(config, tmp_path)
    assert proc.wait(timeout=300) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    log = (tmp_path / "trainer.log").read_text()
    assert f"resuming from file://{out}/{prefix_for(killed_at)}" in log
    assert f"resuming from file://{out}/{prefix_for(terminated_at)}" in log

    assert verify_manifest(out) == []
    resumed, uninterrupted = metrics(out), metrics(reference_out)
    assert resumed["steps"] == uninterrupted["steps"] == STEPS
    assert len(resumed["history"]) == STEPS
    assert resumed["evalLoss"] == pytest.approx(uninterrupted["evalLoss"], rel=0.01)
    # Same seed, same data order, same random state: on one CPU thread, the same weights.
    a = load_file(out / "adapter_model.safetensors")
    b = load_file(reference_out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-4, name
    # keepCheckpoints (2) newest complete sets remain, nothing half-written.
    left = complete_checkpoints(LocalStore("file://out", out))
    assert sorted(left) == [STEPS - 4, STEPS]
    assert all(MANIFEST in keys for keys in left.values())


@pytest.mark.parametrize(
    "method",
    [
        # VeRA: its shared matrices are buffers rebuilt from the key, not checkpointed
        {"type": "vera", "vera": {"r": 16, "veraDropout": 0.1, "saveProjection": False}},
        # LoRA-FA: A is frozen, not checkpointed, and drawn again from the seed on resume
        {"type": "lora-fa", "loraFa": {"r": 8, "alpha": 16, "dropout": 0.1}},
    ],
    ids=lambda m: m["type"],
)
def test_a_stopped_run_resumes_to_the_same_weights_per_method(
    tmp_path: Path, tiny_model_dir: Path, method: dict[str, Any]
) -> None:
    """A method whose frozen part is not in the checkpoint resumes exactly: stopped
    (SIGTERM) after a checkpoint and restarted, it publishes the uninterrupted run's
    adapter, frozen tensors included."""
    reference_out, out = tmp_path / "reference", tmp_path / "interrupted"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    config = trainer_config(tmp_path, tiny_model_dir, reference_out, method)
    reference = subprocess.run(
        [FINETUNE, "train", "--config", str(config)], capture_output=True, env=env, timeout=300
    )
    assert reference.returncode == 0, reference.stderr.decode()[-3000:]

    config = trainer_config(tmp_path, tiny_model_dir, out, method)
    proc = start(config, tmp_path)
    wait_for_checkpoint_after(proc, out, 7)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, (tmp_path / "trainer.log").read_text()[-3000:]
    stopped_at = newest_complete(out)
    assert 8 <= stopped_at < STEPS
    proc = start(config, tmp_path)
    assert proc.wait(timeout=300) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    assert (
        f"resuming from file://{out}/{prefix_for(stopped_at)}"
        in (tmp_path / "trainer.log").read_text()
    )

    a = load_file(out / "adapter_model.safetensors")
    b = load_file(reference_out / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-4, name


def test_a_rerun_trains_again_exactly_when_the_data_changed_in_place(
    make_job: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A finished job run again: with nothing changed it says it was already complete
    and publishes the same weights without claiming training; with the training file
    rewritten in place (same URI, same configuration) it trains from the beginning on
    the new rows, and what it publishes is the new run's."""
    from typer.testing import CliRunner

    from conftest import COLOURS
    from finetune_cli.app import app
    from finetune_trainer.publish import sha256_file

    job = make_job(
        dataset={"deduplicate": False},
        training={"maxSteps": 6},
        evaluation={"exactMatchSamples": 0},
    )
    out = tmp_path / "out"

    def run() -> str:
        caplog.clear()
        with caplog.at_level("INFO", logger="finetune.trainer"):
            result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output + caplog.text

    def identity_at(step: int) -> dict[str, str]:
        manifest = json.loads((out / prefix_for(step) / MANIFEST).read_text())
        return dict(manifest["fingerprint"])

    run()
    first, first_adapter = metrics(out), sha256_file(out / "adapter_model.safetensors")
    first_identity = identity_at(6)
    assert first["resumedFromStep"] is None and first["stepsThisRun"] == first["steps"] == 6

    # 1. Nothing changed: resumed at its last step, nothing trained, the same weights.
    said = run()
    again = metrics(out)
    assert "already complete" in said and "trained 6 steps" not in said
    assert again["resumedFromStep"] == 6 and again["stepsThisRun"] == 0
    assert again["steps"] == 6 and again["history"] == first["history"]
    assert sha256_file(out / "adapter_model.safetensors") == first_adapter
    assert again["evalLoss"] == pytest.approx(first["evalLoss"])
    assert verify_manifest(out) == []

    # 2. The training file rewritten in place: other answers, fewer rows.
    rows = colour_rows(40)
    for row in rows:
        answer = row["messages"][1]
        answer["content"] = COLOURS[(COLOURS.index(answer["content"]) + 1) % len(COLOURS)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    said = run()
    changed = metrics(out)
    assert "not resuming from" in said and "the training examples (trainContent" in said
    assert "already complete" not in said
    assert changed["resumedFromStep"] is None and changed["stepsThisRun"] == 6
    assert changed["data"]["trainRows"] == 40 != first["data"]["trainRows"]
    assert changed["history"] != first["history"]
    assert sha256_file(out / "adapter_model.safetensors") != first_adapter
    assert verify_manifest(out) == []
    # The old run's checkpoint was replaced by the new run's (40 rows: an epoch ends at
    # step 5): every one left differs from the old by the training data only.
    assert sorted(complete_checkpoints(LocalStore("file://out", out))) == [5, 6]
    for step in (5, 6):
        new_identity = identity_at(step)
        assert {k for k in new_identity if new_identity[k] != first_identity[k]} == {"trainContent"}


def test_a_run_that_stopped_early_stays_stopped_when_resumed(tiny_model_dir: Path) -> None:
    """Resumed from the checkpoint of its early stop (a finished job run again), a run
    trains no further, evaluates nothing, and ends with the best weights, as it did."""
    import copy

    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_api.config import TrainingSpec
    from finetune_api.config.training import EarlyStoppingSpec
    from finetune_trainer.data.formats import Example
    from finetune_trainer.data.tokenize import tokenize_example
    from finetune_trainer.loop import Checkpointable, Resume, TrainHooks, train
    from finetune_trainer.state import trainable_state

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = [
        tokenize_example(tokenizer, Example(messages=tuple(r["messages"])), 64)
        for r in colour_rows(16)
    ]

    def model() -> Any:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear"))

    saved: dict[int, Resume] = {}

    def save(cp: Checkpointable) -> None:
        saved[cp.state.step] = Resume(
            state=copy.deepcopy(cp.state),
            trainable=trainable_state(cp.model),
            optimizer=copy.deepcopy(cp.optimizer.state_dict()),
            scheduler=copy.deepcopy(cp.scheduler.state_dict()),
            best=cp.best,
        )

    scripted = iter([1.0, 0.5, 0.9, 0.8])
    spec = TrainingSpec(maxSteps=10, learningRate=3e-2, batchSize=4, warmupRatio=0)
    hooks = TrainHooks(
        evaluate=lambda m: {"evalLoss": next(scripted)},
        eval_every=2,
        early_stopping=EarlyStoppingSpec(metric="evalLoss", patience=2),
        save=save,
    )
    first_model = model()
    first = train(
        first_model,
        examples,
        spec,
        pad_id=tokenizer.eos_token_id,
        accelerator=Accelerator(cpu=True),
        hooks=hooks,
    )
    assert first.stopped_early and first.steps == 8 and max(saved) == 8

    def never(m: Any) -> dict[str, float]:
        raise AssertionError("a finished run evaluated again")

    again_model = model()
    again = train(
        again_model,
        examples,
        spec,
        pad_id=tokenizer.eos_token_id,
        accelerator=Accelerator(cpu=True),
        hooks=TrainHooks(
            evaluate=never,
            eval_every=2,
            early_stopping=EarlyStoppingSpec(metric="evalLoss", patience=2),
            resume=saved[8],
        ),
    )
    assert again.stopped_early and again.steps == 8 and again.steps_this_run == 0
    assert again.resumed_from == 8 and again.best_step == first.best_step == 4
    assert again.history == first.history
    trained = dict(first_model.named_parameters())
    for name, param in again_model.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, trained[name])
