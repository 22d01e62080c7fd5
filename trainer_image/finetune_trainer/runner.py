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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.config import TrainerConfig
from finetune_trainer.loop import StepReport, TrainResult
from finetune_trainer.telemetry import Progress, Telemetry

if TYPE_CHECKING:
    from finetune_trainer.evaluation import EvalResult
    from finetune_trainer.tasks import Task

log = logging.getLogger("finetune.trainer")


@dataclass(frozen=True)
class RunResult:
    output_uri: str
    metrics: dict[str, Any]

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


def run_training(config: TrainerConfig, telemetry: Telemetry | None = None) -> RunResult:
    """Fine-tune as ``config`` says and publish to ``config.output.uri``.

    ``telemetry`` receives the progress (metrics, JSON lines, the last step); the caller
    starts and closes it, so /metrics is up from model loading to publishing.
    """
    from finetune_trainer.publish import publish, stage_artifacts

    run = fine_tune(config, telemetry)
    with tempfile.TemporaryDirectory(prefix="finetune-publish-") as staging:
        stage_artifacts(
            Path(staging),
            run.model,
            run.tokenizer,
            config,
            run.metrics,
            base_model_ref(config.model.uri),
        )
        publish(Path(staging), config.output.uri)
    log.info("published to %s", config.output.uri)
    return RunResult(config.output.uri, run.metrics)


def fine_tune(config: TrainerConfig, telemetry: Telemetry | None = None) -> TrainedRun:
    """Load, evaluate, train and evaluate again; publishing is the caller's.

    Without ``telemetry`` the run reports nothing but the progress bar (tests, notebooks).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed

    from finetune_trainer.data.prepare import prepare_data
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
    # accelerate keeps process-wide state; a second run in one process (tests, notebooks)
    # may want another precision, so each run starts from a clean slate.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=wanted.mixed_precision, cpu=not wanted.is_cuda)
    compute = Compute(accelerator.device, wanted.precision)
    method, options = get_method(config.method.type), config.method.options()
    task = TASKS[config.task]
    _check_options(config, task)
    log.info(
        "job %s: %s on %s, %s", config.job_name, method.name, compute.device, compute.precision
    )

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
        compute,
        trust_remote_code=config.model.trust_remote_code,
        quantization=method.quantization(options, compute),
        dropout=config.training.model_dropout,
        task=config.task,
        labels=data.labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    before = _evaluate(model, tokenizer, data, config, "before training")
    steps = total_steps(len(data.train), config.training)
    context = MethodContext(compute, steps, config.task, model_dir, tokenizer)
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
    loss = _loss_function(config, compute, model.config.vocab_size, task)  # may load a teacher
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
    )
    try:
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
    after = _evaluate(model, tokenizer, data, config, "after training")

    metrics = run_metrics(result, before, after, data.report.as_dict())
    metrics.update(
        trainableParameters=trainable,
        totalParameters=total,
        device=str(compute.device),
        precision=compute.precision,
        wallSeconds=time.perf_counter() - wall_start,
    )
    return TrainedRun(model, tokenizer, metrics, data.validation)


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
    from finetune_trainer.storage.backends import Access, fetch_model_dir

    access = Access(config.model.credentials_secret, config.output.retry_deadline_seconds)
    model_dir = fetch_model_dir(config.model.uri, config.model.revision, access)
    return model_dir, load_tokenizer(model_dir, config.model.trust_remote_code)


def _loss_function(config: TrainerConfig, compute: Any, student_vocab: int, task: Task) -> Any:
    """The loss the loop minimises: the task's own, or distillation from a teacher."""
    from finetune_trainer.errors import ConfigError
    from finetune_trainer.losses import DistillationLoss
    from finetune_trainer.modeling import load_base_model
    from finetune_trainer.storage.backends import fetch_model_dir

    spec = config.training.distillation
    if spec is None:
        return task.loss
    teacher_dir = fetch_model_dir(spec.teacher_uri, spec.teacher_revision)
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
    from finetune_trainer.evaluation import scores_for

    scores = scores_for(
        model,
        data.validation,
        config.evaluation.batch_size,
        tokenizer.pad_token_id,
        _num_labels(data),
    )
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


def run_metrics(
    result: TrainResult, before: EvalResult, after: EvalResult, data: dict[str, int]
) -> dict[str, Any]:
    """What metrics.json reports (camelCase, like the FineTuneJob status)."""
    import torch

    tail = [h["loss"] for h in result.history[-max(1, len(result.history) // 10) :]]
    return {
        "trainLoss": sum(tail) / len(tail),
        "firstStepLoss": result.history[0]["loss"],
        **before.as_metrics("Before"),
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
