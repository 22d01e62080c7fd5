"""Freeze: train only the top ``trainableLayers`` transformer blocks, the head (lm_head,
or a classifier's ``score``/``classifier``) and the final norm; everything below stays
frozen. Optionally BitFit (``trainBiasOnly``: only the bias terms of those modules) and
a separate learning rate for the head (``headLrMultiplier``). The whole model is the
artifact.

The blocks are found without knowing the architecture: the ModuleList of the model's
``_no_split_modules`` class (the decoder layer), else its longest ModuleList. The final
norms are the norm modules beside that list in the backbone.

BitFit on a model without biases (Llama, SmolLM2, Mistral) is an error rather than
silently training norms instead: a user asking for bias-only training would otherwise
get a different method than the one named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from finetune_api.config.methods.freeze import FREEZE, FreezeSpec
from finetune_trainer.errors import ConfigError
from finetune_trainer.methods import Method, MethodContext, ParamGroup, register
from finetune_trainer.methods.common import trainable_in_fp32

if TYPE_CHECKING:
    from transformers import PreTrainedModel

_HEAD_NAMES = ("score", "classifier")


def transformer_blocks(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.ModuleList]:
    """(the backbone module holding them, the list of transformer blocks)."""
    layer_classes = set(getattr(model, "_no_split_modules", None) or [])
    lists = [
        (parent, child)
        for parent in model.modules()
        for child in parent.children()
        if isinstance(child, torch.nn.ModuleList) and len(child) > 0
    ]
    if not lists:
        raise ConfigError(
            f"method.freeze: {type(model).__name__} has no list of transformer blocks to "
            "choose the top ones from; use type: full or lora"
        )
    for parent, child in lists:
        if type(child[0]).__name__ in layer_classes:
            return parent, child
    return max(lists, key=lambda pair: len(pair[1]))


def find_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """The output head, or None for a bare encoder (task sentence-embedding)."""
    output_embeddings = getattr(model, "get_output_embeddings", None)
    head = output_embeddings() if callable(output_embeddings) else None
    if head is None:
        head = next((getattr(model, name) for name in _HEAD_NAMES if hasattr(model, name)), None)
    return head if isinstance(head, torch.nn.Module) else None


def head_module(model: torch.nn.Module) -> torch.nn.Module:
    """The output head: the language-model head, or a classifier's score/classifier."""
    head = find_head(model)
    if head is None:
        raise ConfigError(
            f"method.freeze: cannot find the output head of {type(model).__name__} (no "
            "lm_head, score or classifier); use type: full or lora"
        )
    return head


def final_norms(backbone: torch.nn.Module, blocks: torch.nn.ModuleList) -> list[torch.nn.Module]:
    return [
        child
        for child in backbone.children()
        if child is not blocks and "norm" in type(child).__name__.lower()
    ]


def apply_freeze(
    model: PreTrainedModel, options: FreezeSpec, ctx: MethodContext
) -> PreTrainedModel:
    backbone, blocks = transformer_blocks(model)
    if options.trainable_layers > len(blocks):
        raise ConfigError(
            f"method.freeze.trainableLayers is {options.trainable_layers} but "
            f"{type(model).__name__} has {len(blocks)} transformer blocks; use at most "
            f"{len(blocks)} (or type: full to train everything)"
        )
    top = list(blocks)[len(blocks) - options.trainable_layers :]
    # A sentence encoder has no head: its output is the top block's (pooled).
    heads = [] if ctx.task == "sentence-embedding" else [head_module(model)]
    selected = [*top, *heads, *final_norms(backbone, blocks)]
    model.requires_grad_(False)
    for module in selected:
        for name, param in module.named_parameters():
            if not options.train_bias_only or name.rsplit(".", 1)[-1] == "bias":
                param.requires_grad_(True)
    if not any(p.requires_grad for p in model.parameters()):
        if options.train_bias_only:
            raise ConfigError(
                f"method.freeze.trainBiasOnly: {type(model).__name__} has no bias terms in "
                f"its top {options.trainable_layers} blocks, head or final norm, so BitFit "
                "has nothing to train; set trainBiasOnly: false to train those modules "
                "fully, raise trainableLayers, or use a model with biases (e.g. Qwen2)"
            )
        raise ConfigError(
            "method.freeze: nothing to train (trainableLayers: 0 and a head without "
            "parameters); raise trainableLayers"
        )
    return trainable_in_fp32(model)


def freeze_param_groups(model: torch.nn.Module, options: FreezeSpec, lr: float) -> list[ParamGroup]:
    """The head at lr x headLrMultiplier, every other trainable parameter at lr."""
    found = find_head(model)
    head = set() if found is None else {id(p) for p in found.parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups: list[ParamGroup] = [
        {"params": [p for p in trainable if id(p) not in head], "lr": lr, "name": "body"},
        {
            "params": [p for p in trainable if id(p) in head],
            "lr": lr * options.head_lr_multiplier,
            "name": "head",
        },
    ]
    return [g for g in groups if g["params"]]


register(Method(FREEZE, apply=apply_freeze, param_groups=freeze_param_groups))
