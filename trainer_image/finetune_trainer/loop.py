"""The training loop, on accelerate.

Written out rather than delegated to ``transformers.Trainer`` so that what matters to
an operator is explicit: exact token-weighted loss under gradient accumulation (the
loss of a step is the sum over its micro-batches of summed token losses divided by the
step's label-token count, so long and short examples weigh the same however they are
batched), clipping, warmup + decay, seeded order, throughput and ETA for the status.

The loop body only sequences the parts, each a function of its own: one optimizer step
(:func:`optimizer_step`), its record and report (:func:`record_step`), the periodic
evaluation with early stopping (:func:`periodic_evaluation`), and the checkpoint
decision (:func:`checkpoint_due`). What the loop needs to start, the optimizer prepared
with the model, is :func:`prepare_optimization`, which a recipe calls as one of its
setup steps and :func:`train` calls itself when given none.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from finetune_api.config import TrainingSpec
from finetune_api.config.training import LOWER_IS_BETTER, EarlyStoppingSpec
from finetune_trainer.data.batching import collate, count_label_tokens
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.distributed import is_sharded, rebuild_optimizer_state
from finetune_trainer.errors import Preempted
from finetune_trainer.losses import LossFn, causal_lm_loss
from finetune_trainer.optim import ParamGroup, Schedule, make_optimizer, make_scheduler
from finetune_trainer.state import (
    Checkpointable,
    LoopState,
    Resume,
    StepReport,
    TrainResult,
    Weights,
    load_trainable,
    trainable_state,
)
from finetune_trainer.steps import (
    MicroBatch,
    StepGroup,
    count_input_tokens,
    step_groups,
    steps_per_epoch,
    total_steps,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "Checkpointable",
    "EarlyStopper",
    "LoopState",
    "Optimization",
    "Resume",
    "StepGroup",
    "StepReport",
    "StepTotals",
    "TrainHooks",
    "TrainResult",
    "checkpoint_due",
    "count_input_tokens",
    "load_trainable",
    "optimizer_step",
    "periodic_evaluation",
    "prepare_optimization",
    "record_step",
    "step_groups",
    "steps_per_epoch",
    "total_steps",
    "train",
    "trainable_state",
]


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

    def saved(self) -> dict[str, Any]:
        """Its state as a checkpoint's ``LoopState.stopper`` holds it (JSON, camelCase)."""
        return {
            "best": self.best,
            "bestStep": self.best_step,
            "badEvaluations": self.bad_evaluations,
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """Continue from :meth:`saved`'s output."""
        self.best = saved["best"]
        self.best_step = saved["bestStep"]
        self.bad_evaluations = saved["badEvaluations"]


def _no_report(report: StepReport) -> None:
    return None


@dataclass
class TrainHooks:
    """How a run customises the loop; every field has a plain default."""

    param_groups: list[ParamGroup] | None = None
    """Optimizer groups (default: everything that requires a gradient)."""
    after_step: Callable[[torch.nn.Module, int], None] | None = None
    """Runs after each optimizer step, before gradients are cleared (AdaLoRA)."""
    on_step: Callable[[StepReport], None] = _no_report
    compute_loss: LossFn = causal_lm_loss
    step_weight: Callable[[list[TokenizedExample]], int] = count_label_tokens
    """The units a step's loss is averaged over (label tokens for language models)."""
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None
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
    step_metrics: Callable[[], dict[str, float]] | None = None
    """The loss's own numbers of the step just taken (reinforcement's rewards), called
    once per step after its micro-batches; they go into the history, the StepReport,
    the JSON progress line and the gauges."""


# --------------------------------------------------------------------------- optimizer


@dataclass(frozen=True)
class Optimization:
    """What the loop steps: the optimizer, its schedule, and the model prepared with them."""

    model: torch.nn.Module
    """The model as the loop runs it: wrapped by accelerate (DistributedDataParallel when
    the world has several processes), or as it was when already sharded (FSDP)."""
    optimizer: torch.optim.Optimizer
    scheduler: Schedule
    """Stepped by hand once per optimizer step: accelerate's wrapper would step it once
    per process, which is right for its dataloaders but not for our per-step count."""
    scaler: torch.amp.GradScaler | None
    """fp16's gradient scaler (accelerate's), else None."""
    params: list[torch.nn.Parameter]
    """Every parameter the optimizer updates, in group order: what clipping measures."""


def prepare_optimization(
    model: torch.nn.Module,
    groups: list[ParamGroup],
    spec: TrainingSpec,
    steps: int,
    accelerator: Accelerator,
    resume: Resume | None = None,
) -> Optimization:
    """An optimizer over ``groups`` scheduled for ``steps`` steps, prepared with ``model``.

    With ``resume``, the checkpoint's trainable weights go into the model before the
    optimizer is built over them, and its optimizer, scheduler and scaler states once
    accelerate has prepared them (a sharded optimizer state needs the sharded params).
    """
    if resume is not None:
        load_trainable(model, resume.trainable)
    params = [p for group in groups for p in group["params"]]
    optimizer = make_optimizer(groups, spec)
    scheduler = make_scheduler(optimizer, spec, steps)
    if is_sharded(model):
        optimizer = accelerator.prepare(optimizer)  # FSDP: the model is already distributed
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
    scaler: torch.amp.GradScaler | None = getattr(accelerator, "scaler", None)
    if resume is not None:
        _restore_optimization(optimizer, scheduler, scaler, resume)
    return Optimization(model, optimizer, scheduler, scaler, params)


def _restore_optimization(
    optimizer: torch.optim.Optimizer,
    scheduler: Schedule,
    scaler: torch.amp.GradScaler | None,
    resume: Resume,
) -> None:
    """Put a checkpoint's optimizer, scheduler and scaler states back."""
    saved = resume.optimizer
    if resume.optimizer_sharded:
        saved = rebuild_optimizer_state(saved, _in_optimizer_order(optimizer))
    optimizer.load_state_dict(saved)
    scheduler.load_state_dict(resume.scheduler)
    if scaler is not None and resume.scaler is not None:
        scaler.load_state_dict(resume.scaler)


def _in_optimizer_order(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters in the order the optimizer's state dict numbers them."""
    return [p for group in optimizer.param_groups for p in group["params"]]


# --------------------------------------------------------------------------- the loop


@dataclass
class _Loop:
    """What every part of the loop reads, and the progress it carries from step to step."""

    optimization: Optimization
    model: torch.nn.Module
    """The model unwrapped: what hooks, evaluation and checkpoints see."""
    accelerator: Accelerator
    hooks: TrainHooks
    spec: TrainingSpec
    pad_id: int
    steps: int
    result: TrainResult
    stopper: EarlyStopper | None
    best: Weights | None = None
    """Early stopping's best weights, when taken after the last checkpoint that held them."""


def train(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    spec: TrainingSpec,
    *,
    pad_id: int,
    accelerator: Accelerator,
    hooks: TrainHooks | None = None,
    optimization: Optimization | None = None,
    plan: Iterator[StepGroup] | None = None,
) -> TrainResult:
    """Run ``total_steps`` optimizer steps over ``examples``; return what happened.

    ``optimization`` is the optimizer already prepared with ``model`` (a recipe's setup
    step); without it the loop prepares its own over ``hooks.param_groups``. With
    ``hooks.resume`` the run continues where a checkpoint left it: weights, optimizer,
    scheduler and scaler (restored by :func:`prepare_optimization`), position in the
    data and random generators. With early stopping, training ends once the metric has
    not improved for ``patience`` evaluations, and the best weights seen are restored
    before returning.

    ``plan``: the steps from a stream (``dataset.streaming``), already at the resumed
    position (the stream's state comes back with the checkpoint), so not skipped.
    """
    hooks = hooks or TrainHooks()
    steps = total_steps(len(examples), spec, accelerator.num_processes)
    if optimization is None:
        groups = hooks.param_groups or [
            {"params": [p for p in model.parameters() if p.requires_grad]}
        ]
        optimization = prepare_optimization(model, groups, spec, steps, accelerator, hooks.resume)
    loop = _Loop(
        optimization=optimization,
        model=accelerator.unwrap_model(optimization.model),
        accelerator=accelerator,
        hooks=hooks,
        spec=spec,
        pad_id=pad_id,
        steps=steps,
        result=TrainResult(steps=0, train_loss=float("nan"), tokens=0, seconds=0.0),
        stopper=EarlyStopper(hooks.early_stopping) if hooks.early_stopping else None,
    )
    positioned = plan is not None
    plan = plan or step_groups(examples, spec, accelerator.num_processes)
    first = _resume_progress(loop, plan, skip=not positioned)
    optimization.model.train()
    clock = _Clock(first, loop.result.seconds)
    for step in range(first, steps + 1):
        group = next(plan)
        totals = optimizer_step(loop, group, step)
        record_step(loop, step, group, totals, clock)
        stopping = periodic_evaluation(loop, step)
        if hooks.save is not None and checkpoint_due(
            hooks.checkpoint_every, step, steps, group.end_of_epoch, stopping, totals.stop_requested
        ):
            hooks.save(_checkpointable(loop, step, group.end_of_epoch))
        if totals.stop_requested and step < steps and not stopping:
            raise Preempted(
                f"stopped at step {step} on SIGTERM; checkpoint {step} holds the progress"
            )
        if stopping:
            break
    _keep_best(loop)
    optimization.model.eval()
    return loop.result


def _resume_progress(loop: _Loop, plan: Iterator[StepGroup], *, skip: bool = True) -> int:
    """Continue a checkpoint's progress (history, counters, early stopping, position in
    the data, random generators last); return the first step to take."""
    resume = loop.hooks.resume
    if resume is None:
        return 1
    state, result, stopper = resume.state, loop.result, loop.stopper
    result.tokens, result.samples, result.seconds = state.tokens, state.samples, state.seconds
    result.history, result.eval_history = list(state.history), list(state.eval_history)
    result.steps = result.resumed_from = state.step
    if stopper is not None and state.stopper is not None:
        stopper.restore(state.stopper)
        result.stopped_early = stopper.should_stop
    loop.best = resume.best
    if loop.best is None and stopper is not None and stopper.best_step == state.step:
        loop.best = resume.trainable  # the checkpoint's own weights were the best
    for _ in range(state.step if skip else 0):
        next(plan)
    resume.restore_rng()
    # A run that stopped early ended at this checkpoint: it does not train on past it.
    return loop.steps + 1 if result.stopped_early else state.step + 1


class _Clock:
    """Training time across attempts, and the ETA from this attempt's mean step time."""

    def __init__(self, first_step: int, seconds_before: float) -> None:
        self.first_step = first_step
        self.seconds_before = seconds_before
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds of this attempt so far."""
        return time.perf_counter() - self.started

    def eta(self, step: int, steps: int) -> float:
        return self.elapsed() / (step - self.first_step + 1) * (steps - step)


@dataclass(frozen=True)
class StepTotals:
    """One optimizer step's numbers, summed over every rank."""

    loss: float
    tokens: int
    samples: int
    grad_norm: float | None
    stop_requested: bool
    """Some rank was asked to stop (SIGTERM): every rank then saves and stops together."""
    extras: Mapping[str, float] = field(default_factory=dict)
    """``hooks.step_metrics``' numbers, averaged over the ranks."""


def optimizer_step(loop: _Loop, group: StepGroup, step: int) -> StepTotals:
    """Forward and backward over this rank's micro-batches of ``group``, then one update.

    The step's loss is normalised by the units of the whole step (every rank's share),
    and a rank's numbers are summed with the others' in one collective.
    """
    weight = max(1, loop.hooks.step_weight(group.all_examples()))
    rank, world = loop.accelerator.process_index, loop.accelerator.num_processes
    mine, factor = group.per_rank[rank], float(world)
    if not mine:
        # The epoch's last step can leave a rank without a batch; it still has to join
        # the gradient all-reduce, so it runs someone's batch with a weight of zero.
        mine, factor = group.per_rank[0][:1], 0.0
    loss, tokens, samples = _accumulate_gradients(loop, mine, weight, factor)
    grad_norm = _update(loop, step)
    stop_requested = loop.hooks.stop_requested()
    loss_all, tokens_all, samples_all, stop_votes = _all_ranks(
        loop.accelerator, [loss, tokens, samples, float(stop_requested)]
    )
    return StepTotals(
        loss_all, int(tokens_all), int(samples_all), grad_norm, stop_votes > 0, _extras(loop)
    )


def _extras(loop: _Loop) -> dict[str, float]:
    """The loss's numbers for this step, each the mean of the ranks' (every rank has the
    same names: they come from the same configuration)."""
    if loop.hooks.step_metrics is None:
        return {}
    mine = loop.hooks.step_metrics()
    names = sorted(mine)
    world = loop.accelerator.num_processes
    summed = _all_ranks(loop.accelerator, [mine[n] for n in names]) if names else []
    return {n: v / world for n, v in zip(names, summed, strict=True)}


def _accumulate_gradients(
    loop: _Loop, micro_batches: list[MicroBatch], weight: int, factor: float
) -> tuple[float, int, int]:
    """Backward over each micro-batch (gradients synchronised on the last only); return
    this rank's loss, input tokens and examples (zero for a stand-in batch)."""
    accelerator, model = loop.accelerator, loop.optimization.model
    world = accelerator.num_processes
    loss_sum, tokens, samples = 0.0, 0, 0
    for i, micro in enumerate(micro_batches):
        batch = {k: v.to(accelerator.device) for k, v in collate(micro, loop.pad_id).items()}
        last = i == len(micro_batches) - 1
        with nullcontext() if last else accelerator.no_sync(model):
            loss = loop.hooks.compute_loss(model, batch, weight)
            # DDP averages gradients over ranks; scaled by the world size, each rank's
            # share of the step's token sum adds up to the step's loss.
            accelerator.backward(loss if world == 1 else loss * factor)
        if factor:
            loss_sum += loss.item()
            tokens += count_input_tokens(micro)
            samples += len(micro)
    return loss_sum, tokens, samples


def _update(loop: _Loop, step: int) -> float | None:
    """Clip, step the optimizer and the schedule, run the method's after-step, clear the
    gradients; return the gradient norm before clipping (None when not clipping)."""
    opt, spec = loop.optimization, loop.spec
    grad_norm = None
    if spec.max_grad_norm > 0:
        grad_norm = float(loop.accelerator.clip_grad_norm_(opt.params, spec.max_grad_norm))
    opt.optimizer.step()
    opt.scheduler.step()
    if loop.hooks.after_step is not None:
        loop.hooks.after_step(loop.model, step)
    opt.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def _all_ranks(accelerator: Accelerator, values: list[float]) -> list[float]:
    """Sum ``values`` over ranks (one collective); themselves on a single process."""
    if accelerator.num_processes == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return [float(v) for v in accelerator.reduce(tensor, reduction="sum")]


def record_step(
    loop: _Loop, step: int, group: StepGroup, totals: StepTotals, clock: _Clock
) -> None:
    """Add the step to the result and its history, and report it (``hooks.on_step``)."""
    result = loop.result
    result.tokens += totals.tokens
    result.samples += totals.samples
    result.seconds = clock.seconds_before + clock.elapsed()
    result.steps, result.train_loss = step, totals.loss
    learning_rate = loop.optimization.scheduler.get_last_lr()[0]
    result.history.append(
        {
            "step": step,
            "epoch": round(group.epoch, 4),
            "loss": totals.loss,
            "learningRate": learning_rate,
            **totals.extras,
        }
    )
    loop.hooks.on_step(
        StepReport(
            step=step,
            total_steps=loop.steps,
            epoch=group.epoch,
            loss=totals.loss,
            learning_rate=learning_rate,
            tokens_per_second=result.tokens_per_second,
            eta_seconds=clock.eta(step, loop.steps),
            grad_norm=totals.grad_norm,
            samples=result.samples,
            extras=totals.extras,
        )
    )


def periodic_evaluation(loop: _Loop, step: int) -> bool:
    """Evaluate when ``evaluation.everySteps`` says so, and track early stopping; return
    whether the run stops here. The best weights are kept when the metric improves."""
    hooks = loop.hooks
    if hooks.evaluate is None or not hooks.eval_every or step % hooks.eval_every != 0:
        return False
    scores = hooks.evaluate(loop.model)
    loop.optimization.model.train()
    loop.result.eval_history.append({"step": step, **scores})
    stopper = loop.stopper
    if stopper is None:
        return False
    if stopper.update(scores[stopper.spec.metric], step):
        loop.best = trainable_state(loop.model)
    loop.result.stopped_early = stopper.should_stop
    return stopper.should_stop


def checkpoint_due(
    every: int | None,
    step: int,
    steps: int,
    end_of_epoch: bool,
    stopping: bool,
    stop_requested: bool,
) -> bool:
    """Whether to save after ``step``: every ``every`` steps (``output.checkpointEvery``),
    at the end of an epoch, at the last step or the early stop, and when asked to stop
    (SIGTERM), so that no more than ``every`` steps, and never an epoch, can be lost."""
    due = every is not None and step % every == 0
    return due or step == steps or stopping or end_of_epoch or stop_requested


def _checkpointable(loop: _Loop, step: int, end_of_epoch: bool) -> Checkpointable:
    """The loop's live objects and progress after ``step``, for ``hooks.save``."""
    result, stopper, opt = loop.result, loop.stopper, loop.optimization
    return Checkpointable(
        state=LoopState(
            step=step,
            tokens=result.tokens,
            samples=result.samples,
            seconds=result.seconds,
            history=result.history,
            eval_history=result.eval_history,
            carry=loop.hooks.carry,
            stopper=None if stopper is None else stopper.saved(),
        ),
        model=loop.model,
        optimizer=opt.optimizer,
        scheduler=opt.scheduler,
        scaler=opt.scaler,
        # The best weights travel only when they are not the checkpoint's own.
        best=loop.best if stopper is not None and stopper.best_step != step else None,
        end_of_epoch=end_of_epoch,
    )


def _keep_best(loop: _Loop) -> None:
    """After early stopping's run, the weights of its best evaluation, not the last."""
    stopper = loop.stopper
    if stopper is None:
        return
    loop.result.best_step = stopper.best_step
    if loop.best is not None and stopper.best_step != loop.result.steps:
        load_trainable(loop.model, loop.best)
