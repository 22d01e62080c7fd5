"""QLoRA's 4-bit base must stay trainable after the evaluation that precedes training.

On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer for a faster inference
kernel on its first no-grad eval forward; that kernel has no backward, so training
afterwards silently lost the gradient through every frozen layer. The trainer's loader
turns the repacking off; these tests pin that down on the tiny Llama.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from finetune_api.config import QLoraSpec
from finetune_trainer.methods import MethodContext, get_method
from finetune_trainer.modeling import load_base_model, resolve_compute

OPTIONS = QLoraSpec(r=4, alpha=8, dropout=0.0)
IDS = torch.tensor([[1, 17, 42, 99, 120, 7, 2, 201, 1, 55, 60, 2]])


def load_4bit(model_dir: Path) -> Any:
    compute = resolve_compute("fp32", torch.device("cpu"))
    quantization = get_method("qlora").quantization(OPTIONS, compute)
    return load_base_model(model_dir, compute, trust_remote_code=False, quantization=quantization)


def lora_gradients(model_dir: Path, *, evaluate_first: bool) -> dict[str, torch.Tensor]:
    base = load_4bit(model_dir)
    if evaluate_first:
        base.eval()
        with torch.no_grad():
            base(input_ids=IDS)
    torch.manual_seed(0)
    context = MethodContext(resolve_compute("fp32"), 1, "causal-lm", model_dir, None)
    model = get_method("qlora").apply(base, OPTIONS, context)
    for name, param in model.named_parameters():
        if "lora_B" in name:  # zero at init, which would hide the gradient into lora_A
            torch.nn.init.normal_(param, std=0.02)
    model.train()
    model(input_ids=IDS, labels=IDS).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_the_loader_keeps_every_4bit_layer_in_the_training_layout(tiny_model_dir: Path) -> None:
    import bitsandbytes as bnb

    model = load_4bit(tiny_model_dir)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]

    assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of two layers
    assert not any(layer.support_avx512bf16_for_cpu for layer in layers)
    model.eval()
    with torch.no_grad():
        model(input_ids=IDS)
    assert not any(
        getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers
    )


def test_evaluating_before_training_leaves_the_gradients_unchanged(tiny_model_dir: Path) -> None:
    fresh = lora_gradients(tiny_model_dir, evaluate_first=False)
    after_eval = lora_gradients(tiny_model_dir, evaluate_first=True)

    first_layer = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight"
    assert fresh[first_layer].abs().sum() > 0
    assert fresh.keys() == after_eval.keys()
    for name, grad in fresh.items():
        torch.testing.assert_close(after_eval[name], grad, rtol=1e-5, atol=1e-7, msg=name)
