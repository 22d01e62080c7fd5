"""Rendering a FineTuneJob into the TrainerConfig its trainer reads.

Pure: no I/O. The operator stores the result in a ConfigMap; ``finetune run`` hands it
to the trainer in-process. Both paths go through :func:`render_trainer_config`, which
is why a job that works locally works in the cluster.
"""

from __future__ import annotations

from typing import Any, TypeVar

from finetune_api.config import DistributedSpec, JobSections, OutputTarget, TrainerConfig
from finetune_api.config.methods import METHODS
from finetune_api.config.presets import get_preset
from finetune_api.resource import FineTuneJob


class RenderError(ValueError):
    """The job is valid but cannot be rendered for this target (e.g. no output URI)."""


def local_output_uri(job_name: str) -> str:
    """Where ``finetune run`` publishes when the spec does not say."""
    return f"file://./artifacts/{job_name}"


J = TypeVar("J", bound=JobSections)


def with_preset(spec: J) -> J:
    """``spec`` with the gaps its ``model.preset`` fills (finetune_api.config.presets
    says which); ``spec`` itself when it names none. Every option the user wrote is
    kept as written (``exclude_unset``), so the user wins. The result is validated like
    the spec (its own class), so a preset value that breaks a rule with the user's
    values is refused here. The planner should plan ``with_preset(spec)`` too: it is
    the job the trainer runs."""
    name = spec.model.preset
    if name is None:
        return spec
    preset = get_preset(name)
    data: dict[str, Any] = spec.model_dump(exclude_unset=True)
    training = data.setdefault("training", {})
    for key, value in preset.training_options().items():
        training.setdefault(key, value)
    entry = METHODS[spec.method.type]
    method = data.setdefault("method", {})
    sections = [entry, *([entry.builds_on] if entry.builds_on is not None else [])]
    given = {key for s in sections for key in (method.get(s.section) or {})}
    missing = {k: v for k, v in preset.method_options(entry.name).items() if k not in given}
    if missing:
        method[entry.section] = {**(method.get(entry.section) or {}), **missing}
    return type(spec).model_validate(data)


def render_trainer_config(
    job: FineTuneJob,
    output_uri: str | None = None,
    *,
    local: bool = False,
    max_steps: int | None = None,
) -> TrainerConfig:
    """The TrainerConfig for ``job``; ``output_uri`` overrides ``spec.output.uri`` and
    ``max_steps`` its ``training.maxSteps`` (``finetune run --max-steps``). Overrides go
    through the TrainerConfig's validation like the spec's own values, so a rule they
    break (AdaLoRA's reserved steps) is refused here, before anything runs.

    ``local`` renders for ``finetune run``: one process, whatever ``spec.resources`` asks
    of a cluster. Otherwise the trainer expects ``nodes`` pods of one process per GPU.

    A ``spec.model.preset`` fills the options the spec leaves unset first
    (:func:`with_preset`).
    """
    spec = with_preset(job.spec)
    uri = output_uri or spec.output.uri
    if uri is None:
        raise RenderError(
            "spec.output.uri is required here: set it, e.g. s3://my-bucket/adapters/"
            f"{job.metadata.name}"
        )
    sections = spec.model_dump(
        include={
            "task",
            "model",
            "dataset",
            "method",
            "training",
            "evaluation",
            "tracking",
            "preference",
            "reinforcement",
            "contrastive",
            "image_classification",
        }
    )
    if max_steps is not None:
        sections["training"]["maxSteps"] = max_steps  # dumped by alias
    output = OutputTarget.model_validate({**spec.output.model_dump(exclude={"uri"}), "uri": uri})
    resources = spec.resources
    distributed = (
        DistributedSpec()
        if local
        else DistributedSpec(
            nodes=resources.nodes,
            processes_per_node=max(1, resources.gpus),
            strategy=resources.strategy,
        )
    )
    return TrainerConfig.model_validate(
        {
            **sections,
            "job_name": job.metadata.name,
            "output": output,
            "distributed": distributed,
        }
    )
