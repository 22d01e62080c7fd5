"""AdaLoRA: LoRA in SVD form (P diag(E) Q) whose total rank budget is shared out across
layers by importance while training (peft.AdaLoraConfig).

Its schedule is in optimizer steps, so it needs the run's total step count, and its
budget allocation must run after every optimizer step while the gradients are still
there: that is this method's ``after_step`` hook. The published adapter carries the
final ``rank_pattern``; peft drops the pruned ranks on saving and restores the layout
on loading.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from finetune_api.config.methods.adalora import ADALORA, AdaLoraSpec
from finetune_trainer.errors import ConfigError
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import peft_task_type, wrap_peft

if TYPE_CHECKING:
    from peft import AdaLoraConfig, AdaLoraModel, PeftModel
    from transformers import PreTrainedModel


def adalora_config(options: AdaLoraSpec, ctx: MethodContext) -> AdaLoraConfig:
    from peft import AdaLoraConfig

    if options.tinit + options.tfinal >= ctx.total_steps:
        raise ConfigError(
            f"method.adalora: tinit ({options.tinit}) + tfinal ({options.tfinal}) leave no "
            f"step of this run's {ctx.total_steps} for reallocating ranks; lower tinit or "
            "tfinal, or train for more steps"
        )
    target = options.target_modules
    return AdaLoraConfig(
        task_type=peft_task_type(ctx),
        init_r=options.init_r,
        target_r=options.target_r,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=target if isinstance(target, str) else list(target),
        tinit=options.tinit,
        tfinal=options.tfinal,
        deltaT=options.delta_t,
        beta1=options.beta1,
        beta2=options.beta2,
        orth_reg_weight=options.orth_reg_weight,
        total_step=ctx.total_steps,
    )


def apply_adalora(model: PreTrainedModel, options: AdaLoraSpec, ctx: MethodContext) -> PeftModel:
    peft_model = wrap_peft(model, adalora_config(options, ctx), "adalora")
    # peft upcasts bf16/fp16 adapter tensors to fp32 by re-assigning them into their
    # ParameterDict, which turns the fixed rank count (the scale's denominator, never
    # saved) into a trainable parameter; the optimizer would then move the scale.
    for name, param in peft_model.named_parameters():
        if ".ranknum." in name:
            param.requires_grad_(False)
    return peft_model


def _tuner(model: torch.nn.Module) -> AdaLoraModel:
    """The AdaLoraModel inside ``model`` (a PeftModel, possibly wrapped by DDP)."""
    from peft import AdaLoraModel, PeftModel

    peft_model = getattr(model, "module", model)
    tuner = peft_model.base_model if isinstance(peft_model, PeftModel) else None
    if not isinstance(tuner, AdaLoraModel):
        raise TypeError(f"not an AdaLoRA model: {type(peft_model).__name__}")
    return tuner


def reallocate_ranks(model: torch.nn.Module, step: int) -> None:
    """Update importance scores and mask ranks to the step's budget (peft's
    ``update_and_allocate``, which must see this step's gradients)."""
    _tuner(model).update_and_allocate(step)


def orthogonal_regularization(model: torch.nn.Module) -> torch.Tensor:
    """``orth_reg_weight`` x the mean ||PP^T - I||_F over the adapter's P and Q factors:
    what peft's AdaLoraModel.forward adds to a loss the model computes itself."""
    from peft import AdaLoraConfig

    tuner = _tuner(model)
    adapter = tuner.trainable_adapter_name
    config = tuner.peft_config[adapter]
    assert isinstance(config, AdaLoraConfig)
    weight = config.orth_reg_weight
    norms = [
        torch.linalg.matrix_norm(
            (cov := p @ p.T if "lora_A" in name else p.T @ p)
            - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)
        )
        for name, p in tuner.model.named_parameters()
        if ("lora_A" in name or "lora_B" in name) and adapter in name
    ]
    if not norms:
        return torch.zeros(())  # a 0-dim tensor adds to a loss on any device
    return weight * torch.stack(norms).mean()


register(
    Method(
        ADALORA,
        apply=apply_adalora,
        after_step=reallocate_ranks,
        loss_term=orthogonal_regularization,
    )
)
