"""The FineTuneJob custom resource, v1alpha1: spec, status and the whole object.

These pydantic models are the single source of truth for the API: `finetune validate`,
the operator and the CRD generator (:mod:`finetune_api.crd`) all use them.
The spec sections shared with the trainer come from :mod:`finetune_api.config`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal, Self

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from finetune_api import rules
from finetune_api.config import (
    API_GROUP,
    CamelModel,
    JobSections,
    OutputOptions,
    OutputUri,
    Strategy,
)
from finetune_api.gpus import GpuType

VERSION = "v1alpha1"
API_VERSION = f"{API_GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]

# Kubernetes resource quantities, e.g. 500m, 2, 1.5, 16Gi, 1e3.
# The pattern is the one Kubernetes' own generated schemas use for resource.Quantity.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]"
    r"|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)

Quantity = Annotated[
    int | str,
    Field(
        description="A Kubernetes quantity, e.g. 4, 500m, 16Gi.",
        json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN},
    ),
]


def _check_quantity(value: Any) -> Any:
    """Runs before the int-or-string union, so each mistake gets one clear message."""
    if isinstance(value, bool):
        raise ValueError("is a boolean; write a quantity, e.g. 4, 500m or 16Gi")
    if isinstance(value, float):
        # kubectl sends 2.0 as the JSON integer 2, and 0.5 as a number the CRD refuses.
        if not value.is_integer():
            raise ValueError(f"write a fractional quantity as a string, e.g. '{value}'")
        value = int(value)
    if isinstance(value, str):
        if not _QUANTITY.match(value):
            raise ValueError(f"'{value}' is not a Kubernetes quantity; write e.g. 4, 500m or 16Gi")
        if value.startswith("-"):
            raise ValueError("must be positive")
    if isinstance(value, int) and value <= 0:
        raise ValueError("must be positive")
    return value


class OutputSpec(OutputOptions):
    """Where the adapter, metrics, model card and manifest are published."""

    uri: OutputUri | None = Field(
        default=None,
        description="Default for `finetune run`: file://./artifacts/<metadata.name>.",
    )


class Toleration(CamelModel):
    """A Kubernetes toleration, copied to the training pods."""

    key: str | None = Field(
        default=None, max_length=253, description="Taint key to tolerate; empty with Exists: all."
    )
    operator: Literal["Exists", "Equal"] = Field(
        default="Equal", description="Equal: the taint's value must match value."
    )
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to tolerate; empty: all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, ge=0, description="NoExecute only: how long the pod stays bound to the node."
    )


class Resources(CamelModel):
    """What each training node gets; used by the operator to build pods."""

    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.strategy) || self.strategy != 'fsdp' || "
                    "(has(self.gpus) && self.gpus > 0)",
                    "message": "strategy fsdp shards the model across GPUs: set gpus",
                },
                {
                    "rule": "(!has(self.gpuType) && !has(self.gpuMemory)) || "
                    "(has(self.gpus) && self.gpus > 0)",
                    "message": "gpuType and gpuMemory describe the job's GPUs: set gpus",
                },
            ]
        }
    )

    gpus: int = Field(default=0, ge=0, le=64, description="nvidia.com/gpu per node.")
    gpu_type: GpuType | None = Field(
        default=None,
        description="The GPU the job runs on, for the planner: its memory decides whether "
        "the job fits (a job that cannot fit fails with reason WontFit before any pod is "
        "created) and its speed the estimated duration. Does not select nodes: pair it with "
        "nodeSelector. Unknown types: set gpuMemory.",
    )
    gpu_memory: Quantity | None = Field(
        default=None,
        description="Memory of one GPU (e.g. 80Gi) for the planner's fit check; overrides "
        "gpuType's.",
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit per node.")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit per node, e.g. 32Gi."
    )
    nodes: int = Field(default=1, ge=1, le=1024, description="Training nodes (pods).")
    strategy: Strategy = Field(
        default="auto",
        description="How several processes share the model: ddp replicates it on every "
        "device; fsdp shards parameters, gradients and optimizer state across devices, for "
        "models that do not fit one GPU (needs GPUs); auto is ddp.",
    )
    node_selector: dict[str, str] = Field(
        default_factory=dict, description="Node labels the training pods require."
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, description="Taints the training pods tolerate."
    )
    affinity: dict[str, Any] | None = Field(
        default=None,
        description="A Kubernetes Affinity (nodeAffinity, podAffinity, podAntiAffinity), "
        "copied to the training pods as written.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    priority_class_name: str | None = Field(
        default=None,
        max_length=253,
        pattern=_DNS_SUBDOMAIN,
        description="The PriorityClass of the training pods (preemption order).",
    )
    shared_memory: Quantity = Field(
        default="2Gi",
        description="Size of the memory-backed /dev/shm of each training pod (data loaders "
        "and NCCL use it; the container runtime's 64Mi default is too small).",
    )

    _cpu = field_validator("cpu", "memory", "shared_memory", "gpu_memory", mode="before")(
        _check_quantity
    )

    @model_validator(mode="after")
    def _gpu_facts_need_gpus(self) -> Resources:
        if self.gpus == 0 and (self.gpu_type is not None or self.gpu_memory is not None):
            field = "gpuType" if self.gpu_type is not None else "gpuMemory"
            raise ValueError(
                f"resources.{field} describes the GPUs the job runs on, but gpus is 0; set "
                f"gpus, or remove {field} (a CPU job's memory is resources.memory)"
            )
        return self

    @model_validator(mode="after")
    def _fsdp_needs_gpus(self) -> Resources:
        if self.strategy == "fsdp" and self.gpus == 0:
            raise ValueError(
                "strategy fsdp shards the model across GPUs: set gpus (per node), or use "
                "strategy ddp for CPU training"
            )
        return self

    @field_validator("node_selector")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not _LABEL_KEY.match(key):
                raise ValueError(f"'{key}' is not a valid label key")
        return value


class RunPolicy(CamelModel):
    """How the training Job is retried and bounded (copied to the batch/v1 Job)."""

    backoff_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Failed pods retried before the job fails. Pods stopped by a disruption "
        "(preemption, node drain, eviction) are retried without counting; a retried pod "
        "resumes from the last checkpoint. Invalid configuration or data fails at once.",
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the job when it has run this long in total."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the finished Job and its pods after this long (the FineTuneJob "
        "and the published artifacts stay).",
    )


RuntimeKind = Literal["FineTuneRuntime", "ClusterFineTuneRuntime"]
"""The two kinds of runtime (finetune_api.runtime) a job can name."""


class RuntimeRef(CamelModel):
    """Which runtime a FineTuneJob uses (spec.runtimeRef)."""

    name: str = Field(max_length=253, pattern=_DNS_SUBDOMAIN, description="The runtime's name.")
    kind: RuntimeKind = Field(
        default="FineTuneRuntime",
        description="FineTuneRuntime (in the job's namespace) or ClusterFineTuneRuntime.",
    )


IMMUTABLE_EXCEPT = frozenset({"suspend"})
"""Spec fields that may change after creation; the CRD refuses changes to the others."""


_SECTION_CEL: list[JsonValue] = JobSections.model_json_schema().get("x-kubernetes-validations", [])


class FineTuneJobSpec(JobSections):
    """What to fine-tune, on what, how, and where the result goes."""

    # The CEL twins of the cross-field rules (finetune_api.rules) after the sections' own.
    model_config = JobSections.model_config | ConfigDict(
        json_schema_extra={"x-kubernetes-validations": [*_SECTION_CEL, *rules.cel_rules()]}
    )

    output: OutputSpec = Field(default_factory=OutputSpec)
    resources: Resources = Field(default_factory=Resources)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    suspend: bool = Field(
        default=False,
        description="Suspend the training Job (its pods are stopped; a checkpoint is saved on "
        "the way out) and resume it when set back to false. The only field that may change "
        "after creation.",
    )
    queue_name: str | None = Field(
        default=None,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="A Kueue LocalQueue: the Job is created suspended with the "
        "kueue.x-k8s.io/queue-name label, and Kueue decides when it runs.",
    )
    runtime_ref: RuntimeRef | None = Field(
        default=None,
        description="The FineTuneRuntime or ClusterFineTuneRuntime whose image, scheduling, "
        "defaults and limits apply (docs: Runtimes); unset: the namespace's default "
        "FineTuneRuntime, else the default ClusterFineTuneRuntime, else none.",
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        """The cross-field rules of every target (finetune_api.rules)."""
        rules.enforce(self.facts())
        return self

    def facts(self, name: str | None = None) -> rules.Facts:
        """What the rules read of this spec; ``name`` is the object's metadata.name."""
        r = self.resources
        return self.rule_facts(
            r.strategy,
            "resources.strategy",
            nodes=r.nodes,
            gpus=r.gpus,
            name=name,
            output_uri=self.output.uri,
            merge=self.output.merge,
        )


# --------------------------------------------------------------------------- status

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]


class Condition(CamelModel):
    """One condition, in the Kubernetes API conventions' shape. The operator always
    writes Validated, Running, Succeeded, Failed and Suspended, each True or False (so
    `kubectl wait --for=condition=Succeeded` works), and Planned once when it planned the
    job; conditions of other types, written by another controller, are kept as they are."""

    type: str = Field(
        max_length=316,
        description="Validated (the spec passed the operator's checks), Running (a "
        "trainer is training now), Succeeded, Failed, Suspended (spec.suspend, or queued "
        "by Kueue), or Planned (the planner's verdict, written once before the Job was "
        "created).",
    )
    status: Literal["True", "False", "Unknown"] = Field(
        description="True, False or Unknown (Planned only: no plan could be made, and the "
        "job runs unplanned)."
    )
    reason: str = Field(
        max_length=1024,
        pattern=r"^([A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?)?$",
        description="Why, in one CamelCase word; the False conditions carry the same reason "
        "as the one that is True. The operator's own (e.g. JobCreated, Training, "
        "Preempted, Retrying, Unschedulable, ImagePullFailed, InvalidSpec, WontFit, "
        "DeadlineExceeded, OOMKilled; Planned: Fits, MemoryUnknown, MayNotFit, "
        "ModelConfigUnavailable, ModelConfigUnreadable) or the trainer's exit reason "
        "(e.g. InvalidData, OutOfMemory, StorageError).",
    )
    message: str = Field(
        default="",
        max_length=32768,
        description="Details for people: on the True condition and on Running (while "
        "training: the step, e.g. step 40/100 (40%)); empty on the other False ones. A "
        "failure's message comes from the trainer's termination message or the pod's log "
        "tail.",
    )
    last_transition_time: datetime = Field(
        description="When the status last changed between True, False and Unknown (RFC "
        "3339); a new reason or message alone does not move it."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation of the FineTuneJob this condition was set for.",
    )


class Progress(CamelModel):
    """Training progress, scraped by the operator from the rank-0 trainer's /metrics
    (the finetune_trainer_* gauges) every FINETUNE_PROGRESS_INTERVAL seconds (15 by
    default) while the job runs. Kept as it was while the trainer is unreachable or
    restarting: a restart never wipes it."""

    step: int = Field(
        default=0,
        ge=0,
        description="Optimizer steps completed (finetune_trainer_step); on success, the "
        "trainer's last step.",
    )
    total_steps: int | None = Field(
        default=None,
        ge=0,
        description="Optimizer steps the run will take: training.maxSteps, or epochs x "
        "steps per epoch (finetune_trainer_total_steps). Unset until the trainer reports "
        "it.",
    )
    epoch: float | None = Field(
        default=None,
        ge=0,
        description="Fractional epoch reached: 1.5 is half-way through the second pass "
        "over the training data (finetune_trainer_epoch).",
    )
    percent: int | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Whole percent of steps done, floor(100 x step / totalSteps), 0-100; "
        "100 on success. Unset while totalSteps is unknown. The PROGRESS column of "
        "kubectl get.",
    )
    eta_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Estimated seconds until the last step, from the trainer's mean step "
        "time so far (finetune_trainer_eta_seconds); 0 on success. Before the trainer "
        "runs, plan.estimatedSeconds is the planner's estimate.",
    )
    tokens_per_second: float | None = Field(
        default=None,
        ge=0,
        description="Training throughput at the latest scrape: non-padding input tokens "
        "per second (finetune_trainer_tokens_per_second).",
    )
    reward: float | None = Field(
        default=None,
        description="Task reinforcement: the mean combined reward of the latest step's "
        "sampled completions (finetune_trainer_step_metric{name=reward}), the live number "
        "to watch beside metrics.trainLoss. Unset for other tasks.",
    )


class Metrics(CamelModel):
    """The run's scores. While it trains, trainLoss and evalLoss are the latest values
    the operator scraped from the trainer's /metrics; on success, every field the
    trainer's termination message carries (its metrics.json headline numbers) replaces
    them. Scores are on the validation set; fields the task does not measure stay unset.
    The ...Before fields score the base model, before training, on the same data."""

    train_loss: float | None = Field(
        default=None,
        description="Training loss (token-weighted cross-entropy): of the latest step "
        "while training; on success, the mean over the last tenth of the steps.",
    )
    eval_loss: float | None = Field(
        default=None,
        description="Validation loss: of the latest periodic evaluation "
        "(evaluation.everySteps) while training; on success, of the final evaluation "
        "after training.",
    )
    eval_loss_before: float | None = Field(
        default=None, description="Validation loss of the base model, before training."
    )
    exact_match: float | None = Field(
        default=None,
        description="Fraction (0-1) of the evaluation.exactMatchSamples validation rows "
        "whose greedy generation equals the reference answer, after training (language "
        "models).",
    )
    exact_match_before: float | None = Field(
        default=None,
        description="exactMatch of the base model, before training, on the same rows.",
    )
    rouge_l: float | None = Field(
        default=None,
        description="Mean ROUGE-L F1 (0-1) of the exact-match generations against the "
        "reference answers, after training (language models).",
    )
    bleu: float | None = Field(
        default=None,
        description="Corpus BLEU (sacrebleu, as a fraction 0-1) of the exact-match "
        "generations against the reference answers, after training (language models).",
    )
    chr_f: float | None = Field(
        default=None,
        description="Corpus chrF (sacrebleu, as a fraction 0-1) of the exact-match "
        "generations against the reference answers, after training (language models).",
    )
    bert_score_f1: float | None = Field(
        default=None,
        description="Mean BERTScore F1 (0-1) of the exact-match generations, with the "
        "encoder evaluation.bertScore names, after training.",
    )
    accuracy: float | None = Field(
        default=None,
        description="Fraction (0-1) of validation rows classified correctly, after "
        "training (task sequence-classification).",
    )
    accuracy_before: float | None = Field(
        default=None, description="accuracy of the base model, before training."
    )
    macro_f1: float | None = Field(
        default=None,
        description="Macro-averaged F1 (0-1) over the classes on the validation set, "
        "after training (task sequence-classification).",
    )
    retention_loss: float | None = Field(
        default=None,
        description="Loss on the general dataset evaluation.retention.dataset after "
        "training; above retentionLossBefore, the model forgot some of what it knew.",
    )
    retention_loss_before: float | None = Field(
        default=None, description="retentionLoss of the base model, before training."
    )
    retention_exact_match: float | None = Field(
        default=None,
        description="Fraction (0-1) of the retention rows with answers that the model "
        "answers exactly, after training.",
    )
    retention_exact_match_before: float | None = Field(
        default=None, description="retentionExactMatch of the base model, before training."
    )
    mean_reward: float | None = Field(
        default=None,
        description="Mean combined reward (reinforcement.rewards, weighted) of greedy "
        "completions of the held-out prompts, after training (task reinforcement).",
    )
    mean_reward_before: float | None = Field(
        default=None, description="meanReward of the base model, before training."
    )
    tokens_per_second: float | None = Field(
        default=None,
        description="Mean training throughput of the whole run: non-padding input tokens "
        "per second of training (set on success).",
    )


class ArtifactFile(CamelModel):
    """One published file, as the trainer's manifest.json lists it."""

    path: str = Field(description="Path relative to artifacts.uri, e.g. adapter_model.safetensors.")
    size: int = Field(ge=0, description="Size in bytes.")
    sha256: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the content, lower-case hex (finetune verify checks it).",
    )


class Artifacts(CamelModel):
    """What the run published, set when it succeeds, from the trainer's termination
    message (the operator needs no credentials for the output store)."""

    uri: str = Field(
        description="Where the result was published (spec.output.uri), e.g. "
        "s3://artifacts/adapters/quickstart; finetune verify <uri> checks it."
    )
    files: list[ArtifactFile] = Field(
        default_factory=list,
        description="Every published file with its size and checksum. Empty when the list "
        "did not fit in the termination message (4 KiB): manifest.json under uri has it, "
        "and the Succeeded condition's message says so.",
    )


class PlanStatus(CamelModel):
    """The planner's estimate, made before the training Job was created."""

    memory_per_device: str = Field(
        description="Predicted peak memory of one GPU (or one CPU process), e.g. 21.3Gi."
    )
    device: str = Field(description="What it was planned for: a gpuType, GPU or CPU.")
    fits: bool | None = Field(
        default=None, description="Whether it fits one device; unset when its memory is unknown."
    )
    largest_term: str = Field(description="The largest memory term, e.g. activations.")
    trainable_parameters: int = Field(ge=0, description="Parameters the method trains.")
    steps: int | None = Field(default=None, ge=0, description="Optimizer steps, when known.")
    tokens: int | None = Field(default=None, ge=0, description="Tokens trained on, when known.")
    estimated_seconds: int | None = Field(
        default=None,
        ge=0,
        description="Estimated training time; the live progress.etaSeconds replaces it once "
        "the trainer runs.",
    )
    estimated_duration: str | None = Field(
        default=None, description="estimatedSeconds for people, e.g. 1h20m (kubectl get -o wide)."
    )


TrackerUrl = Annotated[
    str,
    Field(
        max_length=2048,
        pattern=r"^https?://[^\s]+$",
        description="The tracker's page of the run (http or https).",
    ),
]
"""A tracker's page: http(s) only, whatever a trainer's message says."""


class RuntimeStatusRef(CamelModel):
    """The runtime a job was built from (status.runtime), as it was then."""

    kind: RuntimeKind = Field(description="FineTuneRuntime or ClusterFineTuneRuntime.")
    name: str = Field(max_length=253, description="Its name.")
    generation: int | None = Field(
        default=None, ge=0, description="Its metadata.generation when the Job was built."
    )
    cluster_default: str | None = Field(
        default=None,
        max_length=253,
        description="The default ClusterFineTuneRuntime merged beneath it, if any.",
    )


class FineTuneJobStatus(CamelModel):
    """What became of the job. Written by the operator only (the trainer pods have no
    API rights): from the training Job and its pods, the trainer's /metrics while it runs
    and its termination message when it ends."""

    phase: Phase | None = Field(
        default=None,
        description="Pending (Job created, pods not training yet), Running (training, or "
        "interrupted and resuming), Succeeded, Failed or Suspended (spec.suspend, or "
        "waiting for Kueue). Succeeded and Failed are final. The conditions say why.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Validated, Running, Succeeded, Failed and Suspended, always, each True "
        "or False with the same reason; plus Planned when the job was planned (kubectl "
        "describe ftj shows them).",
    )
    progress: Progress | None = Field(
        default=None,
        description="Steps, epoch, percent and ETA, scraped from the trainer's /metrics "
        "while it runs; unset until the first scrape.",
    )
    metrics: Metrics | None = Field(
        default=None,
        description="Losses and scores: live from the trainer's /metrics while it trains, "
        "final from its termination message on success.",
    )
    artifacts: Artifacts | None = Field(
        default=None,
        description="Where the result was published, and every file; set on success.",
    )
    start_time: datetime | None = Field(
        default=None,
        description="When training started (RFC 3339): the Job's startTime, else the first "
        "trainer container's start. Set once; a resume or restart keeps it.",
    )
    completion_time: datetime | None = Field(
        default=None,
        description="When the job succeeded or failed (RFC 3339): the Job's completionTime, "
        "else the time of its final condition.",
    )
    restarts: int = Field(
        default=0,
        ge=0,
        description="Trainer pod restarts so far: failed, preempted or evicted pods that "
        "were replaced (a replacement resumes from the last checkpoint, if there is one). "
        "Never decreases.",
    )
    job_name: str | None = Field(
        default=None,
        description="The batch/v1 Job running the trainer, in this namespace (named like "
        "the FineTuneJob): kubectl logs job/<jobName>.",
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation this status was derived from; behind "
        "metadata.generation while the operator has not seen the latest spec.",
    )
    plan: PlanStatus | None = Field(
        default=None,
        description="Memory, steps and duration the planner estimated before the Job was "
        "created (finetune plan prints the same, itemised). Written once; unset when no "
        "plan could be made (the Planned condition says why).",
    )
    trackers: dict[str, TrackerUrl] | None = Field(
        default=None,
        max_length=8,
        description="Where each experiment tracker of spec.tracking shows the run (tracker "
        "name to URL), e.g. mlflow: http://mlflow:5000/#/experiments/1/runs/abc. From the "
        "trainer's /metrics while it runs and its termination message at the end.",
    )
    runtime: RuntimeStatusRef | None = Field(
        default=None,
        description="The runtime merged under the spec when the Job was built (written "
        "once, with the first status); unset when no runtime applied.",
    )


# --------------------------------------------------------------------------- object

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class ObjectMeta(CamelModel):
    """The part of metadata we read; everything else the API server owns is kept."""

    model_config = CamelModel.model_config | {"extra": "allow"}

    name: str = Field(max_length=63)
    namespace: str | None = None

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                f"'{value}' is not a valid name: use lower-case letters, digits and '-', "
                "starting and ending with a letter or digit (it names pods and artifacts)"
            )
        return value


class FineTuneJob(CamelModel):
    api_version: Literal["finetune-operator.io/v1alpha1"]
    kind: Literal["FineTuneJob"]
    metadata: ObjectMeta
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
