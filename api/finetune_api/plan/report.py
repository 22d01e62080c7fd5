"""What the planner answers, as data: ``finetune plan -o json`` prints it, the operator
summarises it in ``status.plan`` (:class:`finetune_api.resource.PlanStatus`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, JsonValue

from finetune_api.config.base import CamelModel

Phase = Literal["training", "evaluation", "loading", "generation"]


class MemoryTerm(CamelModel):
    """One item of the memory a device holds at the run's peak."""

    name: str
    bytes: int = Field(ge=0)
    detail: str = ""


class PlanParameters(CamelModel):
    total: int = Field(ge=0, description="Parameters of the base model.")
    trainable: int = Field(ge=0, description="Parameters the method trains.")
    trainable_percent: float = Field(ge=0)


class PlanMemory(CamelModel):
    per_device_bytes: int = Field(ge=0, description="Predicted peak per device (GPU or process).")
    capacity_bytes: int | None = Field(
        default=None, ge=0, description="Memory of one device, where known."
    )
    phase: Phase = Field(description="When the peak happens.")
    terms: list[MemoryTerm]
    largest: str = Field(description="The largest term.")


class PlanData(CamelModel):
    source: Literal["dataset", "spec"] = Field(
        description="dataset: counted from the tokenized data; spec: from the spec alone "
        "(maxSteps, batch and maxSeqLength as upper bounds)."
    )
    rows: int | None = Field(default=None, ge=0, description="Training sequences per epoch.")
    tokens_per_epoch: int | None = Field(default=None, ge=0)
    longest_sequence: int = Field(ge=0, description="Tokens in the longest sequence.")
    steps: int | None = Field(default=None, ge=0, description="Optimizer steps of the run.")
    tokens: int | None = Field(default=None, ge=0, description="Tokens the run trains on.")


class PlanTime(CamelModel):
    device: str
    devices: int = Field(ge=1, description="Training processes.")
    cpu_cores: float | None = Field(
        default=None, ge=0, description="Cores each CPU process computes on (CPU only)."
    )
    flops_per_token: float = Field(ge=0)
    seconds: float | None = Field(default=None, ge=0, description="Estimated training time.")
    seconds_per_step: float | None = Field(default=None, ge=0)


class Suggestion(CamelModel):
    """A change to the spec that lowers the peak, with the plan it would give."""

    change: str
    set: dict[str, JsonValue] = Field(description="Spec fields (dotted paths) to set.")
    per_device_bytes: int = Field(ge=0)
    fits: bool | None = None
    same_result: bool = Field(
        description="True when the change leaves what is learned unchanged (only memory and "
        "time move)."
    )


class Plan(CamelModel):
    """Memory, time and fit of a job, before anything is allocated."""

    model: str = Field(description="The base model's type and size.")
    approximate: bool = Field(
        default=False,
        description="The architecture is not one the planner knows: read as a Llama-like decoder.",
    )
    method: str
    precision: str
    parameters: PlanParameters
    memory: PlanMemory
    data: PlanData
    time: PlanTime
    fits: bool | None = Field(
        default=None,
        description="Whether the peak fits one device; None when its memory is unknown.",
    )
    verdict: str
    suggestions: list[Suggestion] = Field(default_factory=list)
