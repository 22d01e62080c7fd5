"""Prefix tuning: learned key/value prefixes in every attention layer, the base model
frozen (peft.PrefixTuningConfig). With ``projection`` the prefixes come from a
two-layer MLP while training; peft publishes the prefixes it produces."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_api.config.methods.prefix import PREFIX, PrefixSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import (
    hidden_size,
    peft_task_type,
    trainable_in_fp32,
    wrap_peft,
)

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def apply_prefix(model: PreTrainedModel, options: PrefixSpec, ctx: MethodContext) -> PeftModel:
    from peft import PrefixTuningConfig

    config = PrefixTuningConfig(
        task_type=peft_task_type(ctx),
        num_virtual_tokens=options.num_virtual_tokens,
        prefix_projection=options.projection,
        encoder_hidden_size=options.encoder_hidden_size or hidden_size(model),
    )
    return trainable_in_fp32(wrap_peft(model, config, "prefix"))


register(Method(PREFIX, apply=apply_prefix))
