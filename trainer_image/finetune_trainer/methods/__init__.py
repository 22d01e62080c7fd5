"""The fine-tuning method registry: one entry per ``method.type``.

A method says how to load the base model (``quantization``), how to turn it into the
model that trains (``apply``), and, when it needs them, how its parameters split into
optimizer groups (``param_groups``, e.g. LoRA+ or per-layer learning rates), what
runs after each optimizer step (``after_step``, e.g. AdaLoRA's rank reallocation), what
it adds to the loss (``loss_term``, AdaLoRA's orthogonal regularisation), what
it publishes (``artifact``: a PEFT adapter or a whole model) and how it writes that
(``save``, e.g. PiSSA's conversion to a plain adapter).
Adding a method is one options class in ``finetune_api.config.methods`` and one
module here calling :func:`register`; :data:`MODULES` lists those modules.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from finetune_trainer.modeling import Compute


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know about the run when it builds the model."""

    compute: Compute
    total_steps: int
    task: str
    model_dir: Path
    tokenizer: Any


def _no_quantization(options: Any, compute: Compute) -> Any | None:
    return None


def save_pretrained(model: Any, directory: Path, state_dict: dict[str, Any] | None) -> None:
    """The usual way: an adapter for a PeftModel, the whole model otherwise.

    ``state_dict`` (the whole model's, gathered from FSDP shards) replaces the model's own:
    both transformers and PEFT take the weights to write from it when given.
    """
    if state_dict is None:
        model.save_pretrained(directory)
    else:
        model.save_pretrained(directory, state_dict=state_dict)


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable[[Any, Any, MethodContext], Any]
    """(base model, method options, context) -> the model to train."""
    quantization: Callable[[Any, Compute], Any | None] = _no_quantization
    """(method options, compute) -> a transformers quantization config, or None."""
    param_groups: Callable[[Any, Any, float], list[dict[str, Any]]] | None = None
    """(model, options, base learning rate) -> optimizer parameter groups."""
    after_step: Callable[[Any, int], None] | None = None
    """(model, global step) -> None, called after each optimizer step."""
    loss_term: Callable[[Any], Any] | None = None
    """(model) -> a tensor added to each micro-batch's loss (AdaLoRA's orthogonal
    regularisation: peft adds it only to a loss the model computes itself, and the trainer
    computes its losses from selected logits)."""
    artifact: Literal["adapter", "model"] = "adapter"
    """adapter: PeftModel.from_pretrained(base, dir) loads it; model: from_pretrained(dir)."""
    save: Callable[[Any, Path, dict[str, Any] | None], None] = save_pretrained
    """(trained model, directory, gathered state dict or None) -> None: writes the
    artifact's weights and config."""


REGISTRY: dict[str, Method] = {}

MODULES = (
    "lora",
    "qlora",
    "adalora",
    "ia3",
    "full",
    "freeze",
    "prefix",
    "prompt",
    "p_tuning",
)
"""Modules under ``finetune_trainer.methods`` that register a method when imported."""


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    # Importing the modules registers them; done here so importing the registry is cheap.
    for module in MODULES:
        importlib.import_module(f"finetune_trainer.methods.{module}")
    return REGISTRY[name]


def trainable_groups(model: Any, options: Any, lr: float, method: Method) -> list[dict[str, Any]]:
    """The optimizer groups for ``model``: the method's own, or one group of everything
    that requires a gradient."""
    if method.param_groups is not None:
        return method.param_groups(model, options, lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
