"""IA3: learned vectors that rescale the activations of chosen layers (peft.IA3Config):
the output of attention projections, the input of feed-forward ones. The fewest
trainable parameters of the adapter methods."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_api.config.methods.ia3 import IA3, IA3Spec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import peft_task_type, wrap_peft

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel


def _modules(value: str | list[str] | None) -> str | list[str] | None:
    return value if value is None or isinstance(value, str) else list(value)


def apply_ia3(model: PreTrainedModel, options: IA3Spec, ctx: MethodContext) -> PeftModel:
    from peft import IA3Config

    config = IA3Config(
        task_type=peft_task_type(ctx),
        target_modules=_modules(options.target_modules),
        feedforward_modules=_modules(options.feedforward_modules),
        modules_to_save=list(options.modules_to_save) if options.modules_to_save else None,
    )
    return wrap_peft(model, config, "ia3")


register(Method(IA3, apply=apply_ia3))
