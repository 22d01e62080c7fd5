"""VeRA: frozen random matrices A (r x in) and B (out x r), drawn once from
``projectionPrngKey`` and shared by every adapted layer, and per layer two trained
scaling vectors: d (r) between A and B, b (out) on the output (peft.VeraConfig).

peft keeps A and B as buffers of one BufferDict that every adapted layer references, so
they are neither parameters nor trained, and a checkpoint's trainable weights are the
scaling vectors alone: the matrices are rebuilt from the key on resume. They are
published with the adapter by default (``saveProjection``), which makes it load the same
whatever generator the loading machine's torch has.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_api.config.methods.vera import VERA, VeraSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import peft_task_type, wrap_peft

if TYPE_CHECKING:
    from peft import PeftModel, VeraConfig
    from transformers import PreTrainedModel


def vera_config(options: VeraSpec, ctx: MethodContext) -> VeraConfig:
    from peft import VeraConfig

    target = options.target_modules
    return VeraConfig(
        task_type=peft_task_type(ctx),
        r=options.r,
        target_modules=target if isinstance(target, str) else list(target),
        projection_prng_key=options.projection_prng_key,
        save_projection=options.save_projection,
        vera_dropout=options.vera_dropout,
        d_initial=options.d_initial,
        bias="none",
        modules_to_save=list(options.modules_to_save) if options.modules_to_save else None,
    )


def apply_vera(model: PreTrainedModel, options: VeraSpec, ctx: MethodContext) -> PeftModel:
    return wrap_peft(model, vera_config(options, ctx), "vera")


register(Method(VERA, apply=apply_vera))
