"""The ``dataset`` section: where rows come from and how they are read."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import (
    ConfigDict,
    Field,
    model_validator,
)

from finetune_trainer.config.base import CamelModel, DatasetUri

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
