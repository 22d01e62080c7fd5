"""Partial fine-tuning: the top blocks, the head and the final norm train; the whole
model is published."""

from __future__ import annotations

from typing import Final

from pydantic import Field

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._registry import MethodEntry, register_method


class FreezeSpec(CamelModel):
    """Partial fine-tuning: the top transformer blocks, the head and the final norm train;
    everything below stays frozen. The whole model is published."""

    trainable_layers: int = Field(
        default=2,
        ge=0,
        le=1024,
        description="How many of the top (last) transformer blocks train, besides the head "
        "(lm_head, or the classifier) and the final norm. At most the model's block count.",
    )
    train_bias_only: bool = Field(
        default=False,
        description="BitFit: of those modules only the bias terms train. Models without bias "
        "terms there (Llama, SmolLM2, Mistral) are refused with an error rather than "
        "training something else; Qwen2-style attention biases or GPT-2-style models have "
        "them.",
    )
    head_lr_multiplier: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        description="The head learns at learningRate x this (e.g. 10 for a fresh classifier); "
        "the blocks and the norm at learningRate.",
    )


FREEZE: Final = register_method(
    MethodEntry(
        name="freeze",
        options=FreezeSpec,
        order=6,
        summary="the top blocks and the head train",
        artifact="model",
    )
)
