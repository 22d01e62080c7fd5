"""LoRA-FA: a peft LoRA adapter whose A matrices are frozen right after their
initialisation, so only the B matrices train.

Why it saves memory: a linear layer's weight gradient needs its input, so LoRA keeps
every adapted layer's (dropped-out) input for backward to compute A's gradient. With A
frozen, autograd keeps only A's r-wide output for B's gradient, and the frozen base
layer keeps nothing for its weight. Optimizer state shrinks too (B only).

Why not peft's ``create_lorafa_optimizer``: it is an AdamW of its own (state kept by
parameter name, its own weight decay), so a job would lose the trainer's optimizer
choice (adamw-8bit, adafactor, sgd) and its checkpointed optimizer state; it also
projects B's gradient through (A Aᵀ)⁻¹ under bfloat16 autocast wherever the machine has
bfloat16, CPUs included, which changes the numbers with the machine. Freezing A is the
LoRA-FA paper's method; the projection is a later refinement left out here.

The published adapter is a plain peft LoRA adapter (A as initialised, B trained): it
loads with PeftModel.from_pretrained, merges and serves like any LoRA adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from finetune_api.config.methods.lora_fa import LORA_FA, LoraFaSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import wrap_peft
from finetune_trainer.methods.lora import lora_config

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

_A_MATRICES = ("lora_A", "lora_embedding_A")


def freeze_a(model: torch.nn.Module) -> int:
    """Stop every LoRA A matrix from training; returns how many were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if any(f".{part}." in name for part in _A_MATRICES):
            param.requires_grad_(False)
            frozen += 1
    return frozen


def apply_lora_fa(model: PreTrainedModel, options: LoraFaSpec, ctx: MethodContext) -> PeftModel:
    peft_model = wrap_peft(model, lora_config(options, ctx), "loraFa")
    if freeze_a(peft_model) == 0:  # pragma: no cover - wrap_peft refuses a model without targets
        raise RuntimeError("LoRA-FA found no lora_A matrix to freeze")
    return peft_model


register(Method(LORA_FA, apply=apply_lora_fa))
