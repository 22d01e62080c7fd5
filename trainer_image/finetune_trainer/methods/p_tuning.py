"""P-tuning: virtual-token embeddings produced by a small prompt encoder (an MLP, or a
bidirectional LSTM and an MLP), prepended to every sequence; the base model frozen
(peft.PromptEncoderConfig). peft publishes the embeddings the encoder produces, so the
adapter needs no encoder to load."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_api.config.methods.p_tuning import P_TUNING, PTuningSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import (
    hidden_size,
    peft_task_type,
    trainable_in_fp32,
    wrap_peft,
)

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel

LSTM_LAYERS = 2
"""encoderNumLayers' default for the lstm encoder (peft's)."""


def apply_p_tuning(model: PreTrainedModel, options: PTuningSpec, ctx: MethodContext) -> PeftModel:
    from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

    lstm = options.encoder == "lstm"
    config = PromptEncoderConfig(
        task_type=peft_task_type(ctx),
        num_virtual_tokens=options.num_virtual_tokens,
        encoder_reparameterization_type=(
            PromptEncoderReparameterizationType.LSTM
            if lstm
            else PromptEncoderReparameterizationType.MLP
        ),
        encoder_hidden_size=options.encoder_hidden_size or hidden_size(model),
        encoder_num_layers=(options.encoder_num_layers or LSTM_LAYERS) if lstm else LSTM_LAYERS,
        encoder_dropout=options.encoder_dropout,
    )
    return trainable_in_fp32(wrap_peft(model, config, "pTuning"))


register(Method(P_TUNING, apply=apply_p_tuning))
