"""The trainer contract: ``TrainerConfig``, pure pydantic, importable without torch.

A FineTuneJob's spec embeds the same section models (``model``, ``dataset``,
``method``, ``training``, ``evaluation``), so the operator, the CRD generator, the CLI
and the trainer share one definition of every field, its default and its bounds.
Field names are camelCase on the wire (the Kubernetes convention) and snake_case in
Python. Unknown keys are errors everywhere: a typo must never be dropped silently.

The sections live in submodules (``data``, ``methods``, ``training``, ``job``); this
package re-exports them so callers import from ``finetune_trainer.config``.
"""

from finetune_trainer.config.base import (
    API_GROUP,
    TRAINER_CONFIG_VERSION,
    CamelModel,
    DatasetUri,
    ModelUri,
    OutputUri,
)
from finetune_trainer.config.data import ColumnMapping, DatasetFormat, DatasetSpec
from finetune_trainer.config.job import JobSections, ModelSource, OutputTarget, TrainerConfig
from finetune_trainer.config.methods import LoraSpec, MethodSpec, MethodType, QLoraSpec
from finetune_trainer.config.training import EvaluationSpec, TrainingSpec

__all__ = [
    "API_GROUP",
    "TRAINER_CONFIG_VERSION",
    "CamelModel",
    "ColumnMapping",
    "DatasetFormat",
    "DatasetSpec",
    "DatasetUri",
    "EvaluationSpec",
    "JobSections",
    "LoraSpec",
    "MethodSpec",
    "MethodType",
    "ModelSource",
    "ModelUri",
    "OutputTarget",
    "OutputUri",
    "QLoraSpec",
    "TrainerConfig",
    "TrainingSpec",
]
