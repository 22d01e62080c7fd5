"""The training loop, on accelerate.

Written out rather than delegated to ``transformers.Trainer`` so that what matters to
an operator is explicit: exact token-weighted loss under gradient accumulation (the
loss of a step is the sum over its micro-batches of summed token losses divided by the
step's label-token count, so long and short examples weigh the same however they are
batched), clipping, warmup + decay, seeded order, throughput and ETA for the status.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch

from finetune_trainer.config import TrainingSpec
from finetune_trainer.data.batching import collate, count_label_tokens, length_grouped_batches
from finetune_trainer.data.tokenize import TokenizedExample


@dataclass(frozen=True)
class StepReport:
    """What the loop knows after an optimizer step; sent to progress reporters."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    eta_seconds: float
    grad_norm: float | None


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    tokens: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def steps_per_epoch(n_examples: int, spec: TrainingSpec) -> int:
    batches = math.ceil(n_examples / spec.batch_size)
    return max(1, math.ceil(batches / spec.gradient_accumulation))


def total_steps(n_examples: int, spec: TrainingSpec) -> int:
    if spec.max_steps is not None:
        return spec.max_steps
    return spec.epochs * steps_per_epoch(n_examples, spec)


def _step_groups(
    examples: list[TokenizedExample], spec: TrainingSpec
) -> Iterator[tuple[float, list[list[TokenizedExample]]]]:
    """Endless (epoch, micro-batches of one optimizer step); a new order every epoch."""
    lengths = [len(e.input_ids) for e in examples]
    epoch = 0
    while True:
        batches = length_grouped_batches(lengths, spec.batch_size, seed=spec.seed + epoch)
        per_epoch = math.ceil(len(batches) / spec.gradient_accumulation)
        for k in range(per_epoch):
            group = batches[k * spec.gradient_accumulation : (k + 1) * spec.gradient_accumulation]
            yield epoch + (k + 1) / per_epoch, [[examples[i] for i in b] for b in group]
        epoch += 1


def make_scheduler(optimizer: Any, spec: TrainingSpec, steps: int) -> Any:
    from transformers import get_scheduler

    name = "constant_with_warmup" if spec.scheduler == "constant" else spec.scheduler
    return get_scheduler(
        name,
        optimizer,
        num_warmup_steps=round(spec.warmup_ratio * steps),
        num_training_steps=steps,
    )


def _no_report(report: StepReport) -> None:
    return None


def train(
    model: Any,
    examples: list[TokenizedExample],
    spec: TrainingSpec,
    *,
    pad_id: int,
    accelerator: Any,
    param_groups: list[dict[str, Any]] | None = None,
    after_step: Callable[[Any, int], None] | None = None,
    on_step: Callable[[StepReport], None] = _no_report,
) -> TrainResult:
    """Run ``total_steps`` optimizer steps over ``examples``; return what happened.

    ``param_groups`` (default: everything that requires a gradient, at the spec's
    learning rate) lets a method train groups at different rates; ``after_step`` runs
    after every optimizer step, before gradients are cleared (AdaLoRA needs them).
    """
    steps = total_steps(len(examples), spec)
    if param_groups is None:
        param_groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    params = [p for group in param_groups for p in group["params"]]
    optimizer = torch.optim.AdamW(
        param_groups, lr=spec.learning_rate, weight_decay=spec.weight_decay
    )
    # The scheduler is stepped by hand: accelerate's wrapper would step it once per
    # process, which is right for its dataloaders but not for our per-step count.
    scheduler = make_scheduler(optimizer, spec, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()

    groups = _step_groups(examples, spec)
    result = TrainResult(steps=0, train_loss=float("nan"), tokens=0, seconds=0.0)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        epoch, micro_batches = next(groups)
        n_label_tokens = count_label_tokens([e for mb in micro_batches for e in mb])
        loss_sum = 0.0
        for i, micro in enumerate(micro_batches):
            batch = {k: v.to(accelerator.device) for k, v in collate(micro, pad_id).items()}
            last = i == len(micro_batches) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                loss = model(**batch, num_items_in_batch=n_label_tokens).loss
                accelerator.backward(loss)
            loss_sum += loss.item()
            result.tokens += int(batch["attention_mask"].sum())
        grad_norm = None
        if spec.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, spec.max_grad_norm))
        optimizer.step()
        scheduler.step()
        if after_step is not None:
            after_step(accelerator.unwrap_model(model), step)
        optimizer.zero_grad(set_to_none=True)

        result.seconds = time.perf_counter() - started
        result.steps, result.train_loss = step, loss_sum
        learning_rate = scheduler.get_last_lr()[0]
        result.history.append(
            {
                "step": step,
                "epoch": round(epoch, 4),
                "loss": loss_sum,
                "learningRate": learning_rate,
            }
        )
        on_step(
            StepReport(
                step=step,
                total_steps=steps,
                epoch=epoch,
                loss=loss_sum,
                learning_rate=learning_rate,
                tokens_per_second=result.tokens_per_second,
                eta_seconds=result.seconds / step * (steps - step),
                grad_norm=grad_norm,
            )
        )
    model.eval()
    return result
