"""Task image-classification's run: a pretrained backbone, a new head, the loop.

The transfer-learning recipe, step by step: the backbone is loaded with a new
classification head sized to the data's classes (``ignore_mismatched_sizes``: a
checkpoint's 1000-class ImageNet head is dropped, not reshaped); the method applies as
for text (full, freeze with its top blocks, or LoRA with the new head trained and saved
in full beside the adapter); the head learns at ``imageClassification.headLrMultiplier``
x the learning rate, since it starts from random weights and the backbone does not; the
loop, its checkpoints and exact resume are the text recipe's
(:func:`finetune_trainer.loop.train`), and the scores are the sequence classifier's
(:func:`finetune_trainer.evaluation.class_scores`).

The image processor (``preprocessor_config.json``) decides the size and the
normalisation and is published beside the weights, so the set loads with
``AutoImageProcessor`` and ``AutoModelForImageClassification``; a backbone without
one gets a ViT-style processor with ImageNet's mean and standard deviation.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, cast

import torch

from finetune_api.config import TrainerConfig
from finetune_api.config.vision import ImageClassificationSpec
from finetune_trainer import loop
from finetune_trainer.data.labels import LabelVocabulary
from finetune_trainer.errors import ConfigError, ModelError
from finetune_trainer.evaluation import EvalResult, class_scores
from finetune_trainer.logs import kv
from finetune_trainer.methods import ParamGroup, trainable_groups
from finetune_trainer.methods.freeze import find_head
from finetune_trainer.modeling import Compute, count_parameters
from finetune_trainer.recipe.run import TrainedRun, run_metrics
from finetune_trainer.recipe.setup import (
    BaseModelFiles,
    MethodChoice,
    choose_method,
    model_access,
    quiet_libraries,
    setup_checkpoints,
    setup_hardware,
    setup_loss,
    setup_method,
    setup_reporting,
)
from finetune_trainer.steps import steps_per_epoch, total_steps
from finetune_trainer.storage.backends import fetch_model_dir
from finetune_trainer.tasks import TASKS
from finetune_trainer.tracking import NO_TRACKERS, Trackers
from finetune_trainer.vision.prepare import prepare_images
from finetune_trainer.vision.transforms import IMAGENET_MEAN, IMAGENET_STD, ImageTransform

if TYPE_CHECKING:
    from pathlib import Path

    from transformers import PreTrainedModel

    from finetune_trainer.data.prepare import PreparedData
    from finetune_trainer.preemption import StopRequest
    from finetune_trainer.telemetry import Telemetry

log = logging.getLogger("finetune.trainer")

DEFAULT_IMAGE_SIZE = 224
"""The side of a model that says nothing about its input size (ImageNet's)."""


def _sizes(value: Any) -> dict[str, int]:
    """A processor's ``size``/``crop_size`` (a dict, or transformers' SizeDict) as the
    sides it sets."""
    if value is None:
        return {}
    items = dict(value) if hasattr(value, "keys") else dict(vars(value))
    return {k: int(v) for k, v in items.items() if isinstance(v, int)}


def _size_of(processor: Any, model_dir: Path) -> int | None:
    """The square side the processor (or the model's config.json) expects, if it says."""
    for field in ("crop_size", "size"):
        sides = _sizes(getattr(processor, field, None))
        for key in ("height", "shortest_edge"):
            if key in sides:
                return sides[key]
    config_file = model_dir / "config.json"
    if config_file.is_file():
        size = json.loads(config_file.read_text()).get("image_size")
        if isinstance(size, int):
            return size
    return None


def load_processor(
    model_dir: Path, options: ImageClassificationSpec, trust_remote_code: bool
) -> tuple[Any, ImageTransform]:
    """The model's image processor (made when it has none) and the transforms that follow
    it: its size unless imageClassification.imageSize says, its mean and std."""
    from transformers import AutoImageProcessor, ViTImageProcessor

    processor: Any = None
    if (model_dir / "preprocessor_config.json").is_file():
        try:
            processor = AutoImageProcessor.from_pretrained(  # type: ignore[no-untyped-call]
                model_dir, trust_remote_code=trust_remote_code
            )
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot load the image processor of {model_dir}: {exc}") from exc
    size = options.image_size or _size_of(processor, model_dir) or DEFAULT_IMAGE_SIZE
    square = {"height": size, "width": size}
    if processor is None:
        processor = ViTImageProcessor(
            size=square, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD)
        )
    elif options.image_size is not None:  # what the published processor must say too
        shortest = "shortest_edge" in _sizes(processor.size)
        processor.size = {"shortest_edge": size} if shortest else square
        if _sizes(getattr(processor, "crop_size", None)):
            processor.crop_size = square
    mean = tuple(getattr(processor, "image_mean", None) or IMAGENET_MEAN)
    std = tuple(getattr(processor, "image_std", None) or IMAGENET_STD)
    transform = ImageTransform(size, cast(Any, mean), cast(Any, std), options.augment)
    return processor, transform


def load_backbone(model_dir: Path, labels: LabelVocabulary, compute: Compute) -> PreTrainedModel:
    """The pretrained backbone with a new head of ``len(labels)`` outputs (random, seeded
    by the run's seed), named by the data's classes."""
    from transformers import AutoModelForImageClassification

    try:
        model: PreTrainedModel = AutoModelForImageClassification.from_pretrained(
            model_dir,
            num_labels=len(labels),
            id2label=labels.id2label,
            label2id=labels.label2id,
            ignore_mismatched_sizes=True,
            dtype=compute.dtype,
        )
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"model.uri: {model_dir} does not load as an image classifier "
            f"(AutoModelForImageClassification): {exc}; use a vision backbone (ViT, "
            "ConvNeXt, ResNet, ...)"
        ) from exc
    model.to(compute.device)  # type: ignore[arg-type]
    return model


def head_name(model: torch.nn.Module) -> str:
    """The module path of the classification head (``classifier`` for most backbones)."""
    head = find_head(model)
    name: str | None = next((n for n, m in model.named_modules() if m is head), None)
    if head is None or not name:
        raise ConfigError(
            f"task image-classification: cannot find the classification head of "
            f"{type(model).__name__} (no classifier module); use another backbone"
        )
    return name


def with_head_saved(choice: MethodChoice, head: str) -> MethodChoice:
    """LoRA trains the new head in full and saves it with the adapter (peft's
    ``modules_to_save``): without it the head would stay random, and be lost on saving."""
    if choice.method.name != "lora":
        return choice
    saved = tuple(getattr(choice.options, "modules_to_save", None) or ())
    if head in saved:
        return choice
    options = choice.options.model_copy(update={"modules_to_save": [*saved, head]})
    return MethodChoice(choice.method, options)


def head_param_groups(
    model: torch.nn.Module, choice: MethodChoice, lr: float, multiplier: float
) -> list[ParamGroup]:
    """The head (and LoRA's trained copy of it) at ``lr x multiplier``, the rest at
    ``lr``; method freeze keeps its own groups (its headLrMultiplier)."""
    if choice.method.param_groups is not None and choice.method.name != "lora":
        return trainable_groups(model, choice.options, lr, choice.method)
    head = head_name(model).rsplit(".", 1)[-1]
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    in_head = [p for n, p in named if f".{head}." in f".{n}"]
    rest = [p for n, p in named if f".{head}." not in f".{n}"]
    groups: list[ParamGroup] = [
        {"params": rest, "lr": lr, "name": "body"},
        {"params": in_head, "lr": lr * multiplier, "name": "head"},
    ]
    return [g for g in groups if g["params"]]


class ImageScorer:
    """The classifier's held-out scores (loss, accuracy, macro and per-class F1)."""

    def __init__(self, data: PreparedData, batch_size: int) -> None:
        assert data.labels is not None
        self.data = data
        self.batch_size = batch_size
        self.names = list(data.labels.names)

    def full(self, model: torch.nn.Module, when: str) -> EvalResult:
        started = time.perf_counter()
        scores = class_scores(model, self.data.validation, self.batch_size, 0, self.names)
        model.train()
        seconds = time.perf_counter() - started
        if scores is not None:
            log.info(
                "evaluated %s %s",
                when,
                kv(accuracy=round(scores.accuracy, 4), evalLoss=round(scores.loss, 4), s=seconds),
            )
        return EvalResult(scores)

    def periodic(self, model: torch.nn.Module) -> dict[str, float]:
        scores = class_scores(model, self.data.validation, self.batch_size, 0, self.names)
        model.train()
        return {} if scores is None else scores.as_metrics()


def fine_tune_images(
    config: TrainerConfig,
    telemetry: Telemetry | None = None,
    *,
    stop: StopRequest | None = None,
    trackers: Trackers = NO_TRACKERS,
) -> TrainedRun:
    """Load, evaluate, train and evaluate again, as :func:`~finetune_trainer.recipe.run.
    fine_tune` does for text; publishing is the caller's."""
    from accelerate.utils import set_seed

    quiet_libraries()
    wall_start = time.perf_counter()
    set_seed(config.training.seed)
    hardware = setup_hardware(config)
    if hardware.sharded:
        raise ConfigError(
            "resources.strategy: fsdp does not shard task image-classification's backbones "
            "(they fit one device); use ddp or a single process"
        )
    choice = choose_method(config)
    task = TASKS[config.task]
    directory = fetch_model_dir(config.model.uri, config.model.revision, model_access(config))
    options = config.image_options
    processor, transform = load_processor(directory, options, config.model.trust_remote_code)
    data = prepare_images(config.dataset, transform, config.training.seed)
    assert data.labels is not None
    log.info("data %s", kv(**data.report.as_dict(), imageSize=transform.size))
    files = BaseModelFiles(directory, cast(Any, processor))  # published beside the weights
    checkpoints = setup_checkpoints(config, hardware, files, data)
    base = load_backbone(directory, data.labels, hardware.load_compute)
    scorer = ImageScorer(data, config.evaluation.batch_size)
    before: dict[str, Any] = {}
    if checkpoints.resume is not None:
        before = checkpoints.resume.state.carry.get("before", {})
    elif hardware.main:
        before = scorer.full(base, "before training").as_metrics("Before")
    steps = total_steps(len(data.train), config.training, hardware.world)
    per_epoch = steps_per_epoch(len(data.train), config.training, hardware.world)
    choice = with_head_saved(choice, head_name(base))
    trainable = setup_method(
        config,
        base,
        choice,
        files,
        hardware,
        steps,
        per_epoch=per_epoch,
        resume=checkpoints.resume,
    )
    loss = setup_loss(config, task, choice, hardware, 0)
    lr = config.training.learning_rate
    groups = head_param_groups(trainable.model, choice, lr, options.head_lr_multiplier)
    optimization = loop.prepare_optimization(
        trainable.model, groups, config.training, steps, hardware.accelerator, checkpoints.resume
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
    )
    try:
        with stop.during_training() if stop is not None else _nothing():
            result = loop.train(
                trainable.model,
                data.train,
                config.training,
                pad_id=0,
                accelerator=hardware.accelerator,
                hooks=hooks,
                optimization=optimization,
            )
    finally:
        reporting.close()
    model: torch.nn.Module = hardware.accelerator.unwrap_model(trainable.model)
    if not hardware.main:
        return TrainedRun(model, processor, {}, data.validation, main=False)
    after = scorer.full(model, "after training")
    metrics = run_metrics(result, before, after, data.report.as_dict())
    metrics.update(
        trainableParameters=count_parameters(model)[0],
        totalParameters=trainable.total,
        device=str(hardware.compute.device),
        precision=hardware.compute.precision,
        wallSeconds=time.perf_counter() - wall_start,
        imageSize=transform.size,
    )
    return TrainedRun(model, processor, metrics, data.validation)


def _nothing() -> Any:
    from contextlib import nullcontext

    return nullcontext()
