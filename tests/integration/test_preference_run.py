"""Tasks reward-model and preference through ``finetune run`` on the tiny model: the
held-out scores before and after, what is published, and what loads it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import COLOURS, write_jsonl
from finetune_api.config import TrainerConfig
from finetune_api.manifests import check_documents
from finetune_api.render import render_trainer_config
from finetune_cli.app import app
from finetune_trainer.alignment.scoring import reward_model_scores
from finetune_trainer.recipe.setup import setup_data


def preference_rows(n: int) -> list[dict[str, Any]]:
    """Each question's chosen answer is its colour, the rejected one the next colour:
    a preference the tiny model can learn in a few steps."""
    return [
        {
            "prompt": f"What is colour {i % len(COLOURS)}?",
            "chosen": COLOURS[i % len(COLOURS)],
            "rejected": COLOURS[(i + 1) % len(COLOURS)],
        }
        for i in range(n)
    ]


def pair_job(make_job: Any, tmp_path: Path, task: str, **sections: Any) -> Path:
    train = write_jsonl(tmp_path / "pairs.jsonl", preference_rows(48))
    validation = write_jsonl(tmp_path / "pairs-validation.jsonl", preference_rows(8))
    dataset = {
        "train": f"file://{train}",
        "validation": f"file://{validation}",
        "format": "preference",
        "deduplicate": False,
    }
    path: Path = make_job(task=task, dataset=dataset, **sections)
    return path


def run(job: Path) -> dict[str, Any]:
    """``finetune run`` of ``job``, its published set verified; its metrics.json."""
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = trainer_config(job).output.uri
    metrics: dict[str, Any] = json.loads(
        (Path(out.removeprefix("file://")) / "metrics.json").read_text()
    )
    verify = CliRunner().invoke(app, ["verify", out])
    assert verify.exit_code == 0, verify.output
    return metrics


def trainer_config(job: Path) -> TrainerConfig:
    [doc] = check_documents(job.read_text(), str(job))
    assert doc.job is not None
    return render_trainer_config(doc.job)


def test_reward_model_publishes_a_scorer_that_reproduces_its_scores(
    make_job: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The held-out pairs are ranked better after training, and the published adapter on
    AutoModelForSequenceClassification (num_labels 1) gives the very scores the run
    reported: the trained score head travels with the adapter (modules_to_save)."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    job = pair_job(make_job, tmp_path, "reward-model")
    metrics = run(job)
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    assert metrics["pairwiseAccuracy"] > metrics["pairwiseAccuracyBefore"]
    assert metrics["meanMargin"] > 0 > metrics["meanMarginBefore"]

    out = tmp_path / "out"
    assert "score" in json.loads((out / "adapter_config.json").read_text())["modules_to_save"]
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    model = PeftModel.from_pretrained(base, out).eval()
    data = setup_data(trainer_config(job), tokenizer)
    scores = reward_model_scores(model, data.validation, 4, tokenizer.pad_token_id)
    assert scores is not None
    assert scores.mean_margin == pytest.approx(metrics["meanMargin"], abs=1e-5)
    assert scores.pairwise_accuracy == metrics["pairwiseAccuracy"]
    assert scores.loss == pytest.approx(metrics["evalLoss"], abs=1e-5)
    # The model card's one-call snippet loads it too (its head has one output).
    assert "AutoPeftModelForSequenceClassification" in (out / "README.md").read_text()
    assert "num_labels=1" in (out / "README.md").read_text()
    from peft import AutoPeftModelForSequenceClassification

    one_call = AutoPeftModelForSequenceClassification.from_pretrained(out, num_labels=1)
    one_call.config.pad_token_id = tokenizer.pad_token_id
    again = reward_model_scores(one_call.eval(), data.validation, 4, tokenizer.pad_token_id)
    assert again is not None and again.mean_margin == pytest.approx(scores.mean_margin)
    # finetune generate says what a reward model is for instead of failing to generate.
    refused = CliRunner().invoke(app, ["generate", str(out), "-p", "What is colour 1?"])
    assert refused.exit_code == 2 and "reward model scores answers" in refused.output


@pytest.mark.parametrize("loss", ["dpo", "ipo", "simpo", "orpo"])
def test_preference_losses_move_the_policy_towards_the_chosen_answers(
    make_job: Any, tmp_path: Path, loss: str
) -> None:
    """Each loss lowers itself on held-out pairs and makes the model prefer the chosen
    answers; metrics.json holds the before/after scores the contract names."""
    job = pair_job(make_job, tmp_path, "preference", preference={"loss": loss})
    metrics = run(job)
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    assert metrics["preferenceAccuracy"] == 1.0
    assert metrics["preferenceAccuracyBefore"] < 1.0
    assert metrics["rewardAccuracy"] > 0.5 and metrics["rewardMargin"] > 0
    assert metrics["chosenLogps"] - metrics["rejectedLogps"] > (
        metrics["chosenLogpsBefore"] - metrics["rejectedLogpsBefore"]
    )
    # rewardAccuracy and rewardMargin mean nothing before training (no Before twin);
    # the policy generates, so its greedy answers are scored against the chosen ones.
    assert "rewardAccuracyBefore" not in metrics and "rewardMarginBefore" not in metrics
    assert "exactMatch" in metrics and "exactMatchBefore" in metrics
    # Every step reports the training pairs' implicit rewards beside its loss.
    last = metrics["history"][-1]
    assert {"rewardAccuracy", "rewardMargin", "chosenLogps", "rejectedLogps"} <= set(last)
    assert 0 <= last["rewardAccuracy"] <= 1
    assert all(
        value <= 0 for key, value in metrics.items() if key.endswith(("Logps", "LogpsBefore"))
    )


@pytest.mark.parametrize(
    "method",
    [
        {"type": "full", "lora": None},
        {"type": "freeze", "lora": None, "freeze": {"trainableLayers": 1}},
        {"type": "qlora", "lora": None, "qlora": {"r": 8, "alpha": 16, "dropout": 0.0}},
    ],
    ids=["full", "freeze", "qlora"],
)
def test_dpo_trains_with_every_allowed_method(
    make_job: Any, tmp_path: Path, method: dict[str, Any]
) -> None:
    """Full and freeze train against a frozen copy of the base, QLoRA against its
    quantized base with the adapter off."""
    lr = 1e-3 if method["type"] in ("full", "freeze") else 3e-2
    job = pair_job(make_job, tmp_path, "preference", method=method, training={"learningRate": lr})
    metrics = run(job)
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    assert metrics["rewardMargin"] > 0


def test_precomputed_reference_trains_like_the_reference_forward(
    make_job: Any, tmp_path: Path
) -> None:
    """preference.precomputeReference reads the same reference numbers before training
    as the adapter-off forward does at every step: the two runs end on the same scores."""
    plain = run(pair_job(make_job, tmp_path, "preference"))
    pre = run(
        pair_job(
            make_job,
            tmp_path,
            "preference",
            name="precomputed",
            preference={"precomputeReference": True},
            output={"uri": f"file://{tmp_path / 'out-precomputed'}"},
        )
    )
    for key in ("evalLoss", "rewardMargin", "chosenLogps", "rejectedLogps", "trainLoss"):
        assert pre[key] == pytest.approx(plain[key], rel=1e-4), key


def test_sequence_logps_are_the_causal_lm_loss_per_row(tiny_model_dir: Path) -> None:
    """Each row's summed label log-probability is minus its share of the supervised loss
    (the same label positions), and the counts are its label tokens after the shift."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetune_trainer.alignment.logps import sequence_logps
    from finetune_trainer.losses import causal_lm_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    torch.manual_seed(0)
    ids = torch.randint(3, 100, (3, 7))
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0  # a padded row
    labels = ids.clone()
    labels[:, :3] = -100
    labels[2, 5:] = -100
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    with torch.no_grad():
        sums, counts = sequence_logps(model, batch)
        assert counts.tolist() == [4, 4, 2]
        for row in range(3):
            one = {k: v[row : row + 1] for k, v in batch.items()}
            expected = -causal_lm_loss(model, one, 1)
            assert float(sums[row]) == pytest.approx(float(expected), rel=1e-5)


def test_the_adapter_off_reference_is_the_base_and_keeps_frozen_parameters_frozen(
    tiny_model_dir: Path,
) -> None:
    """AdapterOff gives the base model's numbers through the trained model, without
    gradient, its train mode restored; a parameter the method froze stays frozen (peft
    marks the whole adapter trainable when it is switched back on)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune_trainer.alignment.logps import sequence_logps
    from finetune_trainer.alignment.reference import AdapterOff

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.randint(3, 100, (2, 6))
    labels = ids.clone()
    labels[:, :2] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    with torch.no_grad():
        expected = sequence_logps(base.eval(), batch)[0]
    model = get_peft_model(
        base, LoraConfig(r=4, target_modules=["q_proj"], init_lora_weights=False)
    )
    frozen = [p for n, p in model.named_parameters() if "lora_A" in n]
    for param in frozen:
        param.requires_grad_(False)
    model.train()
    with torch.no_grad():
        assert not torch.allclose(sequence_logps(model, batch)[0], expected)  # adapter on
    reference = AdapterOff().logps(model, batch)
    assert torch.allclose(reference, expected) and not reference.requires_grad
    assert model.training
    assert not any(p.requires_grad for p in frozen)
