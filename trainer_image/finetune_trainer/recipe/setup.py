"""The recipe's setup steps: each a small function from the config (and the steps before
it) to one typed value, so a run reads as the list of things it needs before its loop.

The order in :func:`finetune_trainer.recipe.run.fine_tune` is part of the numbers: the
random generators are seeded once, then the base model is loaded, the method's new
weights are drawn, a teacher is loaded; a step moved across another could draw
different initial weights. Each step is otherwise independent of where it is called.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from finetune_api.config import TrainerConfig
from finetune_api.config.methods import MethodOptions
from finetune_api.config.training import DistillationSpec
from finetune_api.uri import Role
from finetune_trainer import checkpoint
from finetune_trainer.alignment.grpo import GRPOLoss, RewardEvaluation, Sampling, token_reference
from finetune_trainer.alignment.precompute import with_reference_logps
from finetune_trainer.alignment.preference import PreferenceLoss
from finetune_trainer.alignment.reference import AdapterOff, FrozenCopy, Precomputed, Reference
from finetune_trainer.alignment.rewards import RewardModel, Rewards, build_rewards
from finetune_trainer.data.prepare import DataReport, PreparedData, prepare_data
from finetune_trainer.data.stream import ExampleStream, StreamSettings, open_stream
from finetune_trainer.data.tokenize import PairExample, PromptExample
from finetune_trainer.distributed import make_accelerator, shard_model
from finetune_trainer.embedding.layout import Layout
from finetune_trainer.embedding.loss import ContrastiveLoss
from finetune_trainer.embedding.pooling import resolve_pooling
from finetune_trainer.embedding.retrieval import RetrievalEvaluation
from finetune_trainer.errors import ConfigError, DataError, StorageError
from finetune_trainer.logs import LOGGER, bar_width, kv
from finetune_trainer.logs import quiet_libraries as quiet_libraries  # its callers import it here
from finetune_trainer.loop import Optimization, prepare_optimization
from finetune_trainer.losses import DistillationLoss, LossFn, with_term
from finetune_trainer.methods import Method, MethodContext, get_method, trainable_groups
from finetune_trainer.modeling import (
    Compute,
    count_parameters,
    enable_gradient_checkpointing,
    load_base_model,
    load_tokenizer,
    resolve_compute,
)
from finetune_trainer.state import Checkpointable, Resume, StepReport
from finetune_trainer.storage.backends import (
    Access,
    LocalBackend,
    backend_for,
    fetch_model_dir,
    open_store,
)
from finetune_trainer.storage.store import MANIFEST, Holder
from finetune_trainer.tasks import Task
from finetune_trainer.telemetry import Progress, Telemetry
from finetune_trainer.tracking import NO_TRACKERS, Trackers

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from finetune_trainer.storage.store import Store

log = logging.getLogger(LOGGER)


def output_access(config: TrainerConfig) -> Access:
    """How the run reaches its output: the mounted Secret and the retry deadline."""
    return Access(config.output.credentials_secret, config.output.retry_deadline_seconds)


def model_access(config: TrainerConfig) -> Access:
    """How the run reaches its base model (and a distillation teacher): the model's
    Secret and the job's retry deadline."""
    return Access(config.model.credentials_secret, config.output.retry_deadline_seconds)


# --------------------------------------------------------------------------- output


@contextlib.contextmanager
def hold_output(config: TrainerConfig, *, main: bool = True) -> Iterator[None]:
    """The output, checked and leased before anything loads, held until the block (the
    run and its publishing) ends.

    What would otherwise fail only after a whole epoch, or silently, fails here in a
    second: a local output that is a file, that cannot be created or written (read-only,
    a path too long), that is (through links or relative paths) one of the run's inputs;
    and any output another run is writing (the lease, :meth:`Store.lease`; on S3 taking
    it is also the probe that the bucket exists and may be written). Rank 0 checks and
    holds it for the whole job (``main``); the other ranks write only under its lease.
    """
    if not main:
        yield
        return
    backend, parsed = backend_for(config.output.uri, Role.OUTPUT)
    if isinstance(backend, LocalBackend):
        check_local_output(config, backend.resolve(parsed))
    with open_store(config.output.uri, output_access(config)).lease(Holder.of_this_process()):
        yield


def check_local_output(config: TrainerConfig, path: Path) -> None:
    """A local output directory that is no input and can be written, or an error that
    names output.uri, the path and the fix."""
    uri = config.output.uri
    if os.path.lexists(path) and not os.path.isdir(path):  # neither raises ENAMETOOLONG
        raise StorageError(
            f"output.uri: {uri}: {path} is a file; the output is a directory the run "
            "publishes into: point output.uri at a new or existing directory"
        )
    real = os.path.realpath(path)
    for field, input_uri in config.input_uris():
        other = _local_input(input_uri)
        if other is None:
            continue
        common = os.path.commonpath([real, other])
        how = {other: "is inside", real: "contains"}.get(common) if real != other else "is"
        if how is not None:
            raise ConfigError(
                f"output.uri: {uri} ({real}) {how} {field} ({input_uri}, {other}): the run "
                "would write over what it reads; publish to a directory of its own"
            )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # unnamed where the OS allows: no debris
            pass
    except OSError as exc:
        raise StorageError(
            f"output.uri: {uri}: cannot write in {path}: {exc.strerror or exc}; the run "
            "publishes and checkpoints there: make it writable, or choose another output"
        ) from exc


def _local_input(uri: str) -> str | None:
    """The real path (links resolved) of a file:// or pvc:// input; None for others."""
    if uri.partition("://")[0].lower() not in ("file", "pvc"):
        return None
    backend, parsed = backend_for(uri, Role.MODEL)
    if not isinstance(backend, LocalBackend):
        return None
    return os.path.realpath(backend.resolve(parsed))


# --------------------------------------------------------------------------- hardware


@dataclass(frozen=True)
class Hardware:
    """Where the run computes, in which precision, and with which other processes."""

    accelerator: Accelerator
    compute: Compute
    """Where training computes: this process's device, the resolved precision."""
    load_compute: Compute
    """Where the base model is loaded: the CPU under FSDP, which moves it to the
    devices shard by shard so that no one device ever holds all of it."""
    sharded: bool
    """FSDP: the model is split over the ranks, and its forward passes are collective."""

    @property
    def main(self) -> bool:
        """Rank 0: the process that evaluates and publishes."""
        return bool(self.accelerator.is_main_process)

    @property
    def world(self) -> int:
        return int(self.accelerator.num_processes)


def setup_hardware(config: TrainerConfig) -> Hardware:
    """The accelerator for this process, checked against the world the job expects."""
    wanted = resolve_compute(config.training.precision)
    accelerator = make_accelerator(config.distributed, wanted.mixed_precision, wanted.is_cuda)
    compute = Compute(accelerator.device, wanted.precision)
    sharded = config.distributed.strategy == "fsdp"
    load_compute = Compute(torch.device("cpu"), wanted.precision) if sharded else compute
    return Hardware(accelerator, compute, load_compute, sharded)


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class Checkpoints:
    """Where this run's checkpoints go, and the one it resumes from (None: a fresh run)."""

    store: Store
    resume: Resume | None
    config: TrainerConfig
    accelerator: Accelerator
    identity: checkpoint.Identity
    """The run's identity, which its checkpoints record (rank 0's; the others write none)."""
    stream: ExampleStream | None = None
    """A streaming run's train data, whose position every checkpoint saves."""

    def save(self, cp: Checkpointable) -> None:
        """The loop's ``save`` hook: write ``cp`` to the output (every rank takes part)."""
        checkpoint.save(
            self.store,
            cp,
            config=self.config,
            identity=self.identity,
            accelerator=self.accelerator,
            stream_state=None if self.stream is None else self.stream.state_dict(),
        )


def setup_checkpoints(
    config: TrainerConfig,
    hardware: Hardware,
    files: BaseModelFiles,
    data: PreparedData,
    stream: ExampleStream | None = None,
) -> Checkpoints:
    """The output store, and the newest complete checkpoint of this run in it: the same
    configuration and the same content of the base model and the data (a file rewritten
    in place is another run). Rank 0 takes the identity and chooses for every rank.

    A streaming run's ``stream`` is put back where the checkpoint's stream was: its
    steps are not a position in a list, so they cannot be skipped to."""
    store = open_store(config.output.uri, output_access(config))
    identity = checkpoint.identity(config, files.directory, data) if hardware.main else {}
    if stream is not None and hardware.main:
        identity["trainContent"] = f"stream:{stream.content_identity()}"
    _, resume = checkpoint.find_and_load(store, identity, hardware.accelerator)
    if stream is not None and resume is not None:
        if resume.data_stream is None:
            step = resume.state.step
            raise checkpoint.damaged(
                store,
                step,
                f"{store.uri}/{checkpoint.prefix_for(step)}: a streaming run's checkpoint "
                f"without {checkpoint.DATA_STREAM}",
            )
        stream.load_state_dict(resume.data_stream)
    return Checkpoints(store, resume, config, hardware.accelerator, identity, stream)


# --------------------------------------------------------------------------- model and data


@dataclass(frozen=True)
class MethodChoice:
    """The fine-tuning method of ``method.type`` and its options, defaults filled in.

    The registry holds methods of every options type, so the pairing of this method
    with these options is the config's, checked by the contract, not by the types."""

    method: Method[Any]
    options: MethodOptions


def choose_method(config: TrainerConfig) -> MethodChoice:
    """The implementation of the configured method, with the configured options."""
    return MethodChoice(get_method(config.method.type), config.method.options())


@dataclass(frozen=True)
class BaseModelFiles:
    """The base model's local directory and its tokenizer (the data needs the tokenizer
    before the model is loaded, whose classification head needs the data's labels)."""

    directory: Path
    tokenizer: PreTrainedTokenizerBase


def setup_base_files(config: TrainerConfig) -> BaseModelFiles:
    directory = fetch_model_dir(config.model.uri, config.model.revision, model_access(config))
    return BaseModelFiles(directory, load_tokenizer(directory, config.model.trust_remote_code))


def setup_data(config: TrainerConfig, tokenizer: PreTrainedTokenizerBase) -> PreparedData:
    """Training and validation examples, tokenized as the training options say. A
    streaming run prepares only its held-out file (or Hub split) here, its train data
    being :func:`setup_stream`'s: read as train rows would be, and kept as validation."""
    spec = config.dataset
    if spec.streaming and spec.validation is not None:
        spec = spec.model_copy(update={"train": spec.validation, "streaming": False})
    elif spec.streaming and spec.hub is not None and spec.hub.validation is not None:
        held_out = spec.hub.model_copy(update={"split": spec.hub.validation})
        spec = spec.model_copy(update={"hub": held_out, "streaming": False})
    data = prepare_data(
        tokenizer,
        spec,
        max_length=config.training.max_seq_length,
        seed=config.training.seed,
        eval_samples=config.evaluation.exact_match_samples,
        loss_on=config.training.loss_on,
        packing=config.training.packing,
        task=config.task,
        store=open_store(config.output.uri, output_access(config)),
    )
    if config.dataset.streaming:
        report = DataReport(validation_rows=len(data.validation))
        data = replace(data, train=[], report=report)
    log.info("data %s", kv(**data.report.as_dict()))
    return data


def setup_stream(config: TrainerConfig, tokenizer: PreTrainedTokenizerBase) -> ExampleStream | None:
    """A streaming run's train data (``dataset.streaming``), None for every other run.
    Opened here, before the model loads, so that a source that cannot be streamed (a
    .json document, an object that cannot be read) fails in seconds."""
    spec = config.dataset
    if not spec.streaming:
        return None
    assert spec.train is not None  # the contract: streaming reads one train source
    settings = StreamSettings(
        spec.format,
        spec.columns,
        config.training.max_seq_length,
        config.training.loss_on,
        spec.overlong,
    )
    access = Access(spec.credentials_secret, config.output.retry_deadline_seconds)
    stream = open_stream(
        spec.train,
        access,
        tokenizer,
        settings,
        seed=config.training.seed,
        buffer_size=spec.shuffle_buffer,
        hub=spec.hub,
    )
    # The first example now, not at the first step: a file whose rows do not fit the
    # format fails before the model loads. The stream is then put back at its start.
    start = stream.state_dict()
    next(stream)
    stream.load_state_dict(start)
    log.info("streaming %s", kv(train=spec.train, shuffleBuffer=spec.shuffle_buffer))
    return stream


def setup_base_model(
    config: TrainerConfig,
    files: BaseModelFiles,
    data: PreparedData,
    hardware: Hardware,
    choice: MethodChoice,
) -> PreTrainedModel:
    """The base model for the task, loaded as the method wants it (maybe quantized)."""
    model: PreTrainedModel = load_base_model(
        files.directory,
        hardware.load_compute,
        trust_remote_code=config.model.trust_remote_code,
        quantization=choice.method.quantization(choice.options, hardware.load_compute),
        dropout=config.training.model_dropout,
        task=config.task,
        labels=data.labels,
        pad_token_id=files.tokenizer.pad_token_id,
    )
    return model


@dataclass(frozen=True)
class TrainableModel:
    """The model that trains: the method applied (and sharded under FSDP)."""

    model: torch.nn.Module
    trainable: int
    """Parameters that train (4-bit weights counted at their real size)."""
    total: int


def setup_method(
    config: TrainerConfig,
    base: PreTrainedModel,
    choice: MethodChoice,
    files: BaseModelFiles,
    hardware: Hardware,
    steps: int,
    *,
    per_epoch: int | None = None,
    resume: Resume | None = None,
) -> TrainableModel:
    """Apply the method to ``base``; recompute activations if asked; shard under FSDP.
    ``per_epoch`` (steps per epoch) and ``resume`` let a method whose trainable set
    follows a schedule build the set of the step it resumes at (progressive)."""
    context = MethodContext(
        hardware.load_compute,
        steps,
        config.task,
        files.directory,
        files.tokenizer,
        steps_per_epoch=per_epoch,
        resumed_step=resume.state.step if resume is not None else 0,
    )
    model: torch.nn.Module = choice.method.apply(base, choice.options, context)
    trainable, total = count_parameters(model)
    log.info(
        "training %s",
        kv(
            steps=steps,
            trainableParameters=trainable,
            totalParameters=total,
            trainablePercent=round(100 * trainable / total, 3),
        ),
    )
    if config.training.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if hardware.sharded:
        shard_model(model)
    return TrainableModel(model, trainable, total)


# --------------------------------------------------------------------------- loss


def setup_loss(
    config: TrainerConfig,
    task: Task,
    choice: MethodChoice,
    hardware: Hardware,
    vocab_size: int,
    *,
    reference: Reference | None = None,
    preference: PreferenceLoss | None = None,
    grpo: LossFn | None = None,
    contrastive: LossFn | None = None,
) -> LossFn:
    """The loss the loop minimises: the task's own or distillation from a teacher, plus
    the method's own term (AdaLoRA's regulariser) when it has one. Task preference's
    loss is built from its section, against ``reference`` (:func:`setup_reference`)."""
    spec = config.training.distillation
    loss: LossFn
    if config.task == "preference":
        loss = preference or PreferenceLoss(config.preference_options, reference)
    elif config.task == "reinforcement" and grpo is not None:
        loss = grpo  # built by setup_grpo: it samples with the tokenizer, scores, compares
    elif config.task == "sentence-embedding" and contrastive is not None:
        loss = contrastive  # built by setup_contrastive: it pools as the base model does
    elif spec is not None:
        loss = _distillation(spec, config, hardware.compute, vocab_size)
    elif task.loss is not None:
        loss = task.loss
    else:
        raise ConfigError(f"task: {config.task} has no loss in this trainer")
    if choice.method.loss_term is not None:
        loss = with_term(loss, choice.method.loss_term)
    return loss


def _distillation(
    spec: DistillationSpec, config: TrainerConfig, compute: Compute, student_vocab: int
) -> LossFn:
    """Distillation from ``spec``'s teacher, which must share the student's vocabulary
    (the KL term compares the two distributions token by token)."""
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
        "distilling %s",
        kv(teacher=spec.teacher_uri, temperature=spec.temperature, weight=spec.weight),
    )
    return DistillationLoss(teacher, spec.temperature, spec.weight)


# --------------------------------------------------------------------------- preference


def setup_reference(
    config: TrainerConfig, base: PreTrainedModel, choice: MethodChoice
) -> Reference | None:
    """The reference policy of a dpo or ipo run, taken before the method changes
    ``base``: the model with its adapter switched off for an adapter method (no copy), a
    frozen copy of the base for full and freeze, none per step when the training pairs
    carry precomputed log-probabilities; None for every other task and loss."""
    if config.task == "reinforcement":
        return reinforcement_reference(config, base, choice)
    spec = config.preference_options
    if config.task != "preference" or not spec.uses_reference:
        return None
    if spec.precompute_reference:
        return Precomputed()
    if choice.method.artifact == "adapter":
        return AdapterOff()
    log.info("reference %s", kv(kind="frozen copy of the base", method=choice.method.name))
    return FrozenCopy(copy.deepcopy(base))


def setup_preference(config: TrainerConfig, reference: Reference | None) -> PreferenceLoss | None:
    """Task preference's loss (None for another task): kept by the recipe so that the
    loop reads its per-step rewards (``TrainHooks.step_metrics``)."""
    if config.task != "preference":
        return None
    return PreferenceLoss(config.preference_options, reference)


def setup_reference_logps(
    config: TrainerConfig, base: PreTrainedModel, data: PreparedData, files: BaseModelFiles
) -> PreparedData:
    """For dpo and ipo, ``data`` with the reference's log-probabilities of the held-out
    pairs (what the evaluation's loss and rewards read), and of the training pairs with
    ``preference.precomputeReference``. ``base`` is the base model before any method is
    applied or any checkpoint loaded: the reference itself, on every attempt."""
    spec = config.preference_options
    if config.task != "preference" or not spec.uses_reference:
        return data
    batch_size, pad_id = config.evaluation.batch_size, files.tokenizer.pad_token_id
    validation = with_reference_logps(base, data.validation, batch_size, pad_id)
    train = data.train
    if spec.precompute_reference:
        train = with_reference_logps(base, data.train, batch_size, pad_id)
        log.info("reference %s", kv(precomputed=len(train), loss=spec.loss))
    return replace(data, train=train, validation=validation)


# --------------------------------------------------------------------------- sentence embedding


@dataclass(frozen=True)
class Contrastive:
    """Task sentence-embedding's loss, retrieval evaluation and published layout, all
    with the one pooling the run trains with."""

    loss: ContrastiveLoss
    evaluation: RetrievalEvaluation
    layout: Layout


def setup_contrastive(
    config: TrainerConfig, files: BaseModelFiles, data: PreparedData
) -> Contrastive | None:
    """The contrastive section with the pooling resolved (``contrastive.pooling``, else
    the base model's sentence-transformers pooling, else mean); None for other tasks. A
    triplet loss needs every row's negative: rows without one are named here, before
    the model loads, not at the step that meets them."""
    if config.task != "sentence-embedding":
        return None
    spec = config.contrastive_options
    pooling = resolve_pooling(spec.pooling, files.directory)
    if spec.loss == "triplet":
        for split, examples in (("training", data.train), ("validation", data.validation)):
            lacking = sum(isinstance(e, PairExample) and e.negative_ids is None for e in examples)
            if lacking:
                raise DataError(
                    f"contrastive.loss triplet compares each anchor's positive with its "
                    f"negative, but {lacking} of {len(examples)} {split} rows have none; fill "
                    f"the dataset's {config.dataset.columns.negative!r} column "
                    "(dataset.columns.negative), or use loss multipleNegatives"
                )
    log.info("contrastive %s", kv(loss=spec.loss, pooling=pooling, normalize=spec.normalize))
    return Contrastive(
        ContrastiveLoss(spec, pooling),
        RetrievalEvaluation(spec, pooling),
        Layout(pooling, spec.normalize),
    )


# --------------------------------------------------------------------------- optimizer


def setup_optimizer(
    config: TrainerConfig,
    model: torch.nn.Module,
    choice: MethodChoice,
    steps: int,
    hardware: Hardware,
    resume: Resume | None,
) -> Optimization:
    """The method's parameter groups under ``training.optimizer`` and its schedule,
    prepared with the model; a checkpoint's weights and optimizer states put back."""
    groups = trainable_groups(model, choice.options, config.training.learning_rate, choice.method)
    return prepare_optimization(model, groups, config.training, steps, hardware.accelerator, resume)


# --------------------------------------------------------------------------- telemetry


class ProgressBar:
    """A tqdm bar over optimizer steps showing loss, learning rate, tokens/s and ETA.

    Its width follows the terminal, measured again at every step (a resized window), and
    is :data:`~finetune_trainer.logs.BAR_WIDTH` where the terminal reports 0 columns."""

    def __init__(self, total: int) -> None:
        from tqdm.auto import tqdm

        self._stream = sys.stderr
        self._bar = tqdm(
            total=total,
            unit="step",
            desc="training",
            ncols=bar_width(self._stream),
            mininterval=1.0,
            file=self._stream,
        )

    def __call__(self, report: StepReport) -> None:
        width = bar_width(self._stream)
        if width is not None:
            self._bar.ncols = width
        # Reinforcement's mean reward is what moves (its loss stays near 0).
        reward = {"reward": f"{report.extras['reward']:.3f}"} if "reward" in report.extras else {}
        self._bar.set_postfix(
            loss=f"{report.loss:.4f}",
            **reward,
            lr=f"{report.learning_rate:.2e}",
            tok_s=f"{report.tokens_per_second:.0f}",
            refresh=False,
        )
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


@dataclass
class Reporting:
    """Where progress goes: the telemetry (gauges, JSON lines) and, when shown, the bar."""

    telemetry: Telemetry
    bar: ProgressBar | None = None
    trackers: Trackers = NO_TRACKERS

    def on_step(self, report: StepReport) -> None:
        """The loop's ``on_step`` hook."""
        if self.bar is not None:
            self.bar(report)
        self.telemetry.on_step(report)
        self.trackers.log_step(report)

    def on_eval(self, scores: dict[str, float]) -> dict[str, float]:
        """Periodic evaluation scores, also sent to the telemetry (gauges and a JSON line)
        and the experiment trackers."""
        self.telemetry.on_eval(scores)
        self.trackers.log_eval(self.telemetry.last_step, scores)
        return scores

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def setup_reporting(
    telemetry: Telemetry | None, steps: int, trackers: Trackers = NO_TRACKERS
) -> Reporting:
    """The caller's telemetry, or (tests, notebooks) only a progress bar; the bar is
    drawn when the telemetry's progress asks for one. ``trackers`` get every step and
    evaluation too."""
    telemetry = telemetry or Telemetry(progress=Progress(json_lines=False, bar=True))
    bar = ProgressBar(steps) if telemetry.progress.bar else None
    return Reporting(telemetry, bar, trackers)


# --------------------------------------------------------------------------- reinforcement


@dataclass(frozen=True)
class Reinforcement:
    """Task reinforcement's rewards, built once (patterns compiled, a reward model
    loaded), and the evaluation that scores greedy completions with them."""

    rewards: Rewards
    evaluation: RewardEvaluation


def setup_rewards(config: TrainerConfig) -> Reinforcement | None:
    """The rewards of ``reinforcement.rewards`` (None for every other task); a reward
    model is loaded here, before the policy's evaluation needs it."""
    spec = config.reinforcement
    if config.task != "reinforcement" or spec is None:
        return None
    rewards = build_rewards(
        spec.rewards,
        spec.reward_names,
        lambda uri, revision: load_reward_model(uri, revision, model_access(config)),
    )
    log.info("rewards %s", kv(**{r.name: f"{r.kind} x {r.weight}" for r in rewards.rewards}))
    return Reinforcement(rewards, RewardEvaluation(rewards, spec.max_new_tokens))


def load_reward_model(uri: str, revision: str | None, access: Access | None = None) -> RewardModel:
    """A ``model`` reward's scorer: a published set at ``uri`` (verified against its
    manifest, the adapter on its base, as ``finetune generate`` loads it) or a plain
    model directory (``hf://`` or a local one without a manifest)."""
    from finetune_trainer import inference

    if uri.startswith("hf://") or not _has_manifest(uri):
        directory = fetch_model_dir(uri, revision, access)
        loaded = inference.load(inference.describe_set(uri, directory, None))
    else:
        with inference.open_set(uri, verify=True) as artifact:
            loaded = inference.load(artifact)
    return RewardModel(loaded.model, loaded.tokenizer, loaded.device)


def _has_manifest(uri: str) -> bool:
    """Whether ``uri`` is a published set (it has a manifest); a remote one is always
    taken as a set, so that what is downloaded is verified."""
    backend, parsed = backend_for(uri, Role.MODEL)
    if isinstance(backend, LocalBackend):
        return (backend.resolve(parsed) / MANIFEST).is_file()
    return True


def reinforcement_reference(
    config: TrainerConfig, base: PreTrainedModel, choice: MethodChoice
) -> Reference | None:
    """GRPO's reference policy for the KL penalty: the adapter switched off (no copy) or
    a frozen copy of the base for full and freeze; None when ``beta`` is 0 (no KL, no
    reference forward)."""
    spec = config.reinforcement
    if spec is None or spec.beta == 0:
        return None
    if choice.method.artifact == "adapter":
        return AdapterOff()
    log.info("reference %s", kv(kind="frozen copy of the base", method=choice.method.name))
    return FrozenCopy(copy.deepcopy(base))


def setup_grpo(
    config: TrainerConfig,
    tokenizer: PreTrainedTokenizerBase,
    data: PreparedData,
    reinforcement: Reinforcement | None,
    reference: Reference | None,
) -> GRPOLoss | None:
    """Task reinforcement's loss over the training prompts (None for other tasks). An
    exactMatch reward needs every training prompt's reference answer: a prompt without
    one could never earn it, which is a data error, said here before any step."""
    spec = config.reinforcement
    if reinforcement is None or spec is None:
        return None
    references = [e.reference if isinstance(e, PromptExample) else None for e in data.train]
    missing = sum(r is None for r in references)
    if reinforcement.rewards.needs_reference and missing:
        raise ConfigError(
            f"reinforcement.rewards: exactMatch compares with each prompt's reference answer, "
            f"but {missing} of {len(references)} training prompts have none; fill the "
            f"dataset's {config.dataset.columns.answer!r} column (dataset.columns.answer) or "
            "drop the exactMatch reward"
        )
    sampling = Sampling(
        generations=spec.generations,
        max_new_tokens=spec.max_new_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        beta=spec.beta,
        epsilon=spec.epsilon,
    )
    ref = None if reference is None else token_reference(reference)
    return GRPOLoss(sampling, tokenizer, reinforcement.rewards, references, ref)
