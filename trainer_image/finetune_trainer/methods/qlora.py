"""QLoRA: LoRA on a 4-bit (NF4/FP4, optionally double-quantized) frozen base model.

bitsandbytes quantizes the linear weights at load time; peft's
``prepare_model_for_kbit_training`` casts the remaining small parameters (norms,
embeddings) to fp32 and enables input gradients so the adapters can learn. Every LoRA
option applies (DoRA included, which bitsandbytes supports on CPU too) except the PiSSA
and OLoRA initialisations, which the options refuse: they rewrite the base weights.

The options arrive merged: ``method.options()`` gives one QLoraSpec from the LoRA
options under ``lora:`` (or, the older form, ``qlora:``) and the quantisation under
``qlora:``, so this module reads LoRA's options the way LoRA does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from finetune_api.config.methods.qlora import QLORA, QLoraSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import wrap_peft
from finetune_trainer.methods.lora import lora_config, lora_param_groups
from finetune_trainer.modeling import Compute

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import BitsAndBytesConfig, PreTrainedModel

_COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(options: QLoraSpec, compute: Compute) -> torch.dtype:
    if options.compute_dtype == "auto":
        return compute.dtype
    return _COMPUTE_DTYPES[options.compute_dtype]


def quantization(options: QLoraSpec, compute: Compute) -> BitsAndBytesConfig:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(options, compute),
        bnb_4bit_quant_storage=torch.uint8,
    )


def apply_qlora(model: PreTrainedModel, options: QLoraSpec, ctx: MethodContext) -> PeftModel:
    from peft import prepare_model_for_kbit_training

    prepared: PreTrainedModel = prepare_model_for_kbit_training(
        model, use_gradient_checkpointing=False
    )
    return wrap_peft(prepared, lora_config(options, ctx), "qlora")


register(
    Method(
        QLORA,
        apply=apply_qlora,
        quantization=quantization,
        param_groups=lora_param_groups,
    )
)
