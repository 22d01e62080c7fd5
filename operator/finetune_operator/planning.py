"""Planning a FineTuneJob before its Job is created: the contract's planner
(:mod:`finetune_api.plan`, the same as ``finetune plan``) over the job's spec and its
base model's shape, turned into the status's ``Planned`` condition and ``plan``.

Pure: the shape comes in as :class:`ModelFacts` (read by
:mod:`~finetune_operator.hub`, or why it could not be), so every outcome is a unit
test. Planning is advice except for one case: a GPU job whose GPUs cannot hold it
(``resources.gpuType`` or ``gpuMemory`` says how much they have) fails before any pod
exists. Whatever cannot be computed never blocks a job: it runs unplanned, and the
condition says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from finetune_api.plan import ModelShape, Plan, plan_job
from finetune_api.plan.target import plan_status, target_for
from finetune_api.render import with_preset
from finetune_api.resource import FineTuneJob
from finetune_operator.status import Planned
from finetune_operator.status.phases import (
    FITS,
    MAY_NOT_FIT,
    MEMORY_UNKNOWN,
    MODEL_CONFIG_UNREADABLE,
    WONT_FIT,
)

log = logging.getLogger("finetune.operator")


@dataclass(frozen=True)
class ModelFacts:
    """A base model's shape, or why there is none (a Planned reason and a message)."""

    shape: ModelShape | None
    reason: str = ""
    message: str = ""


def planned(job: FineTuneJob, model: ModelFacts) -> Planned:
    """The planner's verdict on ``job``: refused (status False, reason WontFit) only when
    it needs GPUs that cannot hold it; otherwise planned (True) or, without a shape or
    when the planner fails, Unknown."""
    if model.shape is None:
        return Planned(None, model.reason, model.message)
    try:
        # The trainer runs the spec with its preset's gaps filled: plan that one.
        plan = plan_job(with_preset(job.spec), model.shape, target_for(job.spec))
        summary = plan_status(plan).model_dump(by_alias=True, exclude_none=True, mode="json")
    except Exception as exc:  # advice only: a planner error must not stop the job
        log.warning("%s: planning failed", job.metadata.name, exc_info=True)
        return Planned(None, MODEL_CONFIG_UNREADABLE, f"the planner could not plan it: {exc}")
    return Planned(*_verdict(job, plan), plan=summary)


def _verdict(job: FineTuneJob, plan: Plan) -> tuple[bool, str, str]:
    if plan.fits is None:
        return True, MEMORY_UNKNOWN, plan.verdict
    if plan.fits:
        return True, FITS, plan.verdict
    if job.spec.resources.gpus > 0:
        return False, WONT_FIT, plan.verdict
    # Without the data the planner takes every sequence as maxSeqLength long: an upper
    # bound, which a CPU job (no GPU to waste) is not refused for.
    note = "a CPU job is not refused: its memory limit (resources.memory) decides"
    return True, MAY_NOT_FIT, f"{plan.verdict} ({note})"
