"""QLoRA: LoRA on a 4-bit quantised base model (bitsandbytes).

It builds on LoRA: ``type: qlora`` takes its LoRA options under ``lora:`` (as KAITO and
most users write it) and keeps under ``qlora:`` what is its own, the quantisation
(quantType, doubleQuant, computeDtype). ``qlora:`` also accepts the LoRA options (the
older form), but an option given under both is refused. The init check below holds
whichever section carries ``init``: the ``lora:`` section is validated as QLoRA options
when the type is qlora (``finetune_api.config.methods``).
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import Field, model_validator

from finetune_api.config.methods._registry import MethodEntry, register_method
from finetune_api.config.methods.lora import LORA, LoraSpec


class QLoraSpec(LoraSpec):
    """QLoRA: LoRA on a 4-bit quantized base model (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(
        default=True, description="Quantize the quantization constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Dtype of the de-quantized matmuls. auto: bfloat16 on GPUs that support "
        "it, float32 on CPU.",
    )

    @model_validator(mode="after")
    def _init_keeps_the_4bit_base(self) -> Self:
        if self.init in ("pissa", "olora"):
            raise ValueError(
                f"init {self.init} rewrites the base weights, which a 4-bit base can only hold "
                f"re-quantized, so the published adapter would not reproduce the trained model; "
                f"use init: default or gaussian with qlora, or type: lora for init {self.init}"
            )
        return self


QLORA: Final = register_method(
    MethodEntry(
        name="qlora",
        options=QLoraSpec,
        order=2,
        summary="LoRA on a 4-bit base",
        quantized_base=True,
        builds_on=LORA,
    )
)
