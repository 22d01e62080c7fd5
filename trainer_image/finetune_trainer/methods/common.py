"""What several methods share: peft's task type, building a PeftModel with errors a
user can act on, and keeping trainable weights in fp32 under mixed precision."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import torch

from finetune_trainer.errors import ConfigError
from finetune_trainer.methods import MethodContext

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel, TaskType
    from transformers import PreTrainedModel

_TASK_TYPES: dict[str, str | None] = {
    "causal-lm": "CAUSAL_LM",
    "sequence-classification": "SEQ_CLS",
    "reward-model": "SEQ_CLS",  # a one-output classifier: its score head trains and saves
    "preference": "CAUSAL_LM",
    "reinforcement": "CAUSAL_LM",
    "sentence-embedding": "FEATURE_EXTRACTION",  # a bare encoder: no head to train or save
    # peft has no image task type: its plain PeftModel passes pixel_values through, and
    # the new head trains and saves as a module to save (finetune_trainer.vision.recipe).
    "image-classification": None,
}

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def peft_task_type(ctx: MethodContext) -> TaskType | None:
    """peft's TaskType for the job's ``task`` (it decides which PeftModel class wraps
    the model, and that a classifier head is trained and saved with the adapter)."""
    from peft import TaskType

    if ctx.task not in _TASK_TYPES:
        raise ConfigError(
            f"task: {ctx.task} has no PEFT task type; use one of {', '.join(_TASK_TYPES)}"
        )
    name = _TASK_TYPES[ctx.task]
    return None if name is None else TaskType[name]


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers, e.g. q_proj, down_proj."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Linear4bit"
    }
    return sorted(names)


def wrap_peft(model: torch.nn.Module, config: PeftConfig, section: str) -> PeftModel:
    """``get_peft_model`` with peft's ValueErrors reported against ``method.<section>``,
    and adapter dropout that is cheaper on CPUs (:mod:`finetune_trainer.dropout`)."""
    from peft import get_peft_model

    from finetune_trainer.dropout import use_cpu_dropout

    written = resolve_patterns(model, config, section)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as exc:
        message = str(exc)
        hint = ""
        if "not found in the base model" in message or "target_modules" in message:
            hint = (
                f"; the model's linear layers are named {linear_module_names(model)} (set "
                f"method.{section}.targetModules to some of them, or to all-linear)"
            )
        raise ConfigError(f"method.{section}: {message}{hint}") from exc
    for attr, pattern in written.items():  # published (adapter_config.json) as written
        setattr(config, attr, pattern)
    use_cpu_dropout(peft_model)
    return peft_model


_PATTERN_FIELDS = {"target_modules": "targetModules", "feedforward_modules": "feedforwardModules"}
"""The peft config fields that take a regular expression over module paths."""


def pattern_matcher(pattern: str) -> Callable[[str], bool]:
    """``fullmatch`` of ``pattern`` in linear time: RE2 where it is installed (the
    trainer image), else Python's ``re``, which the contract's check
    (:func:`finetune_api.config.patterns.check_module_pattern`) keeps to patterns that
    cannot backtrack without bound. RE2 lacks a few of ``re``'s spellings (``\\Z``):
    such a pattern uses ``re`` too."""
    try:
        import re2  # type: ignore[import-untyped]

        compiled = re2.compile(pattern)
    except Exception:  # not installed, or syntax only Python's re reads
        compiled = re.compile(pattern)
    return lambda name: compiled.fullmatch(name) is not None


def resolve_patterns(model: torch.nn.Module, config: PeftConfig, section: str) -> dict[str, str]:
    """Turn a regular expression in ``config``'s targetModules or feedforwardModules into
    the set of module paths it matches, as peft would (``re.fullmatch`` on every path of
    ``model``), so peft never runs a backtracking matcher over the model: a pattern is
    matched here once, in linear time. A pattern matching nothing is a ConfigError that
    names the field and the model's layer names. Returns the patterns replaced, by
    field, for the published adapter_config.json to keep them as written."""
    paths = [name for name, _ in model.named_modules() if name]
    written: dict[str, str] = {}
    for attr, wire in _PATTERN_FIELDS.items():
        value = getattr(config, attr, None)
        if not isinstance(value, str) or value == "all-linear":
            continue
        matches = pattern_matcher(value)
        found = {path for path in paths if matches(path)}
        if not found:
            raise ConfigError(
                f"method.{section}.{wire}: '{value}' matches no module path of this model "
                f"(a regular expression must match a whole path, e.g. "
                f"model.layers.0.self_attn.q_proj); its linear layers are named "
                f"{linear_module_names(model)}: list some of them, or use all-linear"
            )
        written[attr] = value
        setattr(config, attr, found)
    return written


def trainable_in_fp32(model: ModuleT) -> ModuleT:
    """Trainable weights in fp32, so mixed precision (bf16/fp16 compute) keeps fp32
    master weights for the optimizer; frozen weights keep their loaded dtype."""
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
    return model


def hidden_size(model: PreTrainedModel) -> int:
    """The model's hidden size (the width of its embeddings)."""
    size: int = model.config.hidden_size
    return size
