"""P-tuning: virtual-token embeddings produced by a small prompt encoder."""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._fields import VIRTUAL_TOKENS_HELP
from finetune_api.config.methods._registry import MethodEntry, register_method


class PTuningSpec(CamelModel):
    """P-tuning: virtual-token embeddings produced by a small prompt encoder
    (peft PromptEncoderConfig)."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=1024, description=VIRTUAL_TOKENS_HELP)
    encoder: Literal["mlp", "lstm"] = Field(
        default="mlp",
        description="The prompt encoder: mlp (two hidden layers) or lstm (a bidirectional "
        "LSTM followed by an MLP).",
    )
    encoder_hidden_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Hidden size of the prompt encoder. Default: the model's hidden size.",
    )
    encoder_num_layers: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="LSTM layers (encoder: lstm only). Default: 2.",
    )
    encoder_dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout inside the prompt encoder."
    )

    @model_validator(mode="after")
    def _layers_need_lstm(self) -> Self:
        if self.encoder_num_layers is not None and self.encoder != "lstm":
            raise ValueError(
                "encoderNumLayers is only used with encoder: lstm (the mlp encoder always has "
                "two hidden layers); set encoder: lstm or remove encoderNumLayers"
            )
        return self


P_TUNING: Final = register_method(
    MethodEntry(
        name="p-tuning",
        options=PTuningSpec,
        order=9,
        summary="prompt encoder",
        virtual_tokens=True,
    )
)
