"""AdaLoRA: LoRA in SVD form whose rank budget is reallocated across layers by
importance while training."""

from __future__ import annotations

from typing import Final, Self

from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._fields import PRESERVE, TARGET_MODULES_HELP, TargetModules
from finetune_api.config.methods._registry import MethodEntry, register_method


class AdaLoraSpec(CamelModel):
    """AdaLoRA: LoRA in SVD form whose rank budget is reallocated across layers by
    importance while training (peft AdaLoraConfig)."""

    init_r: int = Field(
        default=12, ge=1, le=1024, description="Rank every adapted layer starts with."
    )
    target_r: int = Field(
        default=8,
        ge=1,
        le=1024,
        description="Average rank per layer after pruning: the total budget is targetR x the "
        "number of adapted layers, shared out by importance. Must be below initR.",
    )
    alpha: int = Field(
        default=32, ge=1, le=65536, description="Scaling numerator (scale = alpha/initR)."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: TargetModules = Field(
        default="all-linear",
        description="Which layers get adapters: " + TARGET_MODULES_HELP,
        json_schema_extra=PRESERVE,
    )
    tinit: int = Field(
        default=0,
        ge=0,
        description="Warm-up steps at the full initR before pruning starts.",
    )
    tfinal: int = Field(
        default=0,
        ge=0,
        description="Final steps that train at the final rank allocation. tinit + tfinal must "
        "leave at least one step of the run for pruning.",
    )
    delta_t: int = Field(default=1, ge=1, description="Steps between two budget reallocations.")
    beta1: float = Field(
        default=0.85, gt=0, lt=1, description="EMA factor of the importance (sensitivity) scores."
    )
    beta2: float = Field(
        default=0.85, gt=0, lt=1, description="EMA factor of the importance uncertainty."
    )
    orth_reg_weight: float = Field(
        default=0.5,
        gt=0,
        le=100,
        description="Weight of the orthogonality penalty on P and Q added to the training loss.",
    )

    @model_validator(mode="after")
    def _budget_shrinks(self) -> Self:
        if self.target_r >= self.init_r:
            raise ValueError(
                f"targetR ({self.target_r}) must be below initR ({self.init_r}): AdaLoRA prunes "
                f"from initR down to targetR; lower targetR or raise initR"
            )
        return self


ADALORA: Final = register_method(
    MethodEntry(
        name="adalora",
        options=AdaLoraSpec,
        order=3,
        summary="rank reallocated while training",
    )
)
