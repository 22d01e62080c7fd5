"""Full fine-tuning: every parameter of the model trains, and the whole model is the
artifact (``AutoModelForCausalLM.from_pretrained(dir)`` loads it).

Under mixed precision the weights are kept in fp32 (the optimizer's master copy) while
autocast computes in bf16/fp16: training bf16 weights directly loses small updates.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_api.config.methods.full import FULL, FullSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import trainable_in_fp32

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def apply_full(model: PreTrainedModel, options: FullSpec, ctx: MethodContext) -> PreTrainedModel:
    model.requires_grad_(True)
    return trainable_in_fp32(model)


register(Method(FULL, apply=apply_full))
