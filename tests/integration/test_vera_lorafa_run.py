"""VeRA and LoRA-FA through `finetune run` on the tiny model: they learn, publish a peft
adapter that reloads to the very model that trained (same logits), and LoRA-FA's
adapter merges like any LoRA adapter. Exact resume is in test_resume.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

import finetune_trainer.runner as runner_module
from finetune_cli.app import app
from finetune_trainer.publish import verify_manifest

runner = CliRunner()

CASES = {
    "vera": ("vera", {"r": 16, "targetModules": "all-linear"}, 0.1),
    "vera-without-projection": (
        "vera",
        {"r": 16, "saveProjection": False, "projectionPrngKey": 7},
        0.1,
    ),
    "lora-fa": ("lora-fa", {"r": 8, "alpha": 16, "dropout": 0.0}, 3e-2),
}


@pytest.fixture
def trained(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The runs `finetune run` trains in this process (their model as evaluated)."""
    runs: list[Any] = []
    original = runner_module.fine_tune

    def keeping(*args: Any, **kwargs: Any) -> Any:
        run = original(*args, **kwargs)
        runs.append(run)
        return run

    monkeypatch.setattr(runner_module, "fine_tune", keeping)
    return runs


def run(make_job: Any, method: str, options: dict[str, Any], lr: float) -> Path:
    from finetune_api.config.methods import METHODS

    section = METHODS[method].section
    job = make_job(
        method={"type": method, "lora": None, section: options},
        training={"learningRate": lr},
    )
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return Path(job.parent / "out")


@pytest.mark.parametrize("case", list(CASES))
def test_learns_publishes_and_reloads_to_the_same_logits(
    case: str, make_job: Any, tiny_model_dir: Path, trained: list[Any]
) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    method, options, lr = CASES[case]
    out = run(make_job, method, options, lr)
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [h["loss"] for h in metrics["history"]]
    assert sum(losses[-3:]) / 3 < 0.8 * losses[0], losses
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    assert verify_manifest(out) == []

    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == ("VERA" if method == "vera" else "LORA")
    if method == "vera":
        assert adapter["save_projection"] == options.get("saveProjection", True)
        from safetensors.torch import load_file

        saved = load_file(out / "adapter_model.safetensors")
        has_matrices = any("vera_A" in name for name in saved)
        assert has_matrices == options.get("saveProjection", True)

    model = trained[-1].model.eval()
    ids = torch.randint(0, 50, (2, 11))
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_lora_fa_publishes_a_as_initialised_and_merges_like_lora(
    make_job: Any, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The published A matrices are the ones drawn at initialisation (they never moved,
    B did), and `finetune export` merges the adapter as it would a LoRA one."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    import finetune_trainer.methods.lora_fa as lora_fa

    initial: dict[str, torch.Tensor] = {}
    freeze = lora_fa.freeze_a

    def recording(model: torch.nn.Module) -> int:
        frozen = freeze(model)
        for name, p in model.named_parameters():
            if ".lora_A." in name:
                initial[name.replace(".default", "")] = p.detach().clone()
        return frozen

    monkeypatch.setattr(lora_fa, "freeze_a", recording)
    out = run(make_job, "lora-fa", {"r": 8, "alpha": 16, "dropout": 0.0}, 3e-2)
    saved = load_file(out / "adapter_model.safetensors")
    a = {n: t for n, t in saved.items() if ".lora_A." in n}
    b = {n: t for n, t in saved.items() if ".lora_B." in n}
    assert a.keys() == initial.keys()
    for name, tensor in a.items():
        assert torch.equal(tensor, initial[name]), name
    assert b and all(t.abs().sum() > 0 for t in b.values())  # B moved off its zeros

    merged = tmp_path / "merged"
    result = runner.invoke(
        app, ["export", str(out), "--to", str(merged), "--base", f"file://{tiny_model_dir}"]
    )
    assert result.exit_code == 0, result.output
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), out
        )(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_vera_merges_with_its_matrices_and_is_refused_without(
    make_job: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`finetune export` merges a VeRA adapter to peft's logits; one published without
    its random matrices (saveProjection: false) is refused, naming the option."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = run(make_job, "vera", {"r": 8}, 0.1)
    merged = tmp_path / "merged"
    base = f"file://{tiny_model_dir}"
    result = runner.invoke(app, ["export", str(out), "--to", str(merged), "--base", base])
    assert result.exit_code == 0, result.output
    ids = torch.randint(0, 50, (1, 9))
    with torch.no_grad():
        expected = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir), out
        )(input_ids=ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged)(input_ids=ids).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)

    bare = run(make_job, "vera", {"r": 8, "saveProjection": False}, 0.1)
    result = runner.invoke(app, ["export", str(bare), "--to", str(tmp_path / "m2"), "--base", base])
    assert result.exit_code == 2, result.output
    assert "saveProjection" in result.output
