"""task: sentence-embedding through `finetune run` on a tiny random BERT: it learns the
example's jargon (retrieval among the held-out pairs improves), publishes the
sentence-transformers layout, and the published set reloads (whole model, or the base
with its PEFT adapter) to the encoder the run measured; what cannot apply is refused
before anything loads."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from finetune_cli.app import app
from tiny_bert import build_tiny_bert

REPO = Path(__file__).resolve().parents[2]


def jargon_rows() -> list[dict[str, str]]:
    """The example's generated rows (examples/embedding/generate.py)."""
    spec = importlib.util.spec_from_file_location(
        "generate", REPO / "examples" / "embedding" / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows: list[dict[str, str]] = module.rows()
    return rows


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    return jargon_rows()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, str]]) -> Path:
    """A tiny BERT declaring mean pooling the sentence-transformers way."""
    corpus = [text for row in rows for text in row.values()]
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), corpus, pooling="mean")


def embedding_job(tmp_path: Path, bert_dir: Path, rows: list[dict[str, str]], **patch: Any) -> Path:
    """A FineTuneJob of task sentence-embedding on ``rows`` (the first 480 to train on,
    the next 64 held out); ``patch`` replaces whole sections (a dict merges into one)."""
    import yaml

    train = write_jsonl(tmp_path / "pairs-train.jsonl", rows[:480])
    validation = write_jsonl(tmp_path / "pairs-val.jsonl", rows[480:544])
    spec: dict[str, Any] = {
        "task": "sentence-embedding",
        "model": {"uri": f"file://{bert_dir}"},
        "dataset": {
            "train": f"file://{train}",
            "validation": f"file://{validation}",
            "format": "pairs",
        },
        "method": {"type": "full"},
        "training": {
            "maxSteps": 30,
            "learningRate": 2e-3,
            "batchSize": 16,
            "maxSeqLength": 32,
            "warmupRatio": 0.0,
        },
        "evaluation": {"exactMatchSamples": 0, "batchSize": 64},
        "output": {"uri": f"file://{tmp_path / 'out'}"},
    }
    for key, value in patch.items():
        merge = isinstance(value, dict) and key not in ("method",)
        spec[key] = {**spec.get(key, {}), **value} if merge else value
    manifest = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "pairs"},
        "spec": spec,
    }
    path = tmp_path / "pairs.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def run(job: Path, *args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["run", str(job), *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "held-out retrieval recall@1: base model" in result.output
    return json.loads((job.parent / "out" / "metrics.json").read_text())  # type: ignore[no-any-return]


def reloaded_scores(out: Path, *, merged: bool = False) -> dict[str, float]:
    """The published set loaded as `finetune generate` loads it, scored on the held-out
    pairs as the run scored them (with the pooling the set declares)."""
    from finetune_api.config import TrainerConfig
    from finetune_trainer import inference
    from finetune_trainer.data.prepare import prepare_data
    from finetune_trainer.embedding.layout import read_layout
    from finetune_trainer.embedding.retrieval import RetrievalEvaluation

    with inference.open_set(f"file://{out}", verify=True, merged=merged) as artifact:
        loaded = inference.load(artifact, dtype="fp32")
        layout = read_layout(artifact.directory)
    assert loaded.embeds and layout is not None
    config = TrainerConfig.model_validate(json.loads((out / "manifest.json").read_text())["spec"])
    data = prepare_data(
        loaded.tokenizer,
        config.dataset,
        max_length=config.training.max_seq_length,
        seed=config.training.seed,
        eval_samples=0,
        task=config.task,
        use_cache=False,
    )
    evaluation = RetrievalEvaluation(config.contrastive_options, layout.pooling)
    scores = evaluation.scores(loaded.model, data.validation, 64, loaded.tokenizer.pad_token_id)
    assert scores is not None
    return scores.as_metrics()


def test_full_fine_tuning_learns_and_publishes_a_sentence_transformers_model(
    tmp_path: Path, bert_dir: Path, rows: list[dict[str, str]]
) -> None:
    metrics = run(embedding_job(tmp_path, bert_dir, rows, evaluation={"everySteps": 15}))
    assert metrics["mrr"] > metrics["mrrBefore"] + 0.1, metrics
    periodic = metrics["evalHistory"]  # what early stopping and the status read
    assert [e["step"] for e in periodic] == [15, 30]
    assert all({"recallAt1", "recallAt5", "mrr", "evalLoss"} <= set(e) for e in periodic)
    assert metrics["recallAt5"] > metrics["recallAt5Before"]
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    assert metrics["pooling"] == "mean"  # the model's own, from its 1_Pooling/config.json
    out = tmp_path / "out"
    modules = json.loads((out / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == [
        "Transformer",
        "Pooling",
        "Normalize",
    ]
    pooling = json.loads((out / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    assert pooling["word_embedding_dimension"] == 32
    assert json.loads((out / "sentence_bert_config.json").read_text())["max_seq_length"] == 32
    manifest = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert {"modules.json", "1_Pooling/config.json", "model.safetensors"} <= manifest
    reloaded = reloaded_scores(out)
    for key in ("recallAt1", "recallAt5", "mrr", "evalLoss"):
        assert reloaded[key] == pytest.approx(metrics[key], abs=1e-5), key


def test_lora_publishes_a_feature_extraction_adapter_that_reloads(
    tmp_path: Path, bert_dir: Path, rows: list[dict[str, str]]
) -> None:
    job = embedding_job(
        tmp_path,
        bert_dir,
        rows,
        method={"type": "lora", "lora": {"r": 8, "alpha": 16}},
        contrastive={"pooling": "cls", "normalize": False},
    )
    metrics = run(job)
    assert metrics["mrr"] > metrics["mrrBefore"], metrics
    assert metrics["trainableParameters"] < metrics["totalParameters"] / 2
    out = tmp_path / "out"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "FEATURE_EXTRACTION"
    assert metrics["pooling"] == "cls"  # the setting overrides the model's mean
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_cls_token"]
    modules = json.loads((out / "modules.json").read_text())
    assert "Normalize" not in json.dumps(modules)
    reloaded = reloaded_scores(out)
    for key in ("recallAt1", "mrr", "evalLoss"):
        assert reloaded[key] == pytest.approx(metrics[key], abs=1e-5), key

    ranked = CliRunner().invoke(
        app,
        ["generate", str(out), "-p", rows[0]["anchor"], "-p", rows[0]["positive"], "-p", "x"],
        catch_exceptions=False,
    )
    assert ranked.exit_code == 0, ranked.output
    lines = [line.split("\t") for line in ranked.output.splitlines() if "\t" in line]
    assert sorted(text for _, text in lines) == sorted([rows[0]["positive"], "x"])


def test_a_merged_lora_encoder_is_a_sentence_transformers_model(
    tmp_path: Path, bert_dir: Path, rows: list[dict[str, str]]
) -> None:
    job = embedding_job(
        tmp_path,
        bert_dir,
        rows,
        method={"type": "lora", "lora": {"r": 8, "alpha": 16}},
        training={"maxSteps": 10},
        output={"merge": True},
    )
    metrics = run(job)
    merged = tmp_path / "out" / "merged"
    assert (merged / "model.safetensors").is_file()
    assert json.loads((merged / "1_Pooling" / "config.json").read_text())[
        "pooling_mode_mean_tokens"
    ]
    assert (merged / "modules.json").read_bytes() == (
        tmp_path / "out" / "modules.json"
    ).read_bytes()
    reloaded = reloaded_scores(tmp_path / "out", merged=True)
    for key in ("recallAt1", "mrr", "evalLoss"):
        assert reloaded[key] == pytest.approx(metrics[key], abs=1e-4), key


def test_freeze_trains_the_top_blocks_of_an_encoder_with_triplets(
    tmp_path: Path, bert_dir: Path, rows: list[dict[str, str]]
) -> None:
    job = embedding_job(
        tmp_path,
        bert_dir,
        rows,
        method={"type": "freeze", "freeze": {"trainableLayers": 1}},
        contrastive={"loss": "triplet", "margin": 0.3},
    )
    metrics = run(job)
    assert 0 < metrics["trainableParameters"] < metrics["totalParameters"]
    assert metrics["evalLoss"] < metrics["evalLossBefore"], metrics


def test_triplets_without_negatives_are_refused_before_training(
    tmp_path: Path, bert_dir: Path, rows: list[dict[str, str]]
) -> None:
    pairs = [{"anchor": r["anchor"], "positive": r["positive"]} for r in rows]
    job = embedding_job(tmp_path, bert_dir, pairs, contrastive={"loss": "triplet"})
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    assert "480 of 480 training rows have none" in result.output
    assert "dataset.columns.negative" in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("patch", "said"),
    [
        (
            {"method": {"type": "prefix"}},
            "method.type: task sentence-embedding does not train with method prefix; use one "
            "of freeze, full, lora",
        ),
        (
            {"dataset": {"format": "messages"}},
            "task sentence-embedding reads format pairs (anchor, positive, negative), not messages",
        ),
        ({"training": {"packing": True}}, "training.packing: is for task causal-lm"),
        ({"task": "causal-lm"}, "task causal-lm reads"),
        (
            {"contrastive": {"margin": 0.3}},
            "contrastive.margin is the triplet loss's, not multipleNegatives's",
        ),
    ],
)
def test_validate_refuses_what_cannot_apply(
    tmp_path: Path,
    bert_dir: Path,
    rows: list[dict[str, str]],
    patch: dict[str, Any],
    said: str,
) -> None:
    job = embedding_job(tmp_path, bert_dir, rows[:8], **patch)
    result = CliRunner().invoke(app, ["validate", str(job)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert said in " ".join(result.output.split()), result.output


def test_contrastive_belongs_to_task_sentence_embedding(make_job: Any, tmp_path: Path) -> None:
    job = make_job(contrastive={"loss": "multipleNegatives"})
    result = CliRunner().invoke(app, ["validate", str(job)], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "contrastive: is the contrastive loss of task sentence-embedding" in result.output


# --------------------------------------------------------------------------- resume


def test_a_stopped_run_resumes_to_the_uninterrupted_weights(
    tmp_path: Path, bert_dir: Path, rows: list[dict[str, str]]
) -> None:
    """Stopped (SIGTERM, an eviction) after a checkpoint and restarted, a contrastive
    run publishes the uninterrupted run's weights: the same micro-batches (so the same
    in-batch negatives) in the same order, the same dropout draws (BERT's 0.1)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    from finetune_api.config import TrainerConfig
    from finetune_trainer.checkpoint import complete_checkpoints, prefix_for
    from finetune_trainer.storage.store import MANIFEST, LocalStore

    finetune = str(Path(sys.executable).parent / "finetune")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = write_jsonl(tmp_path / "train.jsonl", rows[:160])
    validation = write_jsonl(tmp_path / "validation.jsonl", rows[160:192])

    def config(out: Path) -> Path:
        trainer = TrainerConfig.model_validate(
            {
                "jobName": "pairs-resume",
                "task": "sentence-embedding",
                "model": {"uri": f"file://{bert_dir}"},
                "dataset": {
                    "train": f"file://{train}",
                    "validation": f"file://{validation}",
                    "format": "pairs",
                },
                "method": {"type": "full"},
                "training": {
                    "maxSteps": 24,
                    "learningRate": 1e-3,
                    "batchSize": 8,
                    "maxSeqLength": 32,
                    "metricsPort": 0,
                },
                "evaluation": {"exactMatchSamples": 0},
                "output": {"uri": f"file://{out}", "checkpointEvery": 4},
            }
        )
        path = tmp_path / f"config-{out.name}.json"
        path.write_text(trainer.to_json())
        return path

    def newest(out: Path) -> int:
        steps = complete_checkpoints(LocalStore("file://out", out))
        return max((s for s, keys in steps.items() if MANIFEST in keys), default=0)

    reference_out, out = tmp_path / "reference", tmp_path / "interrupted"
    reference = subprocess.run(
        [finetune, "train", "--config", str(config(reference_out))],
        capture_output=True,
        env=env,
        timeout=600,
    )
    assert reference.returncode == 0, reference.stderr.decode()[-3000:]

    log = tmp_path / "trainer.log"
    command = [finetune, "train", "--config", str(config(out))]
    with log.open("ab") as sink:
        proc = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while newest(out) < 8:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143, log.read_text()[-3000:]
    stopped_at = newest(out)
    assert 8 <= stopped_at < 24
    with log.open("ab") as sink:
        resumed = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    assert resumed.returncode == 0, log.read_text()[-3000:]
    assert f"resuming from file://{out}/{prefix_for(stopped_at)}" in log.read_text()

    a, b = load_file(out / "model.safetensors"), load_file(reference_out / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name
    done, uninterrupted = (
        json.loads((o / "metrics.json").read_text()) for o in (out, reference_out)
    )
    assert done["mrr"] == pytest.approx(uninterrupted["mrr"], abs=1e-6)
    assert (out / "modules.json").is_file()
