"""The job as a whole: the sections a FineTuneJob and a TrainerConfig share, and the
TrainerConfig the trainer reads."""

from __future__ import annotations

import re
from typing import Any, Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    JsonValue,
    field_validator,
    model_validator,
)

from finetune_api import rules
from finetune_api.config.alignment import PreferenceSpec, ReinforcementSpec
from finetune_api.config.base import (
    TRAINER_CONFIG_VERSION,
    CamelModel,
    ModelUri,
    OutputUri,
    SecretName,
)
from finetune_api.config.data import DatasetSpec
from finetune_api.config.embedding import ContrastiveSpec
from finetune_api.config.methods import METHODS, PROMPT_LEARNING_METHODS, MethodSpec
from finetune_api.config.methods.adalora import ADALORA
from finetune_api.config.presets import PresetName, check_preset_name
from finetune_api.config.tracking import TrackingSpec
from finetune_api.config.training import EvaluationSpec, TrainingSpec
from finetune_api.config.vision import ImageClassificationSpec
from finetune_api.redaction import redact_data
from finetune_api.tasks import TaskName, task_description

# --------------------------------------------------------------------------- model


class ModelSource(CamelModel):
    """The base model to fine-tune."""

    uri: ModelUri
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Branch, tag or commit of an hf:// model. Default: the repository's "
        "default branch.",
    )
    trust_remote_code: bool = Field(
        default=False,
        description="Run Python code shipped with the model. Off by default: only turn it "
        "on for models whose code you trust.",
    )
    credentials_secret: SecretName | None = None
    preset: PresetName | None = Field(
        default=None,
        description="A model preset (`finetune presets` lists them): recommended LoRA/QLoRA "
        "options, targetModules and training options for a popular base model, filled in "
        "where this job leaves them unset; what the job sets wins. model.uri is still "
        "required.",
    )

    _preset = field_validator("preset", mode="before")(check_preset_name)


# --------------------------------------------------------------------------- output


class OutputOptions(CamelModel):
    """How artifacts and checkpoints are stored; shared by the spec and the TrainerConfig."""

    checkpoint_every: int | None = Field(
        default=None,
        ge=1,
        description="Save a checkpoint to <uri>/checkpoints/step-N every this many optimizer "
        "steps (and at the end of every epoch). A run whose output holds a complete "
        "checkpoint resumes from the newest one. Default: only at the end of each epoch.",
    )
    keep_checkpoints: int = Field(
        default=2,
        ge=1,
        le=1000,
        description="Complete checkpoints kept; older ones are deleted once a newer one is "
        "complete.",
    )
    credentials_secret: SecretName | None = None
    retry_deadline_seconds: int = Field(
        default=300,
        ge=0,
        le=86400,
        description="How long a storage operation of this job (download, checkpoint, "
        "publish) retries transient errors (timeouts, 5xx, throttling) before it fails. "
        "Permanent errors (403, 404, no such bucket) fail at once.",
    )
    merge: bool = Field(
        default=False,
        description="Also publish the adapter merged into the base model, under merged/ in "
        "the artifact set (safetensors shards, config, tokenizer; the same manifest.json), "
        "merged shard by shard so it needs the memory of one shard, not of the model. For "
        "weight adapters (lora, qlora, adalora, ia3); prefix, prompt and p-tuning add "
        "virtual tokens, not weights, and full and freeze publish a whole model already.",
    )


class OutputTarget(OutputOptions):
    """Where the trainer publishes (the URI is always known by the time it runs)."""

    uri: OutputUri


Strategy = Literal["auto", "ddp", "fsdp"]


class DistributedSpec(CamelModel):
    """How many training processes the trainer must find itself among, and how they share
    the model. Rendered by the operator from spec.resources; `finetune run` is one process."""

    nodes: int = Field(default=1, ge=1, le=1024)
    processes_per_node: int = Field(default=1, ge=1, le=64)
    strategy: Strategy = "auto"

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node


Task = TaskName

_PROMPT_LEARNING_CEL = ", ".join(f"'{m}'" for m in sorted(PROMPT_LEARNING_METHODS))
_METHOD_CEL_RULES: list[JsonValue] = [
    # The CEL twin of `JobSections._packing_fits_the_method`.
    {
        "rule": "!has(self.training) || !has(self.training.packing) || !self.training.packing "
        "|| !has(self.method) || !has(self.method.type) || "
        f"!(self.method.type in [{_PROMPT_LEARNING_CEL}])",
        "message": "training.packing cannot be used with the prompt-learning methods (prefix, "
        "prompt, p-tuning): they add virtual tokens to every sequence",
    },
]


class JobSections(CamelModel):
    """The sections a FineTuneJob spec and a TrainerConfig have in common."""

    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={"x-kubernetes-validations": _METHOD_CEL_RULES}
    )

    task: Task = Field(default="causal-lm", description=task_description())
    model: ModelSource
    dataset: DatasetSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    tracking: TrackingSpec = Field(
        default_factory=TrackingSpec,
        description="Experiment trackers the run reports to (MLflow, TensorBoard, Weights & "
        "Biases); none by default.",
    )
    preference: PreferenceSpec | None = Field(
        default=None,
        description="Task preference only: the preference loss (dpo, ipo, simpo, orpo) and "
        "its options. Default: loss dpo with beta 0.1.",
    )
    reinforcement: ReinforcementSpec | None = Field(
        default=None,
        description="Task reinforcement only, and required by it: how completions are "
        "sampled (generations per prompt, length, temperature), scored (rewards) and "
        "learned from (GRPO's clip range epsilon and KL weight beta).",
    )
    contrastive: ContrastiveSpec | None = Field(
        default=None,
        description="Task sentence-embedding only: the contrastive loss (multipleNegatives "
        "or triplet), its scale or margin, the pooling and normalisation. Default: loss "
        "multipleNegatives with scale 20, the model's own pooling.",
    )

    image_classification: ImageClassificationSpec | None = Field(
        default=None,
        description="Task image-classification only: the new head's learning-rate "
        "multiplier, the image size and the training augmentation. Default: head at 10x "
        "the learning rate, the model's image size, augmentation on.",
    )

    @property
    def image_options(self) -> ImageClassificationSpec:
        """The imageClassification section, its defaults when the spec leaves it unset."""
        if self.image_classification is not None:
            return self.image_classification
        return ImageClassificationSpec()

    @property
    def preference_options(self) -> PreferenceSpec:
        """The preference section, its defaults when the spec leaves it unset."""
        return self.preference if self.preference is not None else PreferenceSpec()

    @property
    def contrastive_options(self) -> ContrastiveSpec:
        """The contrastive section, its defaults when the spec leaves it unset."""
        return self.contrastive if self.contrastive is not None else ContrastiveSpec()

    @model_validator(mode="after")
    def _packing_fits_the_method(self) -> Self:
        if self.training.packing and self.method.type in PROMPT_LEARNING_METHODS:
            raise ValueError(
                f"training.packing cannot be used with method.type {self.method.type}: it adds "
                "virtual tokens to every sequence, and a packed sequence holds several "
                "examples under one block mask; set packing: false, or use lora"
            )
        return self

    def rule_facts(
        self,
        strategy: str,
        strategy_field: str,
        *,
        nodes: int = 1,
        gpus: int | None = None,
        name: str | None = None,
        output_uri: str | None = None,
        merge: bool = False,
    ) -> rules.Facts:
        """What the cross-field rules (finetune_api.rules) read of these sections and of
        the resources around them (a spec's, or a TrainerConfig's processes)."""
        method = METHODS[self.method.type]
        reserved: dict[str, int] | None = None
        if method is ADALORA:
            options = self.method.options_for(ADALORA)
            reserved = {"tinit": options.tinit, "tfinal": options.tfinal}
        stopping = self.training.early_stopping
        return rules.Facts(
            task=self.task,
            method=method.name,
            quantized_base=method.quantized_base,
            reserved_steps=reserved,
            reserved_field=f"method.{method.section}",
            early_stopping_metric=None if stopping is None else stopping.metric,
            every_steps=self.evaluation.every_steps,
            distillation=self.training.distillation is not None,
            max_steps=self.training.max_steps,
            precision=self.training.precision,
            strategy=strategy,
            strategy_field=strategy_field,
            nodes=nodes,
            gpus=gpus,
            name=name,
            output_uri=output_uri,
            merge=merge,
            inputs=self.input_uris(),
            gate_metrics=tuple(c.metric for c in self.evaluation.gate or ()),
            metric_settings=self.evaluation.metric_settings(),
            formats=self.formats(),
            packing=self.training.packing,
            streaming=self.dataset.streaming,
            sections=frozenset(
                name
                for name, section in (
                    ("preference", self.preference),
                    ("reinforcement", self.reinforcement),
                    ("contrastive", self.contrastive),
                    ("imageClassification", self.image_classification),
                )
                if section is not None
            ),
        )

    def formats(self) -> tuple[tuple[str, str], ...]:
        """Every dataset format the run reads, with its field path (rules.Facts.formats)."""
        mixture = self.dataset.mixture or []
        return (
            ("dataset.format", self.dataset.format),
            *(
                (f"dataset.mixture[{i}].format", m.format)
                for i, m in enumerate(mixture)
                if m.format is not None
            ),
        )

    def input_uris(self) -> tuple[tuple[str, str], ...]:
        """Every location the run reads, with its field path (rules.Facts.inputs)."""
        data, teacher = self.dataset, self.training.distillation
        retention, bert = self.evaluation.retention, self.evaluation.bert_score
        found: list[tuple[str, str | None]] = [
            ("model.uri", self.model.uri),
            ("dataset.train", data.train),
            *((f"dataset.mixture[{i}].train", m.train) for i, m in enumerate(data.mixture or [])),
            ("dataset.validation", data.validation),
            ("training.distillation.teacherUri", teacher.teacher_uri if teacher else None),
            ("evaluation.retention.dataset", retention.dataset if retention else None),
            ("evaluation.bertScore.model", bert.model if bert else None),
            *(
                (f"reinforcement.rewards[{i}].uri", r.uri)
                for i, r in enumerate(self.reinforcement.rewards if self.reinforcement else [])
            ),
        ]
        return tuple((field, uri) for field, uri in found if uri is not None)


_JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class TrainerConfig(JobSections):
    """Everything the trainer reads. Rendered from a FineTuneJob; never the reverse."""

    api_version: Literal["trainer.finetune-operator.io/v1alpha1"] = TRAINER_CONFIG_VERSION
    job_name: str = Field(max_length=63, pattern=_JOB_NAME.pattern)
    output: OutputTarget
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)

    @model_validator(mode="after")
    def _rules(self) -> Self:
        """The cross-field rules (finetune_api.rules) the FineTuneJob spec obeyed too:
        a TrainerConfig written by hand, or by an older operator, is held to them."""
        d = self.distributed
        rules.enforce(
            self.rule_facts(
                d.strategy,
                "distributed.strategy",
                nodes=d.nodes,
                gpus=None,
                output_uri=self.output.uri,
                merge=self.output.merge,
            )
        )
        return self

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainerConfig:
        return cls.model_validate_json(text)

    def redacted(self) -> dict[str, Any]:
        """The config as published in manifests, model cards and tracker parameters:
        every text in it through the redaction layer (finetune_api.redaction), so a
        secret registered by the trainer, or one pasted where no rule looks, is not
        published with the adapter."""
        data: dict[str, Any] = redact_data(self.model_dump(mode="json", exclude_none=True))
        return data
