"""CpuDropout: the distribution of torch's dropout (keep rate, scale, expectation) from
cheaper draws, seeded by torch's generator, swapped in for every LoRA dropout."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from finetune_trainer.dropout import CpuDropout, use_cpu_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_the_rest(p: float) -> None:
    torch.manual_seed(0)
    x = torch.ones(1000, 1000)
    out = CpuDropout(p).train()(x)
    kept = out != 0
    n = x.numel()
    sigma = (p * (1 - p) / n) ** 0.5
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma + 1 / 65536
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)), rtol=1e-4)
    assert out.mean().item() == pytest.approx(1.0, abs=6 * sigma / (1 - p))


def test_masks_are_independent_across_positions_and_calls() -> None:
    torch.manual_seed(0)
    drop = CpuDropout(0.5).train()
    a = drop(torch.ones(4, 10_000)) != 0
    b = drop(torch.ones(4, 10_000)) != 0
    # neighbours (which share a 64-bit word) and successive calls are uncorrelated
    both = (a[:, :-1] & a[:, 1:]).float().mean().item()
    assert both == pytest.approx(0.25, abs=0.01)
    assert (a & b).float().mean().item() == pytest.approx(0.25, abs=0.01)


def test_seeded_like_torch_and_identity_in_eval() -> None:
    x = torch.randn(64, 32)
    drop = CpuDropout(0.1).train()
    torch.manual_seed(3)
    first = drop(x)
    torch.manual_seed(3)
    assert torch.equal(drop(x), first)
    assert torch.equal(drop.eval()(x), x)


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 64, requires_grad=True)
    out = CpuDropout(0.2).train()(x)
    out.sum().backward()
    assert x.grad is not None
    expected = (out.detach() != 0).float() * (65536 / (65536 - round(0.2 * 65536)))
    torch.testing.assert_close(x.grad, expected)


def test_every_lora_dropout_is_swapped_and_the_adapter_saves_the_same(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(base, LoraConfig(r=4, lora_dropout=0.1, target_modules="all-linear"))
    adapted = sum(1 for m in model.modules() if hasattr(m, "lora_A"))
    model.save_pretrained(tmp_path / "before")
    assert use_cpu_dropout(model) == adapted > 0
    assert all(
        isinstance(d, CpuDropout) and d.p == 0.1
        for m in model.modules()
        if hasattr(m, "lora_dropout")
        for d in m.lora_dropout.values()
    )
    model.save_pretrained(tmp_path / "after")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "before" / name).read_bytes() == (tmp_path / "after" / name).read_bytes()
