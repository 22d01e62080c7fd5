"""The ``Planned`` condition and ``status.plan``: what the planner said of a job before
its Job was created.

Written once, in the status patch that goes with creating the Job (or refusing to): the
plan is of the spec, and the spec does not change, so later derivations keep the
condition as it is (:func:`~finetune_operator.status.conditions.conditions` keeps the
types besides its five) and never write ``plan`` again. While the trainer runs, its
live ``progress.etaSeconds`` is the estimate to read; ``plan`` stays as planned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from finetune_operator.status.conditions import condition
from finetune_operator.status.phases import PLANNED


@dataclass(frozen=True)
class Planned:
    """The planner's verdict on one job, as the status shows it."""

    status: bool | None
    """True: planned (it fits, or its memory is unknown); False: it cannot fit, and the
    job fails; None (condition Unknown): no plan could be made, and the job runs."""
    reason: str
    message: str
    plan: dict[str, Any] | None = None
    """``status.plan`` (a :class:`~finetune_api.resource.PlanStatus`, JSON-ready)."""

    @property
    def refuses(self) -> bool:
        return self.status is False


def with_planned(
    patch: dict[str, Any],
    prev: Mapping[str, Any],
    planned: Planned,
    stamp: str,
    generation: int | None,
) -> dict[str, Any]:
    """``patch`` (with its conditions) plus the Planned condition and ``plan``."""
    old = {c.get("type"): c for c in prev.get("conditions") or [] if isinstance(c, dict)}
    made = condition(
        PLANNED, planned.status, planned.reason, planned.message, old, stamp, generation
    )
    kept = [c for c in patch.get("conditions") or [] if c.get("type") != PLANNED]
    out = {**patch, "conditions": [*kept, made]}
    if planned.plan is not None:
        out["plan"] = planned.plan
    return out
