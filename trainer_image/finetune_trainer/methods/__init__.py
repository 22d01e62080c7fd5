"""The fine-tuning method registry: one entry per ``method.type``.

A method says how to load the base model (``quantization``) and how to turn it into
the model that trains (``apply``). Adding a method is one spec class in
``finetune_trainer.config`` and one module here calling :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from finetune_trainer.modeling import Compute


@dataclass(frozen=True)
class Method:
    name: str
    apply: Callable[[Any, Any, Compute], Any]
    """(base model, method options, compute) -> the model to train."""
    quantization: Callable[[Any, Compute], Any | None] = lambda options, compute: None
    """(method options, compute) -> a transformers quantization config, or None."""


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} registered twice")
    REGISTRY[method.name] = method
    return method


def get_method(name: str) -> Method:
    # Importing the modules registers them; done here so importing the registry is cheap.
    from finetune_trainer.methods import lora, qlora  # noqa: F401

    return REGISTRY[name]
