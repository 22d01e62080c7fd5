"""method.type adapter end to end on the tiny Llama: `finetune run` learns and publishes
the bottleneck format; the published set verifies, reloads through the loader to the
model that was evaluated, and answers through `finetune generate`; a merge is refused
(validate, export); a run stopped after a checkpoint resumes to the uninterrupted
run's adapter weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from test_resume import FINETUNE, newest_complete, start, wait_for_checkpoint_after
from typer.testing import CliRunner

from conftest import colour_rows, write_jsonl
from finetune_api.config import TrainerConfig
from finetune_cli.app import app
from finetune_trainer.publish import verify_manifest

OPTIONS = {"variant": "houlsby", "reductionFactor": 8, "nonlinearity": "gelu"}


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """One 12-step adapter run through `finetune run` (module-scoped: the tests read it)."""
    import yaml

    tmp = tmp_path_factory.mktemp("adapter-run")
    train = write_jsonl(tmp / "train.jsonl", colour_rows(48))
    validation = write_jsonl(tmp / "validation.jsonl", colour_rows(8))
    job = tmp / "job.yaml"
    spec = {
        "model": {"uri": f"file://{tiny_model_dir}"},
        "dataset": {"train": f"file://{train}", "validation": f"file://{validation}"},
        "method": {"type": "adapter", "adapter": OPTIONS},
        "training": {"maxSteps": 12, "learningRate": 3e-2, "batchSize": 4, "maxSeqLength": 64},
        "evaluation": {"exactMatchSamples": 2, "maxNewTokens": 4},
        "output": {"uri": f"file://{tmp / 'out'}"},
    }
    manifest = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "adapter"},
        "spec": spec,
    }
    job.write_text(yaml.safe_dump(manifest))
    result = cli("run", str(job))
    assert result.exit_code == 0, result.output
    return tmp / "out"


def test_it_learns_and_publishes_the_bottleneck_format(
    published: Path, tiny_model_dir: Path
) -> None:
    metrics = json.loads((published / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["history"]]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    # hidden 64 / 8 = width 8; two sites in each of 2 blocks: (8x64 + 8) + (64x8 + 64)
    assert metrics["trainableParameters"] == 2 * 2 * (8 * 64 + 8 + 64 * 8 + 64)

    assert verify_manifest(published) == []
    assert cli("verify", str(published)).exit_code == 0
    names = {p.name for p in published.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert "model.safetensors" not in names
    config = json.loads((published / "adapter_config.json").read_text())
    assert config["finetune_adapter"] == "bottleneck"
    assert config["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    assert config["options"] == {**config["options"], **OPTIONS}
    card = (published / "README.md").read_text()
    assert "load_bottleneck_adapter" in card and "library_name: transformers" in card


def test_the_loader_gives_back_the_evaluated_model(published: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.data.prepare import prepare_data
    from finetune_trainer.evaluation import evaluation_loss
    from finetune_trainer.inference import load, open_set

    metrics = json.loads((published / "metrics.json").read_text())
    with open_set(f"file://{published}") as artifact:
        loaded = load(artifact, "fp32").model  # what finetune generate loads
    config = TrainerConfig.model_validate(
        json.loads((published / "manifest.json").read_text())["spec"]
    )
    tokenizer = AutoTokenizer.from_pretrained(published)
    data = prepare_data(
        tokenizer, config.dataset, max_length=64, seed=config.training.seed, eval_samples=0
    )
    loss = evaluation_loss(loaded, data.validation, 4, tokenizer.pad_token_id)
    assert loss == pytest.approx(metrics["evalLoss"], rel=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[5, 17, 42, 9, 3]])
    with torch.no_grad():
        assert not torch.allclose(base(input_ids=ids).logits, loaded(input_ids=ids).logits)


def test_generate_answers_with_the_adapter(published: Path, tiny_model_dir: Path) -> None:
    result = cli("generate", str(published), "-p", "What is colour 1?", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    assert f"adapter on file://{tiny_model_dir}" in result.stderr


def test_a_merge_is_refused_before_and_after_training(published: Path, tmp_path: Path) -> None:
    result = cli("export", str(published), "--to", f"file://{tmp_path / 'export'}")
    assert result.exit_code != 0
    assert "non-linear" in result.output
    manifest = json.loads((published / "manifest.json").read_text())
    job = tmp_path / "job.json"
    spec = manifest["spec"]
    job.write_text(
        json.dumps(
            {
                "apiVersion": "finetune-operator.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "merge"},
                "spec": {
                    "model": spec["model"],
                    "dataset": {"train": spec["dataset"]["train"]},
                    "method": {"type": "adapter"},
                    "output": {"uri": f"file://{tmp_path / 'out'}", "merge": True},
                },
            }
        )
    )
    refused = cli("validate", str(job))
    assert refused.exit_code != 0
    assert "output.merge" in refused.output and "non-linear" in refused.output


def test_a_stopped_run_resumes_to_the_same_adapter(tmp_path: Path, tiny_model_dir: Path) -> None:
    """SIGTERM after a checkpoint (an eviction), restart: the adapter weights equal an
    uninterrupted run's (dropout on, so the random state must be restored too)."""
    train = write_jsonl(tmp_path / "train.jsonl", colour_rows(48))

    def config(out: Path) -> Path:
        trainer = TrainerConfig.model_validate(
            {
                "jobName": "resume",
                "model": {"uri": f"file://{tiny_model_dir}"},
                "dataset": {"train": f"file://{train}", "deduplicate": False},
                "method": {"type": "adapter", "adapter": {**OPTIONS, "dropout": 0.1}},
                "training": {
                    "maxSteps": 24,
                    "learningRate": 1e-2,
                    "batchSize": 4,
                    "maxSeqLength": 64,
                    "metricsPort": 0,
                },
                "evaluation": {"exactMatchSamples": 0},
                "output": {"uri": f"file://{out}", "checkpointEvery": 4},
            }
        )
        path = tmp_path / f"config-{out.name}.json"
        path.write_text(trainer.to_json())
        return path

    reference_out, out = tmp_path / "reference", tmp_path / "stopped"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    reference = subprocess.run(
        [FINETUNE, "train", "--config", str(config(reference_out))],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert reference.returncode == 0, reference.stderr.decode()[-3000:]

    proc = start(config(out), tmp_path)
    wait_for_checkpoint_after(proc, out, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143, (tmp_path / "trainer.log").read_text()[-3000:]
    stopped_at = newest_complete(out)
    assert 4 <= stopped_at < 24
    proc = start(config(out), tmp_path)
    assert proc.wait(timeout=300) == 0, (tmp_path / "trainer.log").read_text()[-3000:]
    assert f"resuming from file://{out}/checkpoints/step-" in (tmp_path / "trainer.log").read_text()

    a = load_file(out / "adapter_model.safetensors")
    b = load_file(reference_out / "adapter_model.safetensors")
    assert a.keys() == b.keys() and any("bottleneck_attention" in k for k in a)
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name
