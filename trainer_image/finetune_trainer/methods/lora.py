"""LoRA: trainable low-rank matrices beside frozen linear layers (peft.LoraConfig)."""

from __future__ import annotations

from typing import Any

from finetune_trainer.config import LoraSpec
from finetune_trainer.methods import Method, MethodContext, register


def lora_config(options: LoraSpec) -> Any:
    from peft import LoraConfig, TaskType

    target = options.target_modules
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM,
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        bias="none",
    )


def apply_lora(model: Any, options: LoraSpec, ctx: MethodContext) -> Any:
    from peft import get_peft_model

    return get_peft_model(model, lora_config(options))


register(Method(name="lora", apply=apply_lora))
