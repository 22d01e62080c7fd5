"""Prompt tuning: learned embeddings of virtual tokens prepended to every sequence, the
base model frozen (peft.PromptTuningConfig). ``init: text`` starts them from the
embeddings of a text's tokens (read with the job's own tokenizer directory)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_api.config.methods.prompt import PROMPT, PromptSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import peft_task_type, trainable_in_fp32, wrap_peft

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def apply_prompt(model: PreTrainedModel, options: PromptSpec, ctx: MethodContext) -> PeftModel:
    from peft import PromptTuningConfig, PromptTuningInit

    text = options.init == "text"
    config = PromptTuningConfig(
        task_type=peft_task_type(ctx),
        num_virtual_tokens=options.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=options.init_text if text else None,
        tokenizer_name_or_path=str(ctx.model_dir) if text else None,
    )
    return trainable_in_fp32(wrap_peft(model, config, "prompt"))


register(Method(PROMPT, apply=apply_prompt))
