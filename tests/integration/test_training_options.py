"""Training options on the tiny Llama: optimizers, precision, checkpointing, dropout,
periodic evaluation, early stopping, distillation, gradient accumulation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import colour_rows
from finetune_api.config import TrainingSpec
from finetune_api.config.training import EarlyStoppingSpec
from finetune_cli.app import app
from finetune_trainer.loop import EarlyStopper, TrainHooks, train

runner = CliRunner()


def run_job(job: Path, out: Path | None = None) -> dict[str, Any]:
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(((out or job.parent / "out") / "metrics.json").read_text())


def losses(metrics: dict[str, Any]) -> list[float]:
    return [h["loss"] for h in metrics["history"]]


def falls(values: list[float], factor: float = 0.7) -> bool:
    return sum(values[-3:]) / 3 < factor * values[0]


@pytest.mark.parametrize(
    ("optimizer", "lr"), [("adamw-8bit", 3e-2), ("sgd", 1.0), ("adafactor", 3e-2)]
)
def test_every_optimizer_trains(make_job: Any, optimizer: str, lr: float) -> None:
    metrics = run_job(make_job(training={"optimizer": optimizer, "learningRate": lr}))
    assert falls(losses(metrics)), losses(metrics)


def test_optimizers_differ(make_job: Any) -> None:
    """The optimizer option reaches the loop: same data and seed, different trajectories."""
    adamw = run_job(make_job(name="a", training={"optimizer": "adamw"}))
    adafactor = run_job(make_job(name="b", training={"optimizer": "adafactor"}))
    assert losses(adamw)[0] == pytest.approx(losses(adafactor)[0])  # same start
    assert losses(adamw)[1:] != pytest.approx(losses(adafactor)[1:], rel=1e-3)


def test_weight_decay_skips_biases_and_norms() -> None:
    from finetune_trainer.optim import make_optimizer

    matrix, vector = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(2))
    spec = TrainingSpec(weightDecay=0.1)
    optimizer = make_optimizer([{"params": [matrix, vector], "lr": 0.5}], spec)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay == {id(matrix): 0.1, id(vector): 0.0}
    assert {g["lr"] for g in optimizer.param_groups} == {0.5}


@pytest.mark.parametrize(("batch", "accumulation"), [(4, 2), (2, 4)])
def test_accumulated_steps_match_one_big_batch(
    make_job: Any, tmp_path: Path, batch: int, accumulation: int
) -> None:
    """batch b x accumulation a equals batch 8: the loss is normalised over all tokens
    of the step, and the answers have very different lengths."""
    from safetensors.torch import load_file

    from conftest import write_jsonl

    rows = [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "red " * (1 + 5 * (i % 4))},
            ]
        }
        for i in range(8)
    ]
    train_file = write_jsonl(tmp_path / "uneven.jsonl", rows)
    results = []
    for b, a, out in ((8, 1, "big"), (batch, accumulation, "acc")):
        job = make_job(
            name=out,
            dataset={"train": f"file://{train_file}"},
            training={"batchSize": b, "gradientAccumulation": a, "maxSteps": 1, "maxGradNorm": 0},
            output={"uri": f"file://{tmp_path / out}"},
        )
        result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        metrics = json.loads((tmp_path / out / "metrics.json").read_text())
        results.append(
            (losses(metrics)[0], load_file(tmp_path / out / "adapter_model.safetensors"))
        )
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for name, tensor in results[0][1].items():
        torch.testing.assert_close(tensor, results[1][1][name], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_training(make_job: Any, tmp_path: Path) -> None:
    plain = run_job(
        make_job(name="plain", output={"uri": f"file://{tmp_path / 'p'}"}), tmp_path / "p"
    )
    checkpointed = run_job(
        make_job(
            name="ckpt",
            training={"gradientCheckpointing": True},
            output={"uri": f"file://{tmp_path / 'c'}"},
        ),
        tmp_path / "c",
    )
    assert losses(checkpointed) == pytest.approx(losses(plain), rel=1e-4)


def test_gradient_checkpointing_is_switched_on(tiny_model_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune_trainer.modeling import enable_gradient_checkpointing

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, target_modules="all-linear"),
    )
    enable_gradient_checkpointing(model)
    assert model.base_model.model.is_gradient_checkpointing
    assert model.base_model.model.config.use_cache is False


def test_model_dropout_reaches_the_model(make_job: Any, tmp_path: Path) -> None:
    from transformers import BertConfig, LlamaConfig

    from finetune_trainer.modeling import dropout_overrides

    assert dropout_overrides(LlamaConfig(), 0.2) == {"attention_dropout": 0.2}
    assert dropout_overrides(BertConfig(), 0.2) == {
        "hidden_dropout_prob": 0.2,
        "attention_probs_dropout_prob": 0.2,
    }
    plain = run_job(
        make_job(name="plain", output={"uri": f"file://{tmp_path / 'p'}"}), tmp_path / "p"
    )
    dropped = run_job(
        make_job(
            name="drop", training={"modelDropout": 0.5}, output={"uri": f"file://{tmp_path / 'd'}"}
        ),
        tmp_path / "d",
    )
    # Dropout is random in training, so the very first loss already differs.
    assert losses(dropped)[0] != pytest.approx(losses(plain)[0], rel=1e-4)
    # Evaluation runs without dropout: the base model's eval loss is unchanged.
    assert dropped["evalLossBefore"] == pytest.approx(plain["evalLossBefore"], rel=1e-6)


def test_bf16_trains_on_cpu(make_job: Any) -> None:
    metrics = run_job(make_job(training={"precision": "bf16"}))
    assert metrics["precision"] == "bf16"
    assert falls(losses(metrics)), losses(metrics)


def test_periodic_evaluation_and_final_scores(make_job: Any) -> None:
    metrics = run_job(make_job(evaluation={"everySteps": 4}))
    history = metrics["evalHistory"]
    assert [h["step"] for h in history] == [4, 8, 12]
    for entry in history:
        assert entry["perplexity"] == pytest.approx(math.exp(entry["evalLoss"]))
        assert 0.0 <= entry["tokenAccuracy"] <= 1.0
    assert history[-1]["evalLoss"] < history[0]["evalLoss"]
    # The final evaluation scores the same weights as the last periodic one.
    assert metrics["evalLoss"] == pytest.approx(history[-1]["evalLoss"], rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["evalLoss"]))
    assert metrics["tokenAccuracy"] > metrics["tokenAccuracyBefore"]
    assert 0.0 <= metrics["rougeL"] <= 1.0
    assert metrics["rougeL"] >= metrics["exactMatch"] - 1e-6


def test_rouge_l_scores_partial_answers() -> None:
    from finetune_trainer.evaluation import Prediction, rouge_l

    assert rouge_l([Prediction("2021-03-05", "2021-03-05")]) == pytest.approx(1.0)
    partial = rouge_l([Prediction("the cat sat down", "the cat sat")])
    assert partial is not None and 0.5 < partial < 1.0
    assert rouge_l([Prediction("red", "blue")]) == pytest.approx(0.0)
    assert rouge_l([]) is None


@pytest.mark.parametrize(
    ("metric", "values", "best", "stop_after"),
    [
        ("evalLoss", [1.0, 0.5, 0.7, 0.8, 0.4], 1, 3),  # lower is better, patience 2
        ("tokenAccuracy", [0.1, 0.4, 0.3, 0.35, 0.9], 1, 3),  # higher is better
        ("evalLoss", [1.0, 0.95, 0.9, 0.85], 0, 2),  # improvements below minDelta 0.1
    ],
)
def test_early_stopper(metric: str, values: list[float], best: int, stop_after: int) -> None:
    delta = 0.1 if values == [1.0, 0.95, 0.9, 0.85] else 0.0
    stopper = EarlyStopper(EarlyStoppingSpec(metric=metric, patience=2, minDelta=delta))
    for i, value in enumerate(values):
        stopper.update(value, step=i)
        if stopper.should_stop:
            break
    assert stopper.best_step == best
    assert i == stop_after


def test_early_stopping_restores_and_publishes_the_best_weights(tiny_model_dir: Path) -> None:
    """Scripted metrics: best at the 2nd evaluation, then two worse ones stop the run;
    the weights at the end are those seen at the best evaluation, not the last."""
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.data.formats import Example
    from finetune_trainer.data.tokenize import tokenize_example

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = [
        tokenize_example(tokenizer, Example(messages=tuple(r["messages"])), 64)
        for r in colour_rows(16)
    ]
    torch.manual_seed(0)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=4, target_modules="all-linear"),
    )
    scripted = iter([1.0, 0.5, 0.9, 0.8, 0.1])
    seen: list[dict[str, torch.Tensor]] = []

    def evaluate(m: Any) -> dict[str, float]:
        seen.append({n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad})
        return {"evalLoss": next(scripted)}

    spec = TrainingSpec(maxSteps=10, learningRate=3e-2, batchSize=4, warmupRatio=0)
    result = train(
        model,
        examples,
        spec,
        pad_id=tokenizer.eos_token_id,
        accelerator=Accelerator(cpu=True),
        hooks=TrainHooks(
            evaluate=evaluate,
            eval_every=2,
            early_stopping=EarlyStoppingSpec(metric="evalLoss", patience=2),
        ),
    )
    assert result.stopped_early
    assert result.steps == 8 and result.best_step == 4
    assert [h["step"] for h in result.eval_history] == [2, 4, 6, 8]
    final = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, tensor in seen[1].items():
        torch.testing.assert_close(final[name], tensor)
    assert any(not torch.equal(final[n], t) for n, t in seen[3].items())


def _perturbed_copy(source: Path, target: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(source).save_pretrained(target)
    return target


def test_distillation_loss_terms(tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.data.batching import collate, count_label_tokens
    from finetune_trainer.data.formats import Example
    from finetune_trainer.data.tokenize import tokenize_example
    from finetune_trainer.losses import DistillationLoss, causal_lm_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = [
        tokenize_example(tokenizer, Example(messages=tuple(r["messages"])), 64)
        for r in colour_rows(4)
    ]
    batch = collate(examples, tokenizer.eos_token_id)
    weight = count_label_tokens(examples)
    student = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    same = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    other = AutoModelForCausalLM.from_pretrained(_perturbed_copy(tiny_model_dir, tmp_path / "t"))
    ce = causal_lm_loss(student, batch, weight)
    # weight 0: plain cross-entropy; identical teacher: zero KL.
    assert DistillationLoss(other, 2.0, 0.0)(student, batch, weight).item() == pytest.approx(
        ce.item()
    )
    assert DistillationLoss(same, 2.0, 1.0)(student, batch, weight).item() == pytest.approx(
        0, abs=1e-5
    )
    assert DistillationLoss(other, 2.0, 1.0)(student, batch, weight).item() > 1e-3


def test_distillation_run_and_vocabulary_check(
    make_job: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    teacher = _perturbed_copy(tiny_model_dir, tmp_path / "teacher")
    metrics = run_job(
        make_job(training={"distillation": {"teacherUri": f"file://{teacher}", "weight": 0.5}})
    )
    assert falls(losses(metrics)), losses(metrics)

    from transformers import LlamaConfig, LlamaForCausalLM

    small = tmp_path / "small-vocab"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=50,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).save_pretrained(small)
    job = make_job(name="mismatch", training={"distillation": {"teacherUri": f"file://{small}"}})
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 2
    assert "training.distillation.teacherUri" in result.output
    assert "vocabulary" in result.output
