"""AdaLoRA: LoRA in SVD form (P diag(E) Q) whose total rank budget is shared out across
layers by importance while training (peft.AdaLoraConfig).

Its schedule is in optimizer steps, so it needs the run's total step count, and its
budget allocation must run after every optimizer step while the gradients are still
there: that is this method's ``after_step`` hook. The published adapter carries the
final ``rank_pattern``; peft drops the pruned ranks on saving and restores the layout
on loading.
"""

from __future__ import annotations

from typing import Any

from finetune_api.config import AdaLoraSpec
from finetune_trainer.errors import ConfigError
from finetune_trainer.methods import Method, MethodContext, register
from finetune_trainer.methods.common import peft_task_type, wrap_peft


def adalora_config(options: AdaLoraSpec, ctx: MethodContext) -> Any:
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


def apply_adalora(model: Any, options: AdaLoraSpec, ctx: MethodContext) -> Any:
    model = wrap_peft(model, adalora_config(options, ctx), "adalora")
    # peft upcasts bf16/fp16 adapter tensors to fp32 by re-assigning them into their
    # ParameterDict, which turns the fixed rank count (the scale's denominator, never
    # saved) into a trainable parameter; the optimizer would then move the scale.
    for name, param in model.named_parameters():
        if ".ranknum." in name:
            param.requires_grad_(False)
    return model


def reallocate_ranks(model: Any, step: int) -> None:
    """Update importance scores and mask ranks to the step's budget (peft's
    ``update_and_allocate``, which must see this step's gradients)."""
    model.base_model.update_and_allocate(step)


def orthogonal_regularization(model: Any) -> Any:
    """``orth_reg_weight`` x the mean ||PP^T - I||_F over the adapter's P and Q factors:
    what peft's AdaLoraModel.forward adds to a loss the model computes itself."""
    import torch

    tuner = getattr(model, "module", model).base_model  # through DDP, then the PeftModel
    adapter = tuner.trainable_adapter_name
    weight = tuner.peft_config[adapter].orth_reg_weight
    norms = [
        torch.linalg.matrix_norm(
            (cov := p @ p.T if "lora_A" in name else p.T @ p)
            - torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)
        )
        for name, p in tuner.model.named_parameters()
        if ("lora_A" in name or "lora_B" in name) and adapter in name
    ]
    return weight * torch.stack(norms).mean() if norms else 0.0


register(
    Method(
        name="adalora",
        apply=apply_adalora,
        after_step=reallocate_ranks,
        loss_term=orthogonal_regularization,
    )
)
