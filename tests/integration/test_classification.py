"""task: sequence-classification on the tiny Llama (a decoder with a score head)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from finetune_cli.app import app

WORDS = {"good": ["great", "lovely", "good", "fine"], "bad": ["awful", "bad", "poor", "sad"]}


def sentiment_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    rows = []
    for i in range(offset, offset + n):
        label = "good" if i % 2 == 0 else "bad"
        word = WORDS[label][(i // 2) % 4]
        rows.append({"text": f"the answer {i} is {word}", "label": label})
    return rows


def classification_job(make_job: Any, tmp_path: Path, **extra: Any) -> Path:
    train = write_jsonl(tmp_path / "cls-train.jsonl", sentiment_rows(48))
    validation = write_jsonl(tmp_path / "cls-val.jsonl", sentiment_rows(16, offset=100))
    return make_job(
        task="sequence-classification",
        dataset={
            "train": f"file://{train}",
            "validation": f"file://{validation}",
            "format": "classification",
        },
        training={"maxSteps": 40, "learningRate": 1e-2, "batchSize": 8},
        **extra,
    )


def run(job: Path) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "held-out accuracy: base model" in result.output
    return json.loads((job.parent / "out" / "metrics.json").read_text())


def test_lora_classifier_learns_and_reports_class_metrics(make_job: Any, tmp_path: Path) -> None:
    metrics = run(classification_job(make_job, tmp_path))
    assert metrics["accuracy"] >= 0.9 > metrics["accuracyBefore"] + 0.2
    assert metrics["macroF1"] >= 0.9
    assert "exactMatch" not in metrics and "perplexity" not in metrics
    assert metrics["data"]["classes"] == 2
    # Per class, by label name (torchmetrics), and their macro averages.
    per_class = metrics["perClass"]
    assert set(per_class) == {"bad", "good"}
    assert sum(c["support"] for c in per_class.values()) == 16
    for key, macro in (
        ("precision", "macroPrecision"),
        ("recall", "macroRecall"),
        ("f1", "macroF1"),
    ):
        assert metrics[macro] == pytest.approx(sum(c[key] for c in per_class.values()) / 2)


def test_classifier_reloads_with_its_labels(make_job: Any, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune_api.config import TrainerConfig
    from finetune_trainer.data.prepare import prepare_data
    from finetune_trainer.evaluation import class_scores

    job = classification_job(make_job, tmp_path)
    metrics = run(job)
    out = job.parent / "out"
    config = TrainerConfig.model_validate(json.loads((out / "manifest.json").read_text())["spec"])
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(
        config.model.uri.removeprefix("file://"), num_labels=2, pad_token_id=tokenizer.pad_token_id
    )
    model = PeftModel.from_pretrained(base, out)
    data = prepare_data(
        tokenizer,
        config.dataset,
        max_length=64,
        seed=config.training.seed,
        eval_samples=0,
        task="sequence-classification",
    )
    scores = class_scores(model, data.validation, 8, tokenizer.pad_token_id, 2)
    assert scores is not None
    assert scores.accuracy == pytest.approx(metrics["accuracy"])
    assert scores.loss == pytest.approx(metrics["evalLoss"], rel=1e-4)


def test_early_stopping_on_accuracy(make_job: Any, tmp_path: Path) -> None:
    job = classification_job(
        make_job,
        tmp_path,
        evaluation={"everySteps": 2},
    )
    import yaml

    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["training"]["earlyStopping"] = {"metric": "accuracy", "patience": 2}
    job.write_text(yaml.safe_dump(manifest))
    metrics = run(job)
    assert metrics["stoppedEarly"] is True
    assert metrics["steps"] < 40
    history = metrics["evalHistory"]
    best = max(h["accuracy"] for h in history)
    assert metrics["accuracy"] == pytest.approx(best)


def test_early_stopping_metric_must_fit_the_task(make_job: Any, tmp_path: Path) -> None:
    job = make_job(evaluation={"everySteps": 2}, training={"earlyStopping": {"metric": "accuracy"}})
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 2
    assert "training.earlyStopping.metric" in result.output
    job = make_job(name="no-every", training={"earlyStopping": {"metric": "evalLoss"}})
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 2
    assert "evaluation.everySteps" in result.output
