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
from finetune_trainer.config.training import LOWER_IS_BETTER, EarlyStoppingSpec
from finetune_trainer.data.batching import collate, count_label_tokens, length_grouped_batches
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.losses import LossFn, causal_lm_loss
from finetune_trainer.optim import make_optimizer, make_scheduler


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
    samples: int
    """Training examples (packed sequences count as one) consumed so far."""


@dataclass
class TrainResult:
    steps: int
    train_loss: float
    tokens: int
    seconds: float
    samples: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    eval_history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    best_step: int | None = None

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


def _no_report(report: StepReport) -> None:
    return None


class EarlyStopper:
    """Tracks an evaluation metric; says when it improved and when patience ran out."""

    def __init__(self, spec: EarlyStoppingSpec) -> None:
        self.spec = spec
        self.lower_is_better = spec.metric in LOWER_IS_BETTER
        self.best: float | None = None
        self.best_step = 0
        self.bad_evaluations = 0

    def update(self, value: float, step: int) -> bool:
        """Record ``value``; True when it is the best so far (by at least minDelta)."""
        if self.best is None:
            improved = True
        else:
            gain = self.best - value if self.lower_is_better else value - self.best
            improved = gain > self.spec.min_delta
        if improved:
            self.best, self.best_step, self.bad_evaluations = value, step, 0
            return True
        self.bad_evaluations += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.bad_evaluations >= self.spec.patience


@dataclass
class TrainHooks:
    """How a run customises the loop; every field has a plain default."""

    param_groups: list[dict[str, Any]] | None = None
    """Optimizer groups (default: everything that requires a gradient)."""
    after_step: Callable[[Any, int], None] | None = None
    """Runs after each optimizer step, before gradients are cleared (AdaLoRA)."""
    on_step: Callable[[StepReport], None] = _no_report
    compute_loss: LossFn = causal_lm_loss
    step_weight: Callable[[list[TokenizedExample]], int] = count_label_tokens
    """The units a step's loss is averaged over (label tokens for language models)."""
    evaluate: Callable[[Any], dict[str, float]] | None = None
    """Periodic evaluation (``evaluation.everySteps``), on the unwrapped model."""
    eval_every: int | None = None
    early_stopping: EarlyStoppingSpec | None = None


def count_input_tokens(examples: list[TokenizedExample]) -> int:
    """Real (non-padding) tokens the model processed: the tokens/s numerator."""
    return sum(len(e.input_ids) for e in examples)


def _snapshot(model: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _restore(model: Any, snapshot: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in snapshot:
                param.copy_(snapshot[name])


def train(
    model: Any,
    examples: list[TokenizedExample],
    spec: TrainingSpec,
    *,
    pad_id: int,
    accelerator: Any,
    hooks: TrainHooks | None = None,
) -> TrainResult:
    """Run ``total_steps`` optimizer steps over ``examples``; return what happened.

    With early stopping, training ends once the metric has not improved for
    ``patience`` evaluations, and the best weights seen are restored before returning.
    """
    hooks = hooks or TrainHooks()
    steps = total_steps(len(examples), spec)
    groups = hooks.param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    params = [p for group in groups for p in group["params"]]
    optimizer = make_optimizer(groups, spec)
    # The scheduler is stepped by hand: accelerate's wrapper would step it once per
    # process, which is right for its dataloaders but not for our per-step count.
    scheduler = make_scheduler(optimizer, spec, steps)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    stopper = EarlyStopper(hooks.early_stopping) if hooks.early_stopping else None
    best: dict[str, torch.Tensor] | None = None

    step_groups = _step_groups(examples, spec)
    result = TrainResult(steps=0, train_loss=float("nan"), tokens=0, seconds=0.0)
    started = time.perf_counter()
    for step in range(1, steps + 1):
        epoch, micro_batches = next(step_groups)
        weight = max(1, hooks.step_weight([e for mb in micro_batches for e in mb]))
        loss_sum = 0.0
        for i, micro in enumerate(micro_batches):
            batch = {k: v.to(accelerator.device) for k, v in collate(micro, pad_id).items()}
            last = i == len(micro_batches) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                loss = hooks.compute_loss(model, batch, weight)
                accelerator.backward(loss)
            loss_sum += loss.item()
            result.tokens += count_input_tokens(micro)
            result.samples += len(micro)
        grad_norm = None
        if spec.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, spec.max_grad_norm))
        optimizer.step()
        scheduler.step()
        if hooks.after_step is not None:
            hooks.after_step(accelerator.unwrap_model(model), step)
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
        hooks.on_step(
            StepReport(
                step=step,
                total_steps=steps,
                epoch=epoch,
                loss=loss_sum,
                learning_rate=learning_rate,
                tokens_per_second=result.tokens_per_second,
                eta_seconds=result.seconds / step * (steps - step),
                grad_norm=grad_norm,
                samples=result.samples,
            )
        )
        if hooks.evaluate is None or not hooks.eval_every or step % hooks.eval_every:
            continue
        scores = hooks.evaluate(accelerator.unwrap_model(model))
        model.train()
        result.eval_history.append({"step": step, **scores})
        if stopper is None:
            continue
        if stopper.update(scores[stopper.spec.metric], step):
            best = _snapshot(accelerator.unwrap_model(model))
        elif stopper.should_stop:
            result.stopped_early = True
            break
    if best is not None and stopper is not None and stopper.best_step != result.steps:
        _restore(accelerator.unwrap_model(model), best)
    if stopper is not None:
        result.best_step = stopper.best_step
    model.eval()
    return result
