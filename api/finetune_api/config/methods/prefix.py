"""Prefix tuning: learned key/value prefixes in every attention layer."""

from __future__ import annotations

from typing import Final, Self

from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._registry import MethodEntry, register_method


class PrefixSpec(CamelModel):
    """Prefix tuning: learned key/value prefixes in every attention layer
    (peft PrefixTuningConfig)."""

    num_virtual_tokens: int = Field(
        default=20,
        ge=1,
        le=1024,
        description="Learned prefix positions that every attention layer's keys and values "
        "start with.",
    )
    projection: bool = Field(
        default=False,
        description="Reparameterise the prefixes through a two-layer MLP while training (more "
        "parameters, often steadier); off: the prefixes are trained directly.",
    )
    encoder_hidden_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Hidden size of the projection MLP (projection only). Default: the "
        "model's hidden size.",
    )

    @model_validator(mode="after")
    def _hidden_size_needs_projection(self) -> Self:
        if self.encoder_hidden_size is not None and not self.projection:
            raise ValueError(
                "encoderHiddenSize is only used with projection: true; set projection: true or "
                "remove encoderHiddenSize"
            )
        return self


PREFIX: Final = register_method(
    MethodEntry(
        name="prefix",
        options=PrefixSpec,
        order=7,
        summary="prefix tuning",
        virtual_tokens=True,
    )
)
