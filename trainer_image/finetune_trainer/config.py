"""The trainer contract: ``TrainerConfig``, pure pydantic, importable without torch.

A FineTuneJob's spec embeds the same section models (``model``, ``dataset``,
``method``, ``training``, ``evaluation``), so the operator, the CRD generator, the CLI
and the trainer share one definition of every field, its default and its bounds.
Field names are camelCase on the wire (the Kubernetes convention) and snake_case in
Python. Unknown keys are errors everywhere: a typo must never be dropped silently.
"""

from __future__ import annotations

import re
import typing
from typing import Annotated, Any, Final, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from finetune_trainer.storage.uri import Role, UriError, data_suffix, parse_uri

API_GROUP = "finetune-operator.io"
# Final with a literal value, so mypy types it as the Literal the field below expects.
TRAINER_CONFIG_VERSION: Final = "trainer.finetune-operator.io/v1alpha1"


class CamelModel(BaseModel):
    """Base for every contract model: camelCase aliases, unknown keys rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
        # JSON (and so Kubernetes and the TrainerConfig file) has no inf or nan:
        # `.inf` would be accepted here and arrive in the pod as null.
        allow_inf_nan=False,
    )


def _uri_validator(role: Role) -> AfterValidator:
    def check(value: str) -> str:
        try:
            parse_uri(value, role)
        except UriError as exc:
            raise ValueError(str(exc)) from None
        return value

    return AfterValidator(check)


def _check_dataset_uri(value: str) -> str:
    try:
        data_suffix(parse_uri(value, Role.DATASET))
    except UriError as exc:
        raise ValueError(str(exc)) from None
    return value


ModelUri = Annotated[
    str,
    _uri_validator(Role.MODEL),
    Field(
        description="Where the base model is: hf://org/name, s3://bucket/key, "
        "file://path or pvc://claim/path (a directory in Hugging Face layout).",
        examples=["hf://HuggingFaceTB/SmolLM2-135M-Instruct"],
    ),
]
DatasetUri = Annotated[
    str,
    _uri_validator(Role.DATASET),
    AfterValidator(_check_dataset_uri),
    Field(
        description="A .jsonl, .json, .csv or .parquet file: file://, pvc://, s3:// or "
        "hf://datasets/org/name.",
    ),
]
OutputUri = Annotated[
    str,
    _uri_validator(Role.OUTPUT),
    Field(
        description="Where artifacts are published: file://path, pvc://claim/path or "
        "s3://bucket/prefix."
    ),
]


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


# --------------------------------------------------------------------------- dataset

DatasetFormat = Literal["messages", "instruction", "prompt-completion", "text"]


class ColumnMapping(CamelModel):
    """Which dataset columns hold each field; the defaults are the usual names."""

    messages: str = Field(
        default="messages", min_length=1, description="Format messages: a list of {role, content}."
    )
    instruction: str = Field(
        default="instruction", min_length=1, description="Format instruction: the task."
    )
    input: str = Field(
        default="input",
        min_length=1,
        description="Format instruction: optional context for the task.",
    )
    output: str = Field(
        default="output", min_length=1, description="Format instruction: the answer."
    )
    prompt: str = Field(
        default="prompt", min_length=1, description="Format prompt-completion: the prompt."
    )
    completion: str = Field(
        default="completion", min_length=1, description="Format prompt-completion: the completion."
    )
    text: str = Field(default="text", min_length=1, description="Format text: raw text.")
    system: str | None = Field(
        default=None,
        min_length=1,
        description="Formats instruction and prompt-completion: a column with a system "
        "prompt per row.",
    )


class DatasetSpec(CamelModel):
    """The training data, its validation data and how to read rows."""

    # The CEL twin of `_one_validation_source`, so the API server refuses it too.
    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!(has(self.validation) && has(self.validationSplit))",
                    "message": "set either validation or validationSplit, not both",
                }
            ]
        }
    )

    train: DatasetUri
    validation: DatasetUri | None = Field(
        default=None, description="Held-out rows. Default: split from train (validationSplit)."
    )
    validation_split: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="Fraction of train held out for evaluation when no validation set is "
        "given. Default: 0.1.",
    )
    format: DatasetFormat = Field(
        default="messages",
        description="messages (chat turns), instruction (instruction/input/output), "
        "prompt-completion, or text (continued pretraining on raw text).",
    )
    columns: ColumnMapping = Field(default_factory=ColumnMapping)

    @model_validator(mode="after")
    def _one_validation_source(self) -> Self:
        if self.validation is not None and self.validation_split is not None:
            raise ValueError(
                "set either validation (a held-out file) or validationSplit (a fraction of "
                "train), not both"
            )
        return self

    @property
    def effective_validation_split(self) -> float:
        return 0.1 if self.validation_split is None else self.validation_split


# --------------------------------------------------------------------------- methods


def _one_error_for_target_modules(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """One clear message instead of one per union member."""
    try:
        return handler(value)
    except ValidationError:
        raise ValueError(
            "must be all-linear or a non-empty list of module names, e.g. [q_proj, v_proj]"
        ) from None


TargetModules = Annotated[
    Literal["all-linear"]
    | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)],
    WrapValidator(_one_error_for_target_modules),
]


class LoraSpec(CamelModel):
    """LoRA: low-rank adapters beside frozen weights."""

    r: int = Field(default=16, ge=1, le=1024, description="Rank of the adapter matrices.")
    alpha: int = Field(
        default=32, ge=1, le=65536, description="Scaling numerator (scale = alpha/r)."
    )
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: TargetModules = Field(
        default="all-linear",
        description="Module names to adapt (e.g. [q_proj, v_proj]) or all-linear for every "
        "linear layer but the output head.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class QLoraSpec(LoraSpec):
    """QLoRA: LoRA on a 4-bit quantized base model (bitsandbytes)."""

    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type.")
    double_quant: bool = Field(
        default=True, description="Quantize the quantization constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="Dtype of the de-quantized matmuls. auto: bfloat16 on GPUs that support "
        "it, float32 on CPU.",
    )


MethodType = Literal["lora", "qlora"]


def _method_cel_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    """The CEL twin of `MethodSpec._section_matches_type`, one rule per section."""
    default = cls.model_fields["type"].default
    schema["x-kubernetes-validations"] = [
        {
            "rule": f"!has(self.{name}) || (has(self.type) ? self.type : '{default}') == '{name}'",
            "message": f"section '{name}' is set but type is not {name}",
        }
        for name in cls.model_fields
        if name != "type"
    ]


class MethodSpec(CamelModel):
    """The fine-tuning method: its type and, optionally, that method's own section."""

    model_config = CamelModel.model_config | ConfigDict(json_schema_extra=_method_cel_rules)

    type: MethodType = Field(default="lora", description="The fine-tuning method.")
    lora: LoraSpec | None = Field(default=None, description="Options for type lora.")
    qlora: QLoraSpec | None = Field(default=None, description="Options for type qlora.")

    @model_validator(mode="after")
    def _section_matches_type(self) -> Self:
        for name in type(self).section_names():
            if name != self.type and getattr(self, name) is not None:
                raise ValueError(
                    f"section '{name}' is set but type is '{self.type}'; set type: {name} "
                    f"or move the options under '{self.type}:'"
                )
        return self

    @classmethod
    def section_names(cls) -> list[str]:
        return [name for name in cls.model_fields if name != "type"]

    def options(self) -> LoraSpec:
        """The chosen method's options, defaults filled in when its section is absent."""
        section: LoraSpec | None = getattr(self, self.type)
        if section is None:
            spec_class = typing.get_args(type(self).model_fields[self.type].annotation)[0]
            section = spec_class()
        return section


# --------------------------------------------------------------------------- training


class TrainingSpec(CamelModel):
    """Optimisation hyperparameters."""

    epochs: int = Field(default=1, ge=1, le=1000, description="Passes over the training set.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        default="cosine", description="Decay after warmup."
    )
    warmup_ratio: float = Field(
        default=0.03, ge=0, lt=1, description="Fraction of steps spent warming up linearly."
    )
    batch_size: int = Field(default=8, ge=1, le=4096, description="Sequences per micro-batch.")
    gradient_accumulation: int = Field(
        default=1, ge=1, le=4096, description="Micro-batches per optimizer step."
    )
    max_seq_length: int = Field(
        default=1024, ge=16, le=1048576, description="Longer examples are truncated."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU.",
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Makes runs repeatable.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(
        default=1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off."
    )


class EvaluationSpec(CamelModel):
    """What is measured on the validation set before and after training."""

    batch_size: int = Field(default=16, ge=1, le=4096, description="Sequences per eval batch.")
    exact_match_samples: int = Field(
        default=64,
        ge=0,
        le=100000,
        description="Validation rows whose greedy generation is compared with the reference "
        "answer; 0 skips exact match.",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=4096, description="Generation budget per exact-match sample."
    )


# --------------------------------------------------------------------------- output


class OutputTarget(CamelModel):
    """Where the trainer publishes (the URI is always known by the time it runs)."""

    uri: OutputUri


class JobSections(CamelModel):
    """The sections a FineTuneJob spec and a TrainerConfig have in common."""

    task: Literal["causal-lm"] = Field(
        default="causal-lm",
        description="causal-lm: supervised fine-tuning or continued "
        "pretraining of a decoder language model.",
    )
    model: ModelSource
    dataset: DatasetSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)


_JOB_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class TrainerConfig(JobSections):
    """Everything the trainer reads. Rendered from a FineTuneJob; never the reverse."""

    api_version: Literal["trainer.finetune-operator.io/v1alpha1"] = TRAINER_CONFIG_VERSION
    job_name: str = Field(max_length=63, pattern=_JOB_NAME.pattern)
    output: OutputTarget

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> TrainerConfig:
        return cls.model_validate_json(text)

    def redacted(self) -> dict[str, Any]:
        """The config as published in manifests and model cards."""
        return self.model_dump(mode="json", exclude_none=True)
