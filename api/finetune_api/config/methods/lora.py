"""LoRA: low-rank adapters beside frozen weights (the default method).

Its section also carries QLoRA's LoRA options (``type: qlora`` builds on this entry).
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._fields import (
    PRESERVE,
    TARGET_MODULES_HELP,
    ModuleNames,
    TargetModules,
)
from finetune_api.config.methods._registry import MethodEntry, register_method


class LoraSpec(CamelModel):
    """LoRA: low-rank adapters beside frozen weights."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the adapter matrices.")
    alpha: int = Field(
        default=32,
        ge=1,
        le=65536,
        description="Scaling numerator (scale = alpha/r; alpha/sqrt(r) with useRslora).",
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: TargetModules = Field(
        default="all-linear",
        description="Which layers get adapters: " + TARGET_MODULES_HELP,
        json_schema_extra=PRESERVE,
    )
    use_dora: bool = Field(
        default=False,
        description="DoRA: split each adapted weight into magnitude and direction; adds one "
        "trainable magnitude per output feature of every adapted layer. Slower steps, often "
        "better at low ranks.",
    )
    use_rslora: bool = Field(
        default=False,
        description="rsLoRA: scale the adapter by alpha/sqrt(r) instead of alpha/r, which keeps "
        "high ranks learning.",
    )
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        default="default",
        description="How the adapters start. default: A random (Kaiming), B zero, so training "
        "starts from the base model; gaussian: A Gaussian, B zero; pissa: A and B from the "
        "top singular vectors of each weight (the base keeps the residual); olora: from a QR "
        "decomposition of each weight (the base keeps the residual). pissa and olora change "
        "the base weights while training; the published adapter is converted (rank 2r) to "
        "apply to the original base model.",
    )
    modules_to_save: ModuleNames | None = Field(
        default=None,
        description="Modules trained in full and published with the adapter, e.g. [lm_head] "
        "or [embed_tokens] (names as in targetModules lists).",
    )
    lora_plus_ratio: float | None = Field(
        default=None,
        ge=1,
        le=1024,
        description="LoRA+: the B matrices learn at learningRate x this ratio, the A matrices "
        "(and DoRA magnitudes) at learningRate; the LoRA+ paper suggests 16. Unset: one rate.",
    )

    @model_validator(mode="after")
    def _init_fits_the_options(self) -> Self:
        if self.init in ("pissa", "olora") and self.use_dora:
            raise ValueError(
                f"init {self.init} cannot be combined with useDora: the published adapter is "
                f"converted to plain LoRA over the original base, which DoRA's magnitudes do "
                f"not survive; set useDora: false or init: default"
            )
        return self


LORA: Final = register_method(MethodEntry(name="lora", options=LoraSpec, order=1))
