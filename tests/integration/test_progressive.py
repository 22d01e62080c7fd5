"""Progressive unfreezing end to end on the tiny Llama (`finetune run`): the blocks join
on schedule (a block's weights stay the base's until its step, then move), the run
publishes a whole model that reloads to the evaluated one, and a run resumed from a
checkpoint in the middle of the schedule ends with the uninterrupted run's weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from finetune_cli.app import app
from finetune_trainer.checkpoint import TRAINABLE, prefix_for
from finetune_trainer.publish import verify_manifest

runner = CliRunner()
STEPS = 12


def run(job: Path) -> None:
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def progressive_job(make_job: Any, options: dict[str, Any], out: Path, **training: Any) -> Path:
    return make_job(
        method={"type": "progressive", "lora": None, "progressive": options},
        training={"maxSteps": STEPS, "learningRate": 3e-3, **training},
        dataset={"deduplicate": False},
        evaluation={"exactMatchSamples": 0},
        output={"uri": f"file://{out}", "checkpointEvery": 1, "keepCheckpoints": STEPS},
    )


def layer_changed(weights: dict[str, torch.Tensor], base: dict[str, torch.Tensor], i: int) -> bool:
    prefix = f"model.layers.{i}."
    return any(not torch.equal(t, base[n]) for n, t in weights.items() if n.startswith(prefix))


def test_blocks_join_on_schedule_and_the_whole_model_is_published(
    make_job: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    out = tmp_path / "out"
    run(progressive_job(make_job, {"everySteps": 4, "headLrMultiplier": 3}, out))
    base = load_file(tiny_model_dir / "model.safetensors")
    top, bottom = 1, 0  # the tiny model has two blocks

    def at(step: int) -> dict[str, torch.Tensor]:
        return load_file(out / prefix_for(step) / TRAINABLE)

    # step 4's checkpoint (after its hook) holds the top block, not yet trained
    assert not layer_changed(at(4), base, top)
    assert not any(n.startswith(f"model.layers.{bottom}.") for n in at(4))
    assert layer_changed(at(5), base, top)  # trained from step 5
    assert not layer_changed(at(8), base, bottom)
    assert layer_changed(at(9), base, bottom)  # trained from step 9
    assert "lm_head.weight" in at(1) and "model.embed_tokens.weight" not in at(STEPS)

    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["history"]]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    embed = base["model.embed_tokens.weight"].numel()
    total = sum(t.numel() for t in base.values())
    assert metrics["trainableParameters"] == total - embed  # all but the input embeddings

    assert verify_manifest(out) == []
    assert "library_name: transformers" in (out / "README.md").read_text()
    published = load_file(out / "model.safetensors")
    assert torch.equal(published["model.embed_tokens.weight"], base["model.embed_tokens.weight"])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert layer_changed(dict(model.state_dict()), base, bottom)
    # the CLI's loaders take it as a whole model: generate, verify, export (converted)
    said = runner.invoke(app, ["generate", str(out), "-p", "What is colour 1?"])
    assert said.exit_code == 0 and said.output.strip(), said.output
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    exported = tmp_path / "export"
    said = runner.invoke(app, ["export", str(out), "--to", f"file://{exported}"])
    assert said.exit_code == 0, said.output
    again = load_file(exported / "model.safetensors")
    assert torch.equal(
        again["model.layers.0.mlp.up_proj.weight"], published["model.layers.0.mlp.up_proj.weight"]
    )


@pytest.mark.parametrize(
    ("options", "resume_at"),
    [
        ({"everySteps": 3, "lrDecay": 0.5}, 3),  # the top block joins at step 4
        ({"everySteps": 3, "startBlocks": 1}, 5),  # mid-interval, one block already in
        ({"everyEpochs": 1}, 6),  # 48 rows / batch 8: the epoch ends at step 6
    ],
    ids=["joins-next", "mid-interval", "epoch-boundary"],
)
def test_resumed_mid_schedule_it_ends_with_the_uninterrupted_weights(
    make_job: Any, tmp_path: Path, options: dict[str, Any], resume_at: int
) -> None:
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    run(progressive_job(make_job, options, reference))
    # A run that stopped after the checkpoint of `resume_at`: only that checkpoint left.
    shutil.copytree(reference / prefix_for(resume_at), resumed / prefix_for(resume_at))
    run(progressive_job(make_job, options, resumed))

    metrics = json.loads((resumed / "metrics.json").read_text())
    assert metrics["resumedFromStep"] == resume_at
    assert metrics["stepsThisRun"] == STEPS - resume_at
    a, b = load_file(resumed / "model.safetensors"), load_file(reference / "model.safetensors")
    assert a.keys() == b.keys()
    moved = [n for n in a if not torch.equal(a[n], b[n])]
    assert all((a[n] - b[n]).abs().max() < 1e-6 for n in moved), moved
    first = json.loads((reference / "metrics.json").read_text())
    assert metrics["trainableParameters"] == first["trainableParameters"]
    assert metrics["evalLoss"] == pytest.approx(first["evalLoss"], rel=1e-5)
