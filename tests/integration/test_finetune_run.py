"""`finetune run` and `finetune train` end to end on a tiny random Llama (seconds)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from finetune_api.config import TrainerConfig
from finetune_api.manifests import check_documents
from finetune_api.render import render_trainer_config
from finetune_cli.app import app
from finetune_trainer.publish import sha256_file, verify_manifest

runner = CliRunner()


def run_cli(*args: str) -> Any:
    return runner.invoke(app, list(args), catch_exceptions=False)


def out_dir(job: Path) -> Path:
    return job.parent / "out"


def metrics_of(out: Path) -> dict[str, Any]:
    return json.loads((out / "metrics.json").read_text())


def test_run_publishes_a_complete_verifiable_adapter(make_job: Any) -> None:
    job = make_job()
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    assert "held-out exact match: base model" in result.output

    out = out_dir(job)
    assert verify_manifest(out) == []
    names = {p.name for p in out.iterdir()}
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.json",
        "README.md",
        "manifest.json",
        "tokenizer.json",
    } <= names
    manifest = json.loads((out / "manifest.json").read_text())
    published = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    published = {p for p in published if not p.startswith("checkpoints/")}
    assert {f["path"] for f in manifest["files"]} == published - {"manifest.json"}
    assert "plots/loss.png" in published
    # The final step's checkpoint stays beside the artifacts, outside their manifest.
    steps = metrics_of(out)["steps"]
    assert (out / "checkpoints" / f"step-{steps}" / "manifest.json").is_file()
    assert manifest["spec"]["jobName"] == "tiny"
    assert manifest["spec"]["model"]["trustRemoteCode"] is False

    metrics = metrics_of(out)
    for key in (
        "trainLoss",
        "evalLoss",
        "evalLossBefore",
        "exactMatch",
        "exactMatchBefore",
        "tokensPerSecond",
        "wallSeconds",
        "trainSeconds",
    ):
        assert metrics[key] is not None, key
    assert metrics["steps"] == 12
    losses = [h["loss"] for h in metrics["history"]]
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    # The tiny task is learnable: the adapter answers most held-out questions.
    assert metrics["exactMatch"] >= 0.5 > metrics["exactMatchBefore"]


def test_published_adapter_reloads_to_the_evaluated_model(make_job: Any) -> None:
    """Eval loss recomputed from base + published adapter equals the run's own."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.data.prepare import prepare_data
    from finetune_trainer.evaluation import evaluation_loss

    job = make_job()
    assert run_cli("run", str(job)).exit_code == 0
    out = out_dir(job)
    config = TrainerConfig.model_validate(json.loads((out / "manifest.json").read_text())["spec"])
    base_dir = Path(config.model.uri.removeprefix("file://"))
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), out)
    data = prepare_data(
        tokenizer,
        config.dataset,
        max_length=config.training.max_seq_length,
        seed=config.training.seed,
        eval_samples=0,
    )
    reloaded = evaluation_loss(model, data.validation, 4, tokenizer.pad_token_id)
    assert reloaded == pytest.approx(metrics_of(out)["evalLoss"], rel=1e-5)
    with model.disable_adapter():
        base_loss = evaluation_loss(model, data.validation, 4, tokenizer.pad_token_id)
    assert base_loss == pytest.approx(metrics_of(out)["evalLossBefore"], rel=1e-5)


def test_same_seed_same_run_other_seed_other_run(make_job: Any, tmp_path: Path) -> None:
    adapters, histories = [], []
    for seed, out in ((7, "a"), (7, "b"), (8, "c")):
        job = make_job(training={"seed": seed}, output={"uri": f"file://{tmp_path / out}"})
        assert run_cli("run", str(job)).exit_code == 0
        adapters.append(sha256_file(tmp_path / out / "adapter_model.safetensors"))
        histories.append([h["loss"] for h in metrics_of(tmp_path / out)["history"]])
    assert histories[0] == histories[1]
    assert adapters[0] == adapters[1]
    assert histories[0] != histories[2]


def test_warmup_then_cosine_decay(make_job: Any) -> None:
    job = make_job(training={"warmupRatio": 0.25, "scheduler": "cosine", "maxSteps": 12})
    assert run_cli("run", str(job)).exit_code == 0
    rates = [h["learningRate"] for h in metrics_of(out_dir(job))["history"]]
    peak = max(rates)
    assert peak == pytest.approx(3e-2)
    assert rates.index(peak) == 2  # 3 warmup steps: 1/3, 2/3, then the peak
    assert rates[0] < rates[1] < peak
    assert all(a >= b for a, b in itertools.pairwise(rates[2:]))
    assert rates[-1] < 0.05 * peak


def test_qlora_trains_on_cpu(make_job: Any) -> None:
    job = make_job(
        method={"type": "qlora", "lora": None, "qlora": {"r": 8, "alpha": 16, "dropout": 0.0}}
    )
    result = run_cli("run", str(job))
    assert result.exit_code == 0, result.output
    metrics = metrics_of(out_dir(job))
    losses = [h["loss"] for h in metrics["history"]]
    assert sum(losses[-3:]) / 3 < 0.7 * losses[0], losses
    adapter = json.loads((out_dir(job) / "adapter_config.json").read_text())
    assert adapter["r"] == 8
    # Only the adapters train: far fewer parameters than the base.
    assert metrics["trainableParameters"] < 0.2 * metrics["totalParameters"]


def test_output_and_max_steps_flags_override_the_spec(make_job: Any, tmp_path: Path) -> None:
    job = make_job()
    result = run_cli(
        "run", str(job), "--output", f"file://{tmp_path / 'elsewhere'}", "--max-steps", "3"
    )
    assert result.exit_code == 0, result.output
    assert metrics_of(tmp_path / "elsewhere")["steps"] == 3
    assert not out_dir(job).exists()


def test_train_reads_a_rendered_trainer_config(make_job: Any, tmp_path: Path) -> None:
    """The pod's entrypoint: the same job, rendered to JSON as the operator would."""
    job_path = make_job(training={"maxSteps": 2})
    [doc] = check_documents(job_path.read_text(), str(job_path))
    assert doc.job is not None
    config_file = tmp_path / "trainer.json"
    config_file.write_text(render_trainer_config(doc.job).to_json())
    result = run_cli("train", "--config", str(config_file))
    assert result.exit_code == 0, result.output
    assert verify_manifest(out_dir(job_path)) == []


@pytest.mark.parametrize(
    ("patch", "exit_code", "fragments"),
    [
        (
            {"dataset": {"columns": {"messages": "conversation"}}},
            3,
            [
                "train.jsonl): line 1 (format messages)",
                "column 'conversation' is missing",
                "dataset.columns.messages",
            ],
        ),
        ({"training": {"precision": "fp16"}}, 2, ["training.precision", "fp16 needs a CUDA GPU"]),
        ({"model": {"uri": "file:///nonexistent/model"}}, 4, ["no model directory", "config.json"]),
        ({"dataset": {"train": "file:///nonexistent/train.jsonl"}}, 5, ["no such file"]),
    ],
    ids=["missing-column", "fp16-on-cpu", "no-model", "no-dataset"],
)
def test_failures_exit_with_their_class_and_a_fix(
    make_job: Any, patch: dict[str, Any], exit_code: int, fragments: list[str]
) -> None:
    job = make_job(**patch)
    result = run_cli("run", str(job))
    assert result.exit_code == exit_code, result.output
    for fragment in fragments:
        assert fragment in result.output
    assert "Traceback" not in result.output
    assert not (out_dir(job) / "manifest.json").exists()


def test_invalid_manifest_is_rejected_before_any_work(make_job: Any) -> None:
    job = make_job(training={"learningRate": -1})
    result = run_cli("run", str(job))
    assert result.exit_code == 2
    assert "spec.training.learningRate" in result.output


def test_verify_accepts_a_published_set_and_rejects_a_tampered_one(make_job: Any) -> None:
    job = make_job(training={"maxSteps": 1})
    assert run_cli("run", str(job)).exit_code == 0
    out = out_dir(job)
    ok = run_cli("verify", f"file://{out}")
    assert ok.exit_code == 0, ok.output
    with (out / "adapter_model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    bad = run_cli("verify", f"file://{out}")
    assert bad.exit_code == 1
    assert "adapter_model.safetensors: size or sha256 differs" in bad.output
    (out / "manifest.json").unlink()
    assert "incomplete" in run_cli("verify", f"file://{out}").output
