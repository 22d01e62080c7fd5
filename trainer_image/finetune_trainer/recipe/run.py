"""The fine-tuning recipe: the setup steps in their order, the loop, the final scores.

:func:`fine_tune` is the whole run but publishing, readable top to bottom; each line is
one step of :mod:`finetune_trainer.recipe.setup`, the loop
(:func:`finetune_trainer.loop.train`) or an evaluation
(:mod:`finetune_trainer.recipe.scoring`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from finetune_api.config import TrainerConfig
from finetune_trainer import loop
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.distributed import full_state_dict, reshard
from finetune_trainer.evaluation import EvalResult, retention_changes
from finetune_trainer.logs import kv
from finetune_trainer.modeling import count_parameters
from finetune_trainer.recipe.scoring import (
    Scorer,
    base_only,
    evaluation_extras,
    pair_evaluation,
)
from finetune_trainer.recipe.setup import (
    Hardware,
    TrainableModel,
    choose_method,
    quiet_libraries,
    setup_base_files,
    setup_base_model,
    setup_checkpoints,
    setup_contrastive,
    setup_data,
    setup_grpo,
    setup_hardware,
    setup_loss,
    setup_method,
    setup_optimizer,
    setup_preference,
    setup_reference,
    setup_reference_logps,
    setup_reporting,
    setup_rewards,
    setup_stream,
)
from finetune_trainer.state import Resume, TrainResult
from finetune_trainer.steps import steps_per_epoch, stream_step_groups, total_steps
from finetune_trainer.tasks import TASKS
from finetune_trainer.telemetry import Telemetry
from finetune_trainer.tracking import NO_TRACKERS, Trackers

if TYPE_CHECKING:
    from collections.abc import Callable

    from transformers import PreTrainedTokenizerBase

    from finetune_trainer.alignment.grpo import GRPOLoss
    from finetune_trainer.alignment.preference import PreferenceLoss
    from finetune_trainer.preemption import StopRequest

log = logging.getLogger("finetune.trainer")

Metrics = dict[str, Any]
"""metrics.json's keys (camelCase, like the FineTuneJob status) and values."""


@dataclass
class TrainedRun:
    """A finished run before publishing: what tests and callers may inspect."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    metrics: Metrics
    validation: Sequence[TokenizedExample]
    main: bool = True
    """Whether this process is rank 0, the one that evaluates and publishes."""
    state_dict: dict[str, Any] | None = None
    """The whole model's weights gathered from an FSDP-sharded model (rank 0)."""


def fine_tune(
    config: TrainerConfig,
    telemetry: Telemetry | None = None,
    *,
    stop: StopRequest | None = None,
    trackers: Trackers = NO_TRACKERS,
) -> TrainedRun:
    """Load, evaluate, train and evaluate again; publishing is the caller's.

    A complete checkpoint of this configuration in the output resumes the run from it;
    ``stop`` (SIGTERM) ends training with a checkpoint and :class:`errors.Preempted`.

    Without ``telemetry`` the run reports nothing but the progress bar (tests, notebooks);
    ``trackers`` (opened by the caller) receive every step and evaluation.
    """
    from accelerate.utils import set_seed

    quiet_libraries()
    wall_start = time.perf_counter()
    set_seed(config.training.seed)
    hardware = setup_hardware(config)
    choice = choose_method(config)
    task = TASKS[config.task]
    # Spec-only rules were checked when the TrainerConfig was parsed (finetune_api.rules).
    log.info(
        "job %s",
        kv(
            name=config.job_name,
            method=choice.method.name,
            device=hardware.compute.device,
            precision=hardware.compute.precision,
        ),
    )
    files = setup_base_files(config)
    data = setup_data(config, files.tokenizer)
    stream = setup_stream(config, files.tokenizer)  # dataset.streaming: the train data
    contrastive = setup_contrastive(config, files, data)
    # After the data: a checkpoint belongs to the content of the model and data too.
    checkpoints = setup_checkpoints(config, hardware, files, data, stream)
    base = setup_base_model(config, files, data, hardware, choice)
    data = setup_reference_logps(config, base, data, files)
    reinforcement = setup_rewards(config)
    scorer = Scorer(
        files.tokenizer,
        data,
        config.evaluation,
        evaluation_extras(config, files.tokenizer),
        pair_evaluation(config),
        None if reinforcement is None else reinforcement.evaluation,
        None if contrastive is None else contrastive.evaluation,
    )
    before = _scores_before(scorer, base, checkpoints.resume, hardware)
    steps = total_steps(len(data.train), config.training, hardware.world)
    per_epoch = (
        steps_per_epoch(len(data.train), config.training, hardware.world)
        if stream is None
        else steps  # a stream's pass has no length known in advance
    )
    reference = setup_reference(config, base, choice)  # before the method changes base
    trainable = setup_method(
        config, base, choice, files, hardware, steps, per_epoch=per_epoch, resume=checkpoints.resume
    )
    if hardware.sharded and checkpoints.resume is None:
        before = _scores_before_sharded(scorer, trainable.model)
    # The method keeps the base vocabulary, which a distillation teacher must share.
    grpo = setup_grpo(config, files.tokenizer, data, reinforcement, reference)
    preference = setup_preference(config, reference)
    loss = setup_loss(
        config,
        task,
        choice,
        hardware,
        base.config.vocab_size,
        reference=reference,
        preference=preference,
        grpo=grpo,
        contrastive=None if contrastive is None else contrastive.loss,
    )
    optimization = setup_optimizer(
        config, trainable.model, choice, steps, hardware, checkpoints.resume
    )
    reporting = setup_reporting(telemetry, steps, trackers)
    hooks = loop.TrainHooks(
        after_step=choice.method.after_step,
        on_step=reporting.on_step,
        compute_loss=loss,
        step_weight=task.step_weight,
        evaluate=lambda model: reporting.on_eval(scorer.periodic(model)),
        eval_every=config.evaluation.every_steps,
        early_stopping=config.training.early_stopping,
        checkpoint_every=config.output.checkpoint_every,
        save=checkpoints.save,
        resume=checkpoints.resume,
        stop_requested=stop or (lambda: False),
        carry={"before": before},
        step_metrics=_step_metrics(grpo, preference),
    )
    try:
        with _training_window(stop):
            result = loop.train(
                trainable.model,
                data.train,
                config.training,
                pad_id=files.tokenizer.pad_token_id,
                accelerator=hardware.accelerator,
                hooks=hooks,
                optimization=optimization,
                plan=None
                if stream is None
                else stream_step_groups(stream, config.training, hardware.world),
            )
    finally:
        reporting.close()
    _say_if_already_complete(result)
    run = _finish(hardware, scorer, trainable, result, before, wall_start)
    if stream is not None and run.main:  # what the stream read, over every attempt
        run.metrics["data"] = {**run.metrics["data"], **stream.report()}
    if contrastive is not None and run.main:  # how the published encoder pools
        run.metrics["pooling"] = contrastive.layout.pooling
    return run


def _step_metrics(
    grpo: GRPOLoss | None, preference: PreferenceLoss | None
) -> Callable[[], dict[str, float]] | None:
    """The numbers a task's loss reports per step beside the loss (the loop's
    ``step_metrics`` hook): GRPO's rewards, or the preference pairs' implicit rewards."""
    if grpo is not None:
        return grpo.step_metrics
    return None if preference is None else preference.step_metrics


def _say_if_already_complete(result: TrainResult) -> None:
    """A run resumed at its end (a finished job run again, its inputs unchanged) trains
    nothing: say so, rather than let the summary read as new training."""
    if result.resumed_from is not None and result.steps_this_run == 0:
        log.info(
            "already complete: the checkpoint of step %d is this run's last (same "
            "configuration, model and data); nothing trained now, its weights are evaluated "
            "and published again",
            result.resumed_from,
        )


def _training_window(stop: StopRequest | None) -> AbstractContextManager[None]:
    """While training, SIGTERM waits for the step to end (and a checkpoint) instead of
    interrupting the run at once."""
    return stop.during_training() if stop is not None else nullcontext()


def _scores_before(
    scorer: Scorer, base: torch.nn.Module, resume: Resume | None, hardware: Hardware
) -> Metrics:
    """The scores before training, reported by rank 0 only (with everything else the
    manifest holds): the first attempt's when resuming, else the base model's. A sharded
    model is evaluated once sharded (:func:`_scores_before_sharded`), since its forward
    passes are collective."""
    if resume is not None:
        carried: Metrics = resume.state.carry.get("before", {})
        return carried
    if hardware.main and not hardware.sharded:
        return scorer.full(base, "before training").as_metrics("Before")
    return {}


def _scores_before_sharded(scorer: Scorer, model: torch.nn.Module) -> Metrics:
    """The base model's scores measured through the sharded model, its adapter off; every
    rank takes part."""
    with base_only(model):
        scores = scorer.full(model, "before training")
    reshard(model)
    return scores.as_metrics("Before")


def _finish(
    hardware: Hardware,
    scorer: Scorer,
    trainable: TrainableModel,
    result: TrainResult,
    before: Metrics,
    wall_start: float,
) -> TrainedRun:
    """Evaluate the trained model and gather what publishing needs; rank 0 gets the
    metrics, the other ranks an empty run (they take part in collective steps only)."""
    model: torch.nn.Module = hardware.accelerator.unwrap_model(trainable.model)
    tokenizer, validation = scorer.tokenizer, scorer.data.validation
    if not hardware.main and not hardware.sharded:
        return TrainedRun(model, tokenizer, {}, validation, main=False)
    after = scorer.full(model, "after training")
    whole = full_state_dict(model) if hardware.sharded else None  # gathered on rank 0
    if not hardware.main:
        return TrainedRun(model, tokenizer, {}, validation, main=False)
    metrics = run_metrics(result, before, after, scorer.data.report.as_dict())
    metrics.update(
        # Counted again: a method may grow its trainable set while training (progressive);
        # a sharded model keeps the count taken before sharding.
        trainableParameters=trainable.trainable if hardware.sharded else count_parameters(model)[0],
        totalParameters=trainable.total,
        device=str(hardware.compute.device),
        precision=hardware.compute.precision,
        wallSeconds=time.perf_counter() - wall_start,
    )
    return TrainedRun(model, tokenizer, metrics, validation, state_dict=whole)


def run_metrics(
    result: TrainResult, before: Metrics, after: EvalResult, data: dict[str, int]
) -> Metrics:
    """What metrics.json reports (camelCase, like the FineTuneJob status)."""
    tail = [h["loss"] for h in result.history[-max(1, len(result.history) // 10) :]]
    return {
        "trainLoss": sum(tail) / len(tail),
        "firstStepLoss": result.history[0]["loss"],
        **before,
        **after.as_metrics(),
        **retention_changes(before, after.as_metrics()),
        **after.details(),
        "evalHistory": result.eval_history,
        "stoppedEarly": result.stopped_early,
        "bestStep": result.best_step,
        "exactMatchSamples": len(after.predictions) if after.exact_match is not None else None,
        "steps": result.steps,
        "resumedFromStep": result.resumed_from,
        "stepsThisRun": result.steps_this_run,
        "tokensPerSecond": result.tokens_per_second,
        "trainSeconds": result.seconds,
        "torchVersion": torch.__version__,
        "data": data,
        "history": result.history,
        "predictions": [
            {"answer": p.answer, "generated": p.generated, "correct": p.correct}
            for p in after.predictions[:20]
        ],
    }
