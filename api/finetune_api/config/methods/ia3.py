"""IA3: learned vectors that rescale the activations of chosen layers."""

from __future__ import annotations

from typing import Final, Self

from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._fields import (
    PRESERVE,
    TARGET_MODULES_HELP,
    ModuleNames,
    TargetModules,
)
from finetune_api.config.methods._registry import MethodEntry, register_method


class IA3Spec(CamelModel):
    """IA3: learned vectors that rescale activations of chosen layers (peft IA3Config)."""

    target_modules: TargetModules | None = Field(
        default=None,
        description="Layers whose activations are rescaled: "
        + TARGET_MODULES_HELP
        + " Unset: peft's choice for the architecture (Llama: k_proj, v_proj, down_proj).",
        json_schema_extra=PRESERVE,
    )
    feedforward_modules: TargetModules | None = Field(
        default=None,
        description="Which of targetModules are feed-forward layers (their input is rescaled, "
        "not their output); same forms as targetModules, and a list must be part of a "
        "targetModules list. Unset: peft's choice for the architecture (Llama: down_proj).",
        json_schema_extra=PRESERVE,
    )
    modules_to_save: ModuleNames | None = Field(
        default=None,
        description="Modules trained in full and published with the adapter, e.g. [lm_head].",
    )

    @model_validator(mode="after")
    def _feedforward_within_targets(self) -> Self:
        ff, targets = self.feedforward_modules, self.target_modules
        if ff is not None and targets is None:
            raise ValueError(
                "feedforwardModules is set but targetModules is not; set targetModules too "
                "(feedforwardModules names which of them are feed-forward layers)"
            )
        if isinstance(ff, list) and isinstance(targets, list):
            outside = [name for name in ff if name not in targets]
            if outside:
                raise ValueError(
                    f"feedforwardModules {outside} are not in targetModules {targets}; add them "
                    "to targetModules or remove them from feedforwardModules"
                )
        return self


IA3: Final = register_method(
    MethodEntry(name="ia3", options=IA3Spec, order=4, summary="activation scaling")
)
