"""LoRA: trainable low-rank matrices beside frozen linear layers (peft.LoraConfig).

Options beyond rank and scale: DoRA (magnitude/direction split), rsLoRA (alpha/sqrt(r)
scaling), initialisation (default, gaussian, PiSSA, OLoRA), modules trained in full
(``modulesToSave``) and LoRA+ (the B matrices at a higher learning rate, through the
method's optimizer groups).

PiSSA and OLoRA start the adapter from a decomposition of each weight and leave the
residual in the base model, so the trained adapter only makes sense over that modified
base. peft converts it on saving: from the adapter as it was right after
initialisation (kept in a temporary directory) it writes a rank-2r LoRA adapter whose
delta is (trained - initial), which applies to the original base model like any other.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from finetune_api.config.methods.lora import LORA, LoraSpec
from finetune_trainer.methods import (
    Method,
    MethodContext,
    ParamGroup,
    StateDict,
    register,
    save_pretrained,
    saving,
)
from finetune_trainer.methods.common import peft_task_type, wrap_peft

if TYPE_CHECKING:
    from peft import LoraConfig, PeftModel
    from transformers import PreTrainedModel

_INIT: dict[str, bool | Literal["gaussian", "pissa", "olora"]] = {
    "default": True,
    "gaussian": "gaussian",
    "pissa": "pissa",
    "olora": "olora",
}
_INITIAL_ADAPTER = "_finetune_initial_adapter"
"""Attribute of a PiSSA/OLoRA PeftModel holding the temporary directory of its
adapter as initialised (what the conversion on saving subtracts)."""
_B_MATRICES = ("lora_B", "lora_embedding_B")


def lora_config(options: LoraSpec, ctx: MethodContext) -> LoraConfig:
    from peft import LoraConfig

    target = options.target_modules
    return LoraConfig(
        task_type=peft_task_type(ctx),
        r=options.r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        bias="none",
        use_dora=options.use_dora,
        use_rslora=options.use_rslora,
        init_lora_weights=_INIT[options.init],
        modules_to_save=list(options.modules_to_save) if options.modules_to_save else None,
    )


def keep_initial_adapter(model: PeftModel) -> None:
    """Save the just-initialised adapter so that saving can convert the trained one."""
    directory = tempfile.TemporaryDirectory(prefix="finetune-initial-adapter-")
    model.save_pretrained(str(Path(directory.name) / "initial"))
    setattr(model, _INITIAL_ADAPTER, directory)  # removed with the model


def save_lora(model: torch.nn.Module, directory: Path, state_dict: StateDict | None) -> None:
    """A plain LoRA adapter; PiSSA/OLoRA ones converted to apply to the original base."""
    initial: tempfile.TemporaryDirectory[str] | None = getattr(model, _INITIAL_ADAPTER, None)
    if initial is None:
        save_pretrained(model, directory, state_dict)
        return
    kwargs: dict[str, Any] = {} if state_dict is None else {"state_dict": state_dict}
    saving(model).save_pretrained(
        directory,
        path_initial_model_for_weight_conversion=str(Path(initial.name) / "initial"),
        **kwargs,
    )


def apply_lora(model: PreTrainedModel, options: LoraSpec, ctx: MethodContext) -> PeftModel:
    peft_model = wrap_peft(model, lora_config(options, ctx), "lora")
    if options.init in ("pissa", "olora"):
        keep_initial_adapter(peft_model)
    return peft_model


def lora_param_groups(model: torch.nn.Module, options: LoraSpec, lr: float) -> list[ParamGroup]:
    """One group at ``lr``; with LoRA+ the B matrices in a second at lr x loraPlusRatio."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if options.lora_plus_ratio is None:
        return [{"params": [p for _, p in trainable], "lr": lr}]
    b = [p for n, p in trainable if any(f".{part}." in n for part in _B_MATRICES)]
    rest = [p for n, p in trainable if not any(f".{part}." in n for part in _B_MATRICES)]
    groups: list[ParamGroup] = [
        {"params": rest, "lr": lr, "name": "lora"},
        {"params": b, "lr": lr * options.lora_plus_ratio, "name": "lora_plus_B"},
    ]
    return [g for g in groups if g["params"]]


register(Method(LORA, apply=apply_lora, param_groups=lora_param_groups, save=save_lora))
