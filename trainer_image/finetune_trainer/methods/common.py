"""What several methods share: peft's task type, building a PeftModel with errors a
user can act on, and keeping trainable weights in fp32 under mixed precision."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import torch

from finetune_trainer.errors import ConfigError
from finetune_trainer.methods import MethodContext

if TYPE_CHECKING:
    from peft import PeftConfig, PeftModel, TaskType
    from transformers import PreTrainedModel

_TASK_TYPES = {"causal-lm": "CAUSAL_LM", "sequence-classification": "SEQ_CLS"}

ModuleT = TypeVar("ModuleT", bound=torch.nn.Module)


def peft_task_type(ctx: MethodContext) -> TaskType:
    """peft's TaskType for the job's ``task`` (it decides which PeftModel class wraps
    the model, and that a classifier head is trained and saved with the adapter)."""
    from peft import TaskType

    if ctx.task not in _TASK_TYPES:
        raise ConfigError(
            f"task: {ctx.task} has no PEFT task type; use one of {', '.join(_TASK_TYPES)}"
        )
    return TaskType[_TASK_TYPES[ctx.task]]


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
    use_cpu_dropout(peft_model)
    return peft_model


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
