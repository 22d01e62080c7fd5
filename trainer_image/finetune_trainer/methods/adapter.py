"""Bottleneck adapters (``method.type: adapter``): Houlsby, Pfeiffer or parallel
adapters in each block above ``dropLayers``, the base frozen; a classifier's head
trains with them. The modules and the published format are
:mod:`finetune_trainer.methods.bottleneck`'s; this module is the registration."""

from __future__ import annotations

from typing import TYPE_CHECKING

from finetune_api.config.methods.adapter import ADAPTER, AdapterSpec
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.bottleneck import attach, head_names, save_bottleneck
from finetune_trainer.methods.common import hidden_size, trainable_in_fp32

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def apply_adapter(
    model: PreTrainedModel, options: AdapterSpec, ctx: MethodContext
) -> PreTrainedModel:
    """The base frozen, adapters attached and trainable (fp32 under mixed precision),
    and a classifier's fresh head trainable (the model has one exactly when its task
    classifies)."""
    model.requires_grad_(False)
    for adapter in attach(model, options, hidden_size(model)):
        adapter.requires_grad_(True)
    for name in head_names(model):  # a classifier's (or reward model's) fresh head
        getattr(model, name).requires_grad_(True)
    return trainable_in_fp32(model)


register(Method(ADAPTER, apply=apply_adapter, save=save_bottleneck))
