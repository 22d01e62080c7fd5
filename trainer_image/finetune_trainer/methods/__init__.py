"""The fine-tuning methods' implementations: one :class:`Method` per contract entry.

What a method is to every side (its name, options model, what it publishes, whether
it adds virtual tokens or trains on a quantised base) is its entry in
``finetune_api.config.methods``; how it trains is one module here, which registers a
:class:`Method` for that entry with :func:`register` when imported. The first
:func:`get_method` imports every module of this package (no list to keep) and checks
that each contract method has exactly one implementation.

A method says how to load the base model (``quantization``), how to turn it into the
model that trains (``apply``), and, when it needs them, how its parameters split into
optimizer groups (``param_groups``, e.g. LoRA+ or per-layer learning rates), what
runs after each optimizer step (``after_step``, e.g. AdaLoRA's rank reallocation), what
it adds to the loss (``loss_term``, AdaLoRA's orthogonal regularisation) and how it
writes what it publishes (``save``, e.g. PiSSA's conversion to a plain adapter). What
it publishes (``artifact``: a PEFT adapter or a whole model) is the contract's.

``Method`` is generic in the options model: ``Method(LORA, apply=apply_lora)`` only
type-checks when ``apply_lora`` takes the ``LoraSpec`` that LORA's section holds.

Adding a method: its contract module in ``finetune_api/config/methods/`` and a module
here ending in ``register(Method(ENTRY, apply=...))``; nothing else to edit.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Protocol, runtime_checkable

import torch

from finetune_api.config.base import CamelModel
from finetune_api.config.methods import METHODS, MethodEntry
from finetune_api.config.methods._registry import Artifact, OptionsT
from finetune_trainer.modeling import Compute

if TYPE_CHECKING:
    from typing import TypeAlias

    from peft import PeftModel
    from transformers import BitsAndBytesConfig, PreTrainedModel, PreTrainedTokenizerBase

    TrainedModel: TypeAlias = PreTrainedModel | PeftModel
    """What ``apply`` returns: a PeftModel around the base, or the base itself."""

ParamGroup = dict[str, Any]
"""One optimizer parameter group: ``params``, ``lr`` and optionally ``name``."""
StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know about the run when it builds the model."""

    compute: Compute
    total_steps: int
    task: str
    model_dir: Path
    tokenizer: PreTrainedTokenizerBase | None
    steps_per_epoch: int | None = None
    """Optimizer steps per pass over the training set (None where the caller has no
    data: a method whose schedule is in epochs refuses then)."""
    resumed_step: int = 0
    """The checkpoint's step when the run resumes (0: a fresh run). A method whose
    trainable set changes while training (progressive) must build the set of the step
    after it: the checkpoint's weights are loaded into exactly the trainable ones."""


def no_quantization(options: CamelModel, compute: Compute) -> BitsAndBytesConfig | None:
    """The base model loads in its training dtype."""
    return None


@runtime_checkable
class SavesPretrained(Protocol):
    """What transformers' and peft's models share for writing themselves."""

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None: ...


def saving(model: object) -> SavesPretrained:
    """``model`` as something that writes itself (a PreTrainedModel or a PeftModel)."""
    if not isinstance(model, SavesPretrained):
        raise TypeError(f"{type(model).__name__} has no save_pretrained to publish it with")
    return model


def save_pretrained(model: torch.nn.Module, directory: Path, state_dict: StateDict | None) -> None:
    """The usual way: an adapter for a PeftModel, the whole model otherwise.

    ``state_dict`` (the whole model's, gathered from FSDP shards) replaces the model's own:
    both transformers and PEFT take the weights to write from it when given.
    """
    writer = saving(model)
    if state_dict is None:
        writer.save_pretrained(directory)
    else:
        writer.save_pretrained(directory, state_dict=state_dict)


@dataclass(frozen=True)
class Method(Generic[OptionsT]):
    """A method's implementation, for the contract's ``entry``."""

    entry: MethodEntry[OptionsT]
    _: KW_ONLY
    apply: Callable[[PreTrainedModel, OptionsT, MethodContext], TrainedModel]
    """(base model, method options, context) -> the model to train."""
    quantization: Callable[[OptionsT, Compute], BitsAndBytesConfig | None] = no_quantization
    """(method options, compute) -> how to quantise the base model while loading it, or
    None; a method is given one exactly when its entry says ``quantized_base``."""
    param_groups: Callable[[torch.nn.Module, OptionsT, float], list[ParamGroup]] | None = None
    """(model, options, base learning rate) -> optimizer parameter groups."""
    after_step: Callable[[torch.nn.Module, int], None] | None = None
    """(model, global step) -> None, called after each optimizer step."""
    loss_term: Callable[[torch.nn.Module], torch.Tensor] | None = None
    """(model) -> a tensor added to each micro-batch's loss (AdaLoRA's orthogonal
    regularisation: peft adds it only to a loss the model computes itself, and the trainer
    computes its losses from selected logits)."""
    save: Callable[[torch.nn.Module, Path, StateDict | None], None] = save_pretrained
    """(trained model, directory, gathered state dict or None) -> None: writes the
    artifact's weights and config."""

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def artifact(self) -> Artifact:
        """adapter: PeftModel.from_pretrained(base, dir) loads it; model: from_pretrained(dir)."""
        return self.entry.artifact


REGISTRY: dict[str, Method[Any]] = {}
"""Every implementation by method name, complete once :func:`get_method` has run."""


def register(method: Method[OptionsT]) -> Method[OptionsT]:
    """Add ``method``; call it at import time of its module in this package."""
    entry = method.entry
    if METHODS.get(entry.name) is not entry:
        raise ValueError(
            f"method {entry.name!r} is not a contract method; register its MethodEntry in a "
            "module of finetune_api/config/methods/ and implement that entry"
        )
    if entry.name in REGISTRY:
        raise ValueError(f"method {entry.name!r} registered twice")
    if entry.quantized_base != (method.quantization is not no_quantization):
        raise ValueError(
            f"method {entry.name!r}: give it a quantization exactly when its entry says "
            f"quantized_base (it says {entry.quantized_base})"
        )
    REGISTRY[entry.name] = method
    return method


def load_implementations() -> None:
    """Import every module of this package (each registers its method), then check that
    every contract method has an implementation."""
    for module in pkgutil.iter_modules(__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")
    missing = [name for name in METHODS if name not in REGISTRY]
    if missing:
        raise RuntimeError(
            f"no implementation of method(s) {', '.join(missing)}: add a module to "
            f"finetune_trainer/methods/ that calls register(Method(<its entry>, apply=...))"
        )


def get_method(name: str) -> Method[Any]:
    """The implementation of method ``name``."""
    if len(REGISTRY) < len(METHODS):  # imported here so that importing this package is cheap
        load_implementations()
    return REGISTRY[name]


def trainable_groups(
    model: torch.nn.Module, options: CamelModel, lr: float, method: Method[Any]
) -> list[ParamGroup]:
    """The optimizer groups for ``model``: the method's own, or one group of everything
    that requires a gradient."""
    if method.param_groups is not None:
        return method.param_groups(model, options, lr)
    return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
