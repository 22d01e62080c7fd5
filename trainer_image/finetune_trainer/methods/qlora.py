"""QLoRA: LoRA on a 4-bit (NF4/FP4, optionally double-quantized) frozen base model.

bitsandbytes quantizes the linear weights at load time; peft's
``prepare_model_for_kbit_training`` casts the remaining small parameters (norms,
embeddings) to fp32 and enables input gradients so the adapters can learn.
"""

from __future__ import annotations

from typing import Any

import torch

from finetune_trainer.config import QLoraSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.lora import lora_config
from finetune_trainer.modeling import Compute

_COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def compute_dtype(options: QLoraSpec, compute: Compute) -> torch.dtype:
    if options.compute_dtype == "auto":
        return compute.dtype
    return _COMPUTE_DTYPES[options.compute_dtype]


def quantization(options: QLoraSpec, compute: Compute) -> Any:
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.quant_type,
        bnb_4bit_use_double_quant=options.double_quant,
        bnb_4bit_compute_dtype=compute_dtype(options, compute),
        bnb_4bit_quant_storage=torch.uint8,
    )


def apply_qlora(model: Any, options: QLoraSpec, ctx: MethodContext) -> Any:
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(options))


register(Method(name="qlora", apply=apply_qlora, quantization=quantization))
