"""FineTuneRuntime and ClusterFineTuneRuntime, v1alpha1: what a platform team decides once.

A runtime carries the cluster facts a FineTuneJob should not have to repeat (the trainer
image, the GPU nodes' taints, labels and priority class, the storage endpoint, the
tracker, the Kueue queue) and the bounds a team may not exceed (GPUs, nodes, CPU,
memory). Admins own runtimes; users name one in ``spec.runtimeRef`` or get their
namespace's default. The operator (finetune_operator.runtime) merges the runtime *under*
the job's own fields and refuses what it forbids before any child exists; the precedence
is documented in docs/concepts/runtimes.md. These models are the single source of the two
CRDs (finetune_api.crd).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from finetune_api.config import API_GROUP, CamelModel
from finetune_api.config.base import SecretName
from finetune_api.config.tracking import TrackingSpec
from finetune_api.gpus import GpuType
from finetune_api.resource import (
    _DNS_SUBDOMAIN,
    ObjectMeta,
    Quantity,
    Resources,
    Toleration,
    _check_quantity,
)

VERSION = "v1alpha1"
API_VERSION = f"{API_GROUP}/{VERSION}"
KIND = "FineTuneRuntime"
PLURAL = "finetuneruntimes"
SINGULAR = "finetuneruntime"
SHORT_NAMES = ["ftrt"]
CLUSTER_KIND = "ClusterFineTuneRuntime"
CLUSTER_PLURAL = "clusterfinetuneruntimes"
CLUSTER_SINGULAR = "clusterfinetuneruntime"
CLUSTER_SHORT_NAMES = ["cftrt"]

_R = Resources.model_fields
"""The job's own resource fields: a runtime's defaults reuse their types and bounds."""


class TrainerImage(CamelModel):
    """The trainer image every job of this runtime runs (jobs cannot choose one)."""

    image: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^\S+$",
        description="The trainer image, e.g. registry.example/finetune-trainer:0.1.0; "
        "replaces the chart's trainer.image for these jobs.",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = Field(
        default=None, description="imagePullPolicy; default: the chart's trainer.pullPolicy."
    )
    image_pull_secrets: list[SecretName] = Field(
        default_factory=list,
        max_length=16,
        description="Secrets (in the job's namespace) to pull the image with; added to the "
        "chart's.",
    )


class RuntimeDefaults(CamelModel):
    """Resources a job gets when it does not say: each field as in spec.resources."""

    gpus: int | None = Field(default=None, ge=0, le=64, description=_R["gpus"].description)
    gpu_type: GpuType | None = Field(default=None, description="The nodes' GPU (gpuType).")
    gpu_memory: Quantity | None = Field(
        default=None, description="Memory of one GPU, for the planner (gpuMemory)."
    )
    cpu: Quantity | None = Field(default=None, description=_R["cpu"].description)
    memory: Quantity | None = Field(default=None, description=_R["memory"].description)
    shared_memory: Quantity | None = Field(
        default=None, description="Size of /dev/shm (sharedMemory)."
    )

    _quantities = field_validator("cpu", "memory", "shared_memory", "gpu_memory", mode="before")(
        _check_quantity
    )


class RuntimeLimits(CamelModel):
    """What a job of this runtime may ask for at most; more is refused before any Job."""

    max_gpus: int | None = Field(default=None, ge=0, le=64, description="resources.gpus.")
    max_nodes: int | None = Field(default=None, ge=1, le=1024, description="resources.nodes.")
    max_cpu: Quantity | None = Field(default=None, description="resources.cpu.")
    max_memory: Quantity | None = Field(default=None, description="resources.memory.")

    _quantities = field_validator("max_cpu", "max_memory", mode="before")(_check_quantity)


class RuntimeStorage(CamelModel):
    """Where outputs go by default: the object store's credentials and endpoint."""

    credentials_secret: SecretName | None = Field(
        default=None,
        description="Default output.credentialsSecret (keys such as AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY) for jobs that name none.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="An S3-compatible endpoint (e.g. http://minio.storage:9000), set as "
        "AWS_ENDPOINT_URL in the trainer pods.",
    )


class RuntimeSpec(CamelModel):
    """A runtime: the cluster facts and bounds of the jobs that use it."""

    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.defaults) || !has(self.defaults.gpus) || "
                    "!has(self.limits) || !has(self.limits.maxGpus) || "
                    "self.defaults.gpus <= self.limits.maxGpus",
                    "message": "defaults.gpus exceeds limits.maxGpus: every job using the "
                    "defaults would be refused",
                }
            ]
        }
    )

    default: bool = Field(
        default=False,
        description="The namespace's default FineTuneRuntime (jobs without runtimeRef get "
        "it); on a ClusterFineTuneRuntime, the cluster-wide fallback under every job. At "
        "most one per namespace (and one cluster-wide): with two, jobs are refused "
        "(RuntimeAmbiguous) until one is removed.",
    )
    trainer: TrainerImage | None = Field(default=None, description="The trainer image.")
    node_selector: dict[str, str] = Field(
        default_factory=dict,
        description="Node labels the training pods require; merged with the job's, the "
        "job's value winning for the same key.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list,
        max_length=32,
        description="Taints the training pods tolerate; added to the job's.",
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="A Kubernetes Affinity for jobs that set none.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="The PriorityClass of jobs that set none.",
    )
    defaults: RuntimeDefaults | None = Field(
        default=None, description="Resources of jobs that do not set them."
    )
    limits: RuntimeLimits | None = Field(
        default=None, description="The most a job may ask for; more is refused."
    )
    storage: RuntimeStorage | None = Field(default=None, description="Output storage.")
    tracking: TrackingSpec | None = Field(
        default=None, description="Experiment trackers of jobs whose spec.tracking is empty."
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The Kueue LocalQueue of jobs that name none (spec.queueName).",
    )

    @model_validator(mode="after")
    def _defaults_within_limits(self) -> RuntimeSpec:
        gpus = self.defaults.gpus if self.defaults else None
        cap = self.limits.max_gpus if self.limits else None
        if gpus is not None and cap is not None and gpus > cap:
            raise ValueError(
                f"defaults.gpus {gpus} exceeds limits.maxGpus {cap}: every job using the "
                "defaults would be refused; lower defaults.gpus or raise limits.maxGpus"
            )
        return self


class FineTuneRuntime(CamelModel):
    api_version: Literal["finetune-operator.io/v1alpha1"]
    kind: Literal["FineTuneRuntime"]
    metadata: ObjectMeta
    spec: RuntimeSpec


class ClusterFineTuneRuntime(CamelModel):
    api_version: Literal["finetune-operator.io/v1alpha1"]
    kind: Literal["ClusterFineTuneRuntime"]
    metadata: ObjectMeta
    spec: RuntimeSpec
