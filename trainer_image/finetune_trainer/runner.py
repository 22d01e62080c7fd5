"""One training run from a TrainerConfig: load, evaluate, train, evaluate, publish.

This is what both ``finetune run`` (in-process) and ``finetune train`` (in a pod)
call. It orchestrates; the work is in the modules it calls.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.config import TrainerConfig
from finetune_trainer.loop import StepReport, TrainResult
from finetune_trainer.losses import with_term
from finetune_trainer.storage.backends import Access, open_store
from finetune_trainer.telemetry import Progress, Telemetry

if TYPE_CHECKING:
    from finetune_trainer.evaluation import EvalResult
    from finetune_trainer.preemption import StopRequest
    from finetune_trainer.tasks import Task

log = logging.getLogger("finetune.trainer")


@dataclass(frozen=True)
class RunResult:
    output_uri: str
    metrics: dict[str, Any]
    files: tuple[dict[str, Any], ...] = ()
    """The published files as the manifest lists them (path, size, sha256); rank 0 only.
    They go to the termination message, so the operator needs no storage credentials."""

    def summary(self) -> str:
        m = self.metrics
        lines = []
        if m.get("accuracy") is not None:
            before, after = 100 * m["accuracyBefore"], 100 * m["accuracy"]
            lines.append(
                f"held-out accuracy: base model {before:.1f}% -> fine-tuned {after:.1f}% "
                f"({after - before:+.1f} points; macro-F1 {m['macroF1']:.3f})"
            )
        if m.get("exactMatch") is not None:
            before, after = m["exactMatchBefore"], m["exactMatch"]
            lines.append(
                f"held-out exact match: base model {before:.1f}% -> fine-tuned {after:.1f}% "
                f"({after - before:+.1f} points, {m['exactMatchSamples']} examples)"
            )
        if m.get("evalLoss") is not None:
            lines.append(f"eval loss: {m['evalLossBefore']:.4f} -> {m['evalLoss']:.4f}")
        lines.append(
            f"trained {m['steps']} steps in {m['trainSeconds']:.0f}s "
            f"({m['tokensPerSecond']:.0f} tokens/s); artifacts: {self.output_uri}"
        )
        return "\n".join(lines)


def _quiet_libraries() -> None:
    """Keep the run's output to our progress and results: library chatter goes."""
    import warnings

    # bitsandbytes logs at import that an optional CPU kernel package is absent; the
    # built-in kernels it falls back to are what we use anyway.
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    if not logging.getLogger().handlers and not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def base_model_ref(uri: str) -> str:
    """How the adapter names its base: a Hub id where there is one, else the URI."""
    return uri.removeprefix("hf://") if uri.startswith("hf://") else uri


class _ProgressBar:
    """A tqdm bar over optimizer steps showing loss, learning rate, tokens/s and ETA."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(
            total=total,
            unit="step",
            desc="training",
            dynamic_ncols=True,
            mininterval=1.0,
            file=sys.stderr,
        )

    def __call__(self, report: StepReport) -> None:
        self._bar.set_postfix(
            loss=f"{report.loss:.4f}",
            lr=f"{report.learning_rate:.2e}",
            tok_s=f"{report.tokens_per_second:.0f}",
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


@dataclass
class TrainedRun:
    """A finished run before publishing: what tests and callers may inspect."""

    model: Any
    tokenizer: Any
    metrics: dict[str, Any]
    validation: list[Any]
    main: bool = True
    """Whether this process is rank 0, the one that evaluates and publishes."""
    state_dict: dict[str, Any] | None = None
    """The whole model's weights gathered from an FSDP-sharded model (rank 0)."""


def run_training(config: TrainerConfig, telemetry: Telemetry | None = None) -> RunResult:
    """Fine-tune as ``config`` says and publish to ``config.output.uri``.

    ``telemetry`` receives the progress (metrics, JSON lines, the last step); the caller
    starts and closes it, so /metrics is up from model loading to publishing.
    """
    from finetune_trainer.preemption import handle_sigterm

    with handle_sigterm() as stop:
        run = fine_tune(config, telemetry, stop=stop)
        if not run.main:
            return RunResult(config.output.uri, {})
        files = _publish(run, config)
    return RunResult(config.output.uri, run.metrics, files)


def _publish(run: TrainedRun, config: TrainerConfig) -> tuple[dict[str, Any], ...]:
    """Stage and publish; return the manifest's file entries."""
    from finetune_trainer.publish import publish, stage_artifacts

    with tempfile.TemporaryDirectory(prefix="finetune-publish-") as staging:
        manifest = stage_artifacts(
            Path(staging),
            run.model,
            run.tokenizer,
            config,
            run.metrics,
            base_model_ref(config.model.uri),
            state_dict=run.state_dict,
        )
        publish(Path(staging), config.output.uri, output_access(config))
    log.info("published to %s", config.output.uri)
    return tuple(manifest["files"])


def output_access(config: TrainerConfig) -> Access:
    """How the run reaches its output: the mounted Secret and the retry deadline."""
    return Access(config.output.credentials_secret, config.output.retry_deadline_seconds)


def fine_tune(
    config: TrainerConfig, telemetry: Telemetry | None = None, *, stop: StopRequest | None = None
) -> TrainedRun:
    """Load, evaluate, train and evaluate again; publishing is the caller's.

    A complete checkpoint of this configuration in the output resumes the run from it;
    ``stop`` (SIGTERM) ends training with a checkpoint and :class:`errors.Preempted`.

    Without ``telemetry`` the run reports nothing but the progress bar (tests, notebooks).
    """
    import torch
    from accelerate.utils import set_seed

    from finetune_trainer import checkpoint
    from finetune_trainer.data.prepare import prepare_data
    from finetune_trainer.distributed import (
        full_state_dict,
        make_accelerator,
        reshard,
        shard_model,
    )
    from finetune_trainer.loop import TrainHooks, total_steps, train
    from finetune_trainer.methods import MethodContext, get_method, trainable_groups
    from finetune_trainer.modeling import (
        Compute,
        count_parameters,
        enable_gradient_checkpointing,
        load_base_model,
        resolve_compute,
    )
    from finetune_trainer.tasks import TASKS

    _quiet_libraries()
    wall_start = time.perf_counter()
    set_seed(config.training.seed)
    wanted = resolve_compute(config.training.precision)
    accelerator = make_accelerator(config.distributed, wanted.mixed_precision, wanted.is_cuda)
    main = accelerator.is_main_process
    compute = Compute(accelerator.device, wanted.precision)
    # FSDP loads on the CPU: the model is moved to the devices shard by shard, so no one
    # device ever holds all of it.
    sharding = config.distributed.strategy == "fsdp"
    load_compute = Compute(torch.device("cpu"), wanted.precision) if sharding else compute
    method, options = get_method(config.method.type), config.method.options()
    task = TASKS[config.task]
    _check_options(config, task)
    log.info(
        "job %s: %s on %s, %s", config.job_name, method.name, compute.device, compute.precision
    )

    store = open_store(config.output.uri, output_access(config))
    _, resume = checkpoint.find_and_load(store, config, accelerator)
    model_dir, tokenizer = _fetch_model(config)
    data = prepare_data(
        tokenizer,
        config.dataset,
        max_length=config.training.max_seq_length,
        seed=config.training.seed,
        eval_samples=config.evaluation.exact_match_samples,
        loss_on=config.training.loss_on,
        packing=config.training.packing,
        task=config.task,
    )
    log.info("data: %s", data.report.as_dict())
    model = load_base_model(
        model_dir,
        load_compute,
        trust_remote_code=config.model.trust_remote_code,
        quantization=method.quantization(options, load_compute),
        dropout=config.training.model_dropout,
        task=config.task,
        labels=data.labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Scores before training come from the first attempt when resuming; only rank 0
    # reports them (and everything else the manifest holds). A sharded model is
    # evaluated once sharded, by every rank, since its forward passes are collective.
    before: dict[str, Any] = {}
    if resume is not None:
        before = resume.state.carry.get("before", {})
    elif main and not sharding:
        before = _evaluate(model, tokenizer, data, config, "before training").as_metrics("Before")
    steps = total_steps(len(data.train), config.training, accelerator.num_processes)
    context = MethodContext(load_compute, steps, config.task, model_dir, tokenizer)
    model = method.apply(model, options, context)
    trainable, total = count_parameters(model)
    log.info(
        "training %d steps; %d of %d parameters trainable (%.3f%%)",
        steps,
        trainable,
        total,
        100 * trainable / total,
    )
    if config.training.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if sharding:
        shard_model(model)
        if resume is None:
            with _base_only(model):
                scores = _evaluate(model, tokenizer, data, config, "before training")
            before = scores.as_metrics("Before")
            reshard(model)
    loss = _loss_function(config, compute, model.config.vocab_size, task)  # may load a teacher
    if method.loss_term is not None:
        loss = with_term(loss, method.loss_term)
    telemetry = telemetry or Telemetry(progress=Progress(json_lines=False, bar=True))
    bar = _ProgressBar(steps) if telemetry.progress.bar else None
    hooks = TrainHooks(
        param_groups=trainable_groups(model, options, config.training.learning_rate, method),
        after_step=method.after_step,
        on_step=_reporters(bar, telemetry),
        compute_loss=loss,
        step_weight=task.step_weight,
        evaluate=lambda m: _reported(_periodic_scores(m, tokenizer, data, config), telemetry),
        eval_every=config.evaluation.every_steps,
        early_stopping=config.training.early_stopping,
        checkpoint_every=config.output.checkpoint_every,
        save=lambda cp: checkpoint.save(store, cp, config=config, accelerator=accelerator),
        resume=resume,
        stop_requested=stop or (lambda: False),
        carry={"before": before},
    )
    try:
        with stop.during_training() if stop is not None else nullcontext():
            result = train(
                model,
                data.train,
                config.training,
                pad_id=tokenizer.pad_token_id,
                accelerator=accelerator,
                hooks=hooks,
            )
    finally:
        if bar is not None:
            bar.close()
    model = accelerator.unwrap_model(model)
    if not main and not sharding:
        return TrainedRun(model, tokenizer, {}, data.validation, main=False)
    after = _evaluate(model, tokenizer, data, config, "after training")
    whole = full_state_dict(model) if sharding else None  # gathered on rank 0
    if not main:
        return TrainedRun(model, tokenizer, {}, data.validation, main=False)

    metrics = run_metrics(result, before, after, data.report.as_dict())
    metrics.update(
        trainableParameters=trainable,
        totalParameters=total,
        device=str(compute.device),
        precision=compute.precision,
        wallSeconds=time.perf_counter() - wall_start,
    )
    return TrainedRun(model, tokenizer, metrics, data.validation, state_dict=whole)


def _base_only(model: Any) -> Any:
    """The base model's behaviour: a PEFT model with its adapter switched off."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else nullcontext()


def _reporters(bar: _ProgressBar | None, telemetry: Telemetry) -> Callable[[StepReport], None]:
    """One on_step hook feeding the bar (when shown) and the telemetry."""

    def on_step(report: StepReport) -> None:
        if bar is not None:
            bar(report)
        telemetry.on_step(report)

    return on_step


def _reported(scores: dict[str, float], telemetry: Telemetry) -> dict[str, float]:
    """Periodic evaluation scores, also sent to the telemetry (gauges and a JSON line)."""
    telemetry.on_eval(scores)
    return scores


def _fetch_model(config: TrainerConfig) -> tuple[Path, Any]:
    """The base model's local directory and its tokenizer."""
    from finetune_trainer.modeling import load_tokenizer
    from finetune_trainer.storage.backends import fetch_model_dir

    model_dir = fetch_model_dir(config.model.uri, config.model.revision, model_access(config))
    return model_dir, load_tokenizer(model_dir, config.model.trust_remote_code)


def model_access(config: TrainerConfig) -> Access:
    """How the run reaches its base model (and a distillation teacher): the model's
    Secret and the job's retry deadline."""
    return Access(config.model.credentials_secret, config.output.retry_deadline_seconds)


def _loss_function(config: TrainerConfig, compute: Any, student_vocab: int, task: Task) -> Any:
    """The loss the loop minimises: the task's own, or distillation from a teacher."""
    from finetune_trainer.errors import ConfigError
    from finetune_trainer.losses import DistillationLoss
    from finetune_trainer.modeling import load_base_model
    from finetune_trainer.storage.backends import fetch_model_dir

    spec = config.training.distillation
    if spec is None:
        return task.loss
    teacher_dir = fetch_model_dir(spec.teacher_uri, spec.teacher_revision, model_access(config))
    teacher = load_base_model(
        teacher_dir, compute, trust_remote_code=config.model.trust_remote_code
    )
    if teacher.config.vocab_size != student_vocab:
        raise ConfigError(
            f"training.distillation.teacherUri: the teacher's vocabulary has "
            f"{teacher.config.vocab_size} tokens, the student's {student_vocab}; distillation "
            "needs the same tokenizer (pick a teacher from the same model family)"
        )
    log.info(
        "distilling from %s (T=%s, weight %s)", spec.teacher_uri, spec.temperature, spec.weight
    )
    return DistillationLoss(teacher, spec.temperature, spec.weight)


def _num_labels(data: Any) -> int | None:
    return None if data.labels is None else len(data.labels)


def _periodic_scores(
    model: Any, tokenizer: Any, data: Any, config: TrainerConfig
) -> dict[str, float]:
    """The cheap evaluation run every evaluation.everySteps (no generation)."""
    from finetune_trainer.distributed import reshard
    from finetune_trainer.evaluation import scores_for

    scores = scores_for(
        model,
        data.validation,
        config.evaluation.batch_size,
        tokenizer.pad_token_id,
        _num_labels(data),
    )
    reshard(model)
    return {} if scores is None else scores.as_metrics()


def _evaluate(model: Any, tokenizer: Any, data: Any, config: TrainerConfig, when: str) -> Any:
    from finetune_trainer.evaluation import evaluate

    started = time.perf_counter()
    result = evaluate(
        model,
        tokenizer,
        data.validation,
        data.eval_samples,
        batch_size=config.evaluation.batch_size,
        max_new_tokens=config.evaluation.max_new_tokens,
        num_labels=_num_labels(data),
    )
    shown = {k: round(v, 4) for k, v in result.as_metrics().items() if v is not None}
    log.info("eval %s: %s (%.0fs)", when, shown, time.perf_counter() - started)
    return result


def _check_options(config: TrainerConfig, task: Task) -> None:
    """Combinations the trainer cannot honour for this task, refused before any work."""
    from finetune_trainer.errors import ConfigError

    stopping = config.training.early_stopping
    if stopping is not None and config.evaluation.every_steps is None:
        raise ConfigError(
            "training.earlyStopping needs periodic evaluation: set evaluation.everySteps"
        )
    if stopping is not None and stopping.metric not in task.metrics:
        raise ConfigError(
            f"training.earlyStopping.metric: {stopping.metric} is not measured for task "
            f"{task.name}; use one of {', '.join(task.metrics)}"
        )
    if config.training.distillation is not None and task.name != "causal-lm":
        raise ConfigError("training.distillation is for task causal-lm; remove it")
    if config.distributed.strategy == "fsdp" and config.method.type == "qlora":
        raise ConfigError(
            "resources.strategy fsdp cannot shard qlora's 4-bit weights; use strategy ddp "
            "(each GPU holds the quantized model, which is what qlora is for) or method lora"
        )


def run_metrics(
    result: TrainResult, before: dict[str, Any], after: EvalResult, data: dict[str, int]
) -> dict[str, Any]:
    """What metrics.json reports (camelCase, like the FineTuneJob status)."""
    import torch

    tail = [h["loss"] for h in result.history[-max(1, len(result.history) // 10) :]]
    return {
        "trainLoss": sum(tail) / len(tail),
        "firstStepLoss": result.history[0]["loss"],
        **before,
        **after.as_metrics(),
        "evalHistory": result.eval_history,
        "stoppedEarly": result.stopped_early,
        "bestStep": result.best_step,
        "exactMatchSamples": len(after.predictions) if after.exact_match is not None else None,
        "steps": result.steps,
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
