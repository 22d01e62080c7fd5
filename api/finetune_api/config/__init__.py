"""The trainer contract: ``TrainerConfig``, pure pydantic, importable without torch.

A FineTuneJob's spec embeds the same section models (``model``, ``dataset``,
``method``, ``training``, ``evaluation``), so the operator, the CRD generator, the CLI
and the trainer share one definition of every field, its default and its bounds.
Field names are camelCase on the wire (the Kubernetes convention) and snake_case in
Python. Unknown keys are errors everywhere: a typo must never be dropped silently.

The sections live in submodules (``data``, ``methods``, ``training``, ``job``); this
package re-exports them so callers import from ``finetune_api.config``.
"""

from finetune_api.config.base import (
    API_GROUP,
    TRAINER_CONFIG_VERSION,
    CamelModel,
    DatasetUri,
    ModelUri,
    OutputUri,
    SecretName,
)
from finetune_api.config.data import ColumnMapping, DatasetFormat, DatasetSpec
from finetune_api.config.job import (
    DistributedSpec,
    JobSections,
    ModelSource,
    OutputOptions,
    OutputTarget,
    Strategy,
    TrainerConfig,
)
from finetune_api.config.methods import MethodOptions, MethodSpec, MethodType
from finetune_api.config.methods.adalora import AdaLoraSpec
from finetune_api.config.methods.freeze import FreezeSpec
from finetune_api.config.methods.full import FullSpec
from finetune_api.config.methods.ia3 import IA3Spec
from finetune_api.config.methods.lora import LoraSpec
from finetune_api.config.methods.p_tuning import PTuningSpec
from finetune_api.config.methods.prefix import PrefixSpec
from finetune_api.config.methods.prompt import PromptSpec
from finetune_api.config.methods.qlora import QLoraSpec
from finetune_api.config.tracking import (
    MlflowTracking,
    TensorBoardTracking,
    TrackingSpec,
    WandbTracking,
)
from finetune_api.config.training import EvaluationSpec, TrainingSpec

__all__ = [
    "API_GROUP",
    "TRAINER_CONFIG_VERSION",
    "AdaLoraSpec",
    "CamelModel",
    "ColumnMapping",
    "DatasetFormat",
    "DatasetSpec",
    "DatasetUri",
    "DistributedSpec",
    "EvaluationSpec",
    "FreezeSpec",
    "FullSpec",
    "IA3Spec",
    "JobSections",
    "LoraSpec",
    "MethodOptions",
    "MethodSpec",
    "MethodType",
    "MlflowTracking",
    "ModelSource",
    "ModelUri",
    "OutputOptions",
    "OutputTarget",
    "OutputUri",
    "PTuningSpec",
    "PrefixSpec",
    "PromptSpec",
    "QLoraSpec",
    "SecretName",
    "Strategy",
    "TensorBoardTracking",
    "TrackingSpec",
    "TrainerConfig",
    "TrainingSpec",
    "WandbTracking",
]
