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

from finetune_api.config import TrainingSpec
from finetune_api.config.training import LOWER_IS_BETTER, EarlyStoppingSpec
from finetune_trainer.data.batching import collate, count_label_tokens, length_grouped_batches
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.distributed import is_sharded, rebuild_optimizer_state
from finetune_trainer.errors import Preempted
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


def steps_per_epoch(n_examples: int, spec: TrainingSpec, world_size: int = 1) -> int:
    batches = math.ceil(n_examples / spec.batch_size)
    return max(1, math.ceil(batches / (spec.gradient_accumulation * world_size)))


def total_steps(n_examples: int, spec: TrainingSpec, world_size: int = 1) -> int:
    if spec.max_steps is not None:
        return spec.max_steps
    return spec.epochs * steps_per_epoch(n_examples, spec, world_size)


@dataclass(frozen=True)
class StepGroup:
    """The micro-batches of one optimizer step, for every rank."""

    epoch: float
    end_of_epoch: bool
    per_rank: list[list[list[TokenizedExample]]]
    """``per_rank[r]``: rank r's micro-batches (possibly none at the end of an epoch)."""

    def all_examples(self) -> list[TokenizedExample]:
        return [e for rank in self.per_rank for mb in rank for e in mb]


def step_groups(
    examples: list[TokenizedExample], spec: TrainingSpec, world_size: int = 1
) -> Iterator[StepGroup]:
    """Endless optimizer steps; a new seeded order every epoch.

    Every rank computes the same sequence (same seed), so each knows the whole step: it
    trains on its own share (batches ``r, r + world, ...`` of the step) and normalises
    by the label tokens of all shares. Resuming is skipping the steps already taken.
    """
    lengths = [len(e.input_ids) for e in examples]
    per_step = spec.gradient_accumulation * world_size
    epoch = 0
    while True:
        batches = length_grouped_batches(lengths, spec.batch_size, seed=spec.seed + epoch)
        per_epoch = math.ceil(len(batches) / per_step)
        for k in range(per_epoch):
            group = batches[k * per_step : (k + 1) * per_step]
            yield StepGroup(
                epoch=epoch + (k + 1) / per_epoch,
                end_of_epoch=k == per_epoch - 1,
                per_rank=[
                    [[examples[i] for i in b] for b in group[r::world_size]]
                    for r in range(world_size)
                ],
            )
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
class LoopState:
    """Everything a checkpoint restores besides the objects' own state dicts.

    Plain data (JSON-ready), so a checkpoint never has to unpickle anything to resume.
    """

    step: int
    tokens: int
    samples: int
    seconds: float
    history: list[dict[str, float]]
    eval_history: list[dict[str, float]]
    stopper: dict[str, Any] | None = None
    """EarlyStopper's best value, best step and bad evaluations."""
    carry: dict[str, Any] = field(default_factory=dict)
    """What the caller wants back on resume (e.g. the scores before training)."""


@dataclass
class Resume:
    """A checkpoint loaded into memory, ready to hand to :func:`train`."""

    state: LoopState
    trainable: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    scaler: dict[str, Any] | None = None
    best: dict[str, torch.Tensor] | None = None
    """Early stopping's best weights so far, when they are not the current ones."""
    optimizer_sharded: bool = False
    """``optimizer`` holds this rank's shards of an FSDP optimizer state."""
    restore_rng: Callable[[], None] = field(default=lambda: None)
    """Puts this rank's random generators back where they were; called last."""


@dataclass
class Checkpointable:
    """The live objects a checkpoint is taken from (the model unwrapped)."""

    state: LoopState
    model: Any
    optimizer: Any
    scheduler: Any
    scaler: Any | None
    best: dict[str, torch.Tensor] | None
    end_of_epoch: bool


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
    checkpoint_every: int | None = None
    """Save every this many steps (and always at the end of an epoch) when ``save`` is set."""
    save: Callable[[Checkpointable], None] | None = None
    resume: Resume | None = None
    stop_requested: Callable[[], bool] = lambda: False
    """Polled after every step (SIGTERM): True saves a checkpoint and raises Preempted."""
    carry: dict[str, Any] = field(default_factory=dict)
    """JSON-ready data saved with every checkpoint (``LoopState.carry``)."""


def count_input_tokens(examples: list[TokenizedExample]) -> int:
    """Real (non-padding) tokens the model processed: the tokens/s numerator."""
    return sum(len(e.input_ids) for e in examples)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The parameters being trained, whole, as detached copies on the CPU, by name.

    With a sharded (FSDP) model this gathers every shard: all ranks must call it.
    """
    from finetune_trainer.distributed import full_tensor

    return {
        n: full_tensor(p.detach()).to("cpu", copy=True).contiguous()
        for n, p in model.named_parameters()
        if p.requires_grad
    }


def load_trainable(model: Any, weights: dict[str, torch.Tensor]) -> None:
    """Copy ``weights`` into the model's trainable parameters; every one must be there."""
    from finetune_trainer.distributed import copy_into

    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
    if missing or unexpected:
        raise ValueError(
            f"checkpoint does not fit the model: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            copy_into(param, weights[name])


def _in_optimizer_order(optimizer: Any) -> list[Any]:
    """Parameters in the order the optimizer's state dict numbers them."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def _all_ranks(accelerator: Any, values: list[float]) -> list[float]:
    """Sum ``values`` over ranks (one collective); themselves on a single process."""
    if accelerator.num_processes == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return [float(v) for v in accelerator.reduce(tensor, reduction="sum")]


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

    With ``hooks.resume`` the run continues where a checkpoint left it: weights,
    optimizer, scheduler, scaler, position in the data and random generators. With
    early stopping, training ends once the metric has not improved for ``patience``
    evaluations, and the best weights seen are restored before returning.
    """
    hooks = hooks or TrainHooks()
    world, rank = accelerator.num_processes, accelerator.process_index
    steps = total_steps(len(examples), spec, world)
    resume = hooks.resume
    if resume is not None:
        load_trainable(model, resume.trainable)
    groups = hooks.param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    params = [p for group in groups for p in group["params"]]
    optimizer = make_optimizer(groups, spec)
    # The scheduler is stepped by hand: accelerate's wrapper would step it once per
    # process, which is right for its dataloaders but not for our per-step count.
    scheduler = make_scheduler(optimizer, spec, steps)
    if is_sharded(model):
        optimizer = accelerator.prepare(optimizer)  # FSDP: the model is already distributed
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    scaler = getattr(accelerator, "scaler", None)
    stopper = EarlyStopper(hooks.early_stopping) if hooks.early_stopping else None
    best: dict[str, torch.Tensor] | None = None
    result = TrainResult(steps=0, train_loss=float("nan"), tokens=0, seconds=0.0)
    groups_iter = step_groups(examples, spec, world)
    first = 1
    if resume is not None:
        saved = resume.optimizer
        optimizer.load_state_dict(
            rebuild_optimizer_state(saved, _in_optimizer_order(optimizer))
            if resume.optimizer_sharded
            else saved
        )
        scheduler.load_state_dict(resume.scheduler)
        if scaler is not None and resume.scaler is not None:
            scaler.load_state_dict(resume.scaler)
        state = resume.state
        result.tokens, result.samples, result.seconds = state.tokens, state.samples, state.seconds
        result.history, result.eval_history = list(state.history), list(state.eval_history)
        result.steps = state.step
        if stopper is not None and state.stopper is not None:
            stopper.best = state.stopper["best"]
            stopper.best_step = state.stopper["bestStep"]
            stopper.bad_evaluations = state.stopper["badEvaluations"]
        best = resume.best
        if best is None and stopper is not None and stopper.best_step == state.step:
            best = resume.trainable  # the checkpoint's own weights were the best
        for _ in range(state.step):
            next(groups_iter)
        first = state.step + 1
        resume.restore_rng()
    model.train()

    def checkpointable(step: int, end_of_epoch: bool) -> Checkpointable:
        return Checkpointable(
            state=LoopState(
                step=step,
                tokens=result.tokens,
                samples=result.samples,
                seconds=result.seconds,
                history=result.history,
                eval_history=result.eval_history,
                carry=hooks.carry,
                stopper=None
                if stopper is None
                else {
                    "best": stopper.best,
                    "bestStep": stopper.best_step,
                    "badEvaluations": stopper.bad_evaluations,
                },
            ),
            model=accelerator.unwrap_model(model),
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            # The best weights travel only when they are not the checkpoint's own.
            best=best if stopper is not None and stopper.best_step != step else None,
            end_of_epoch=end_of_epoch,
        )

    session_start, seconds_before = time.perf_counter(), result.seconds
    for step in range(first, steps + 1):
        group = next(groups_iter)
        weight = max(1, hooks.step_weight(group.all_examples()))
        mine, factor = group.per_rank[rank], float(world)
        if not mine:
            # The epoch's last step can leave a rank without a batch; it still has to join
            # the gradient all-reduce, so it runs someone's batch with a weight of zero.
            mine, factor = group.per_rank[0][:1], 0.0
        loss_sum, tokens, samples = 0.0, 0, 0
        for i, micro in enumerate(mine):
            batch = {k: v.to(accelerator.device) for k, v in collate(micro, pad_id).items()}
            last = i == len(mine) - 1
            with nullcontext() if last else accelerator.no_sync(model):
                loss = hooks.compute_loss(model, batch, weight)
                # DDP averages gradients over ranks; scaled by the world size, each rank's
                # share of the step's token sum adds up to the step's loss.
                accelerator.backward(loss if world == 1 else loss * factor)
            if factor:
                loss_sum += loss.item()
                tokens += count_input_tokens(micro)
                samples += len(micro)
        grad_norm = None
        if spec.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(params, spec.max_grad_norm))
        optimizer.step()
        scheduler.step()
        if hooks.after_step is not None:
            hooks.after_step(accelerator.unwrap_model(model), step)
        optimizer.zero_grad(set_to_none=True)

        stop_requested = hooks.stop_requested()
        loss_sum, tokens_all, samples_all, stop_votes = _all_ranks(
            accelerator, [loss_sum, tokens, samples, float(stop_requested)]
        )
        result.tokens += int(tokens_all)
        result.samples += int(samples_all)
        result.seconds = seconds_before + time.perf_counter() - session_start
        result.steps, result.train_loss = step, loss_sum
        learning_rate = scheduler.get_last_lr()[0]
        result.history.append(
            {
                "step": step,
                "epoch": round(group.epoch, 4),
                "loss": loss_sum,
                "learningRate": learning_rate,
            }
        )
        elapsed = time.perf_counter() - session_start
        hooks.on_step(
            StepReport(
                step=step,
                total_steps=steps,
                epoch=group.epoch,
                loss=loss_sum,
                learning_rate=learning_rate,
                tokens_per_second=result.tokens_per_second,
                eta_seconds=elapsed / (step - first + 1) * (steps - step),
                grad_norm=grad_norm,
                samples=result.samples,
            )
        )
        stopping = False
        if hooks.evaluate is not None and hooks.eval_every and step % hooks.eval_every == 0:
            scores = hooks.evaluate(accelerator.unwrap_model(model))
            model.train()
            result.eval_history.append({"step": step, **scores})
            if stopper is not None and stopper.update(scores[stopper.spec.metric], step):
                best = trainable_state(accelerator.unwrap_model(model))
            stopping = stopper is not None and stopper.should_stop
            result.stopped_early = stopping
        due = hooks.checkpoint_every is not None and step % hooks.checkpoint_every == 0
        last = step == steps or stopping
        if hooks.save is not None and (due or last or group.end_of_epoch or stop_votes > 0):
            hooks.save(checkpointable(step, group.end_of_epoch))
        if stop_votes > 0 and step < steps and not stopping:
            raise Preempted(
                f"stopped at step {step} on SIGTERM; checkpoint {step} holds the progress"
            )
        if stopping:
            break
    if stopper is not None:
        result.best_step = stopper.best_step
        if best is not None and stopper.best_step != result.steps:
            load_trainable(accelerator.unwrap_model(model), best)
    model.eval()
    return result
