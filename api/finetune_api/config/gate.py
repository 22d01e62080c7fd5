"""One condition of ``evaluation.gate``: a bound on one of the run's final metrics.

The metric names, their units and which way is better are the contract's metrics table
(:data:`finetune_api.tasks.METRICS`), read here rather than repeated, so a gate can name
every score metrics.json carries and nothing else. What a condition checks on its own
is checked here, at its own field (one bound, on the side that makes sense, within the
metric's range); whether the job's task and evaluation settings report the metric at all
is a cross-field rule (:mod:`finetune_api.rules`). Judging a run against the gate is
:mod:`finetune_api.gate`.
"""

from __future__ import annotations

import math
from typing import Final, Self

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.tasks import METRICS, MetricInfo

MAX_GATE_CONDITIONS: Final = 32
"""Bounded so the API server can estimate the cost of the CEL rules over the list."""

_ONE_BOUND_CEL = (
    "(has(self.min) ? 1 : 0) + (has(self.max) ? 1 : 0) + (has(self.minImprovement) ? 1 : 0) == 1"
)


class GateCondition(CamelModel):
    """A bound on one final metric: a threshold (min or max) or a gain over the base model."""

    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": _ONE_BOUND_CEL,
                    "message": "set exactly one of min, max or minImprovement",
                }
            ]
        }
    )

    metric: str = Field(
        max_length=64,
        description="A score of the run's metrics.json, e.g. exactMatch, evalLoss, accuracy, "
        "macroF1, bleu, retentionLossIncrease (docs/concepts/evaluation.md lists each with "
        "its task and unit).",
        json_schema_extra={"enum": list[JsonValue](sorted(METRICS))},
    )
    min: float | None = Field(
        default=None,
        description="Passes when the fine-tuned model's value is at least this (for metrics "
        "where higher is better; fractions are 0-1: 0.9, not 90).",
    )
    max: float | None = Field(
        default=None,
        description="Passes when the value is at most this (for metrics where lower is "
        "better: evalLoss, perplexity, retentionLossIncrease, retentionExactMatchDrop).",
    )
    min_improvement: float | None = Field(
        default=None,
        description="Passes when the fine-tuned model beats the base model by at least this, "
        "in the metric's own unit: after - before where higher is better, before - after "
        "where lower is better (0.05 on exactMatch: 5 points; negative: at most that much "
        "worse).",
    )

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric not in METRICS:
            raise ValueError(
                f"{metric!r} is not a metric a run reports; use one of {', '.join(METRICS)}"
            )
        return metric

    @model_validator(mode="after")
    def _one_bound_that_fits(self) -> Self:
        info = METRICS[self.metric]
        bounds = {"min": self.min, "max": self.max, "minImprovement": self.min_improvement}
        given = [name for name, value in bounds.items() if value is not None]
        if len(given) != 1:
            raise ValueError(
                f"set exactly one of min, max or minImprovement (found "
                f"{', '.join(given) or 'none'}); for a range, write two conditions on "
                f"{self.metric}"
            )
        (kind,) = given
        value = bounds[kind]
        assert value is not None
        _check_side(info, kind)
        _check_range(info, kind, value)
        return self


def _check_side(info: MetricInfo, kind: str) -> None:
    """A minimum on a lower-is-better metric (or the reverse) is a threshold the model
    passes by getting worse: almost certainly the wrong word, so it is refused."""
    if kind == "min" and info.better == "lower":
        raise ValueError(f"{info.name} is better when lower: bound it with max, not min")
    if kind == "max" and info.better == "higher":
        raise ValueError(f"{info.name} is better when higher: bound it with min, not max")
    if kind == "minImprovement" and not info.before:
        raise ValueError(
            f"{info.name} already compares the fine-tuned model with the base model (it has "
            "no Before value): bound it with max"
        )


def _check_range(info: MetricInfo, kind: str, value: float) -> None:
    """A threshold the metric can never reach is a mistake in units (90 for 0.9)."""
    low, high = info.bounds
    if kind == "minImprovement":
        if info.unit == "fraction" and abs(value) > 1:
            raise ValueError(
                f"{info.name} is a fraction 0-1, so an improvement is between -1 and 1; "
                f"write {value / 100:g} for {value:g} points"
            )
        return
    if high is not None and value > high and info.unit.startswith("fraction"):
        raise ValueError(
            f"{info.name} is a {info.unit} ({low:g} to {high:g}), not a percentage: write "
            f"{value / 100:g} for {value:g}%"
        )
    if high is not None and value > high:
        raise ValueError(f"{info.name} is at most {high:g}; {kind} {value:g} cannot be met")
    if math.isfinite(low) and value < low and kind == "max":
        raise ValueError(f"{info.name} is at least {low:g}; max {value:g} cannot be met")
