"""The job as a whole: the sections a FineTuneJob and a TrainerConfig share, and the
TrainerConfig the trainer reads."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    Field,
)

from finetune_trainer.config.base import TRAINER_CONFIG_VERSION, CamelModel, ModelUri, OutputUri
from finetune_trainer.config.data import DatasetSpec
from finetune_trainer.config.methods import MethodSpec
from finetune_trainer.config.training import EvaluationSpec, TrainingSpec

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
