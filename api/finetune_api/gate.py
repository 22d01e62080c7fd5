"""The evaluation gate's verdict: does a run's metrics.json meet ``evaluation.gate``?

Pure and shared: the trainer judges its run with :func:`judge` after the final
evaluation, writes :meth:`GateVerdict.as_manifest` into manifest.json (so a pipeline
reading the published set never promotes a model that failed) and carries
:meth:`GateVerdict.as_outcome` in the termination message, from which the operator sets
the ``EvaluationPassed`` condition.

A condition whose metric was not measured (None, missing, not a finite number) fails:
the gate vouches for a model, and a number it never saw vouches for nothing. Validation
refuses the conditions a job's settings cannot measure (:mod:`finetune_api.rules`), so
this happens only when a measurement was impossible at run time (e.g. no validation row
had an answer to compare).

Comparisons allow a relative tolerance of 1e-9: 0.95 - 0.9 is 0.04999999999999993 in
floating point, and a user who asked for an improvement of 0.05 saw 5 points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from finetune_api.config.gate import GateCondition
from finetune_api.outcome import GateOutcome
from finetune_api.tasks import METRICS

TOLERANCE: Final = 1e-9

Kind = Literal["min", "max", "minImprovement"]


@dataclass(frozen=True)
class ConditionResult:
    """One condition judged: what it asked, what was measured, whether it held."""

    metric: str
    kind: Kind
    bound: float
    value: float | None
    """The fine-tuned model's value (None: not measured)."""
    before: float | None = None
    """The base model's value (minImprovement only)."""
    passed: bool = False

    @property
    def improvement(self) -> float | None:
        """after - before, or before - after where lower is better (minImprovement)."""
        if self.kind != "minImprovement" or self.value is None or self.before is None:
            return None
        if METRICS[self.metric].better == "lower":
            return self.before - self.value
        return self.value - self.before

    def describe(self) -> str:
        """The condition and what was measured, e.g. ``exactMatch 0.42 < min 0.9``."""
        if self.kind == "minImprovement":
            wanted = f"minImprovement {self.bound:g}"
            if self.value is None or self.before is None:
                missing = "after" if self.value is None else "before"
                return f"{self.metric} {wanted}: not measured ({missing} training)"
            improvement = self.improvement
            assert improvement is not None
            relation = ">=" if self.passed else "<"
            return (
                f"{self.metric} improved by {improvement:.4g} ({self.before:.4g} -> "
                f"{self.value:.4g}) {relation} {wanted}"
            )
        wanted = f"{self.kind} {self.bound:g}"
        if self.value is None:
            return f"{self.metric} {wanted}: not measured"
        holds = ">=" if self.kind == "min" else "<="
        fails = "<" if self.kind == "min" else ">"
        return f"{self.metric} {self.value:.4g} {holds if self.passed else fails} {wanted}"

    def as_dict(self) -> dict[str, Any]:
        """The manifest's record of this condition (JSON, camelCase)."""
        data: dict[str, Any] = {
            "metric": self.metric,
            self.kind: self.bound,
            "value": self.value,
            "passed": self.passed,
        }
        if self.kind == "minImprovement":
            data["before"] = self.before
            data["improvement"] = self.improvement
        return data


@dataclass(frozen=True)
class GateVerdict:
    """Every condition of a gate judged; the gate passes when all of them do."""

    results: tuple[ConditionResult, ...]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> tuple[ConditionResult, ...]:
        return tuple(r for r in self.results if not r.passed)

    def summary(self) -> str:
        """One line for people: the verdict and the conditions that decided it."""
        if self.passed:
            return f"evaluation gate passed ({len(self.results)} conditions met)"
        failing = "; ".join(r.describe() for r in self.failed)
        return (
            f"evaluation gate failed: {failing} ({len(self.failed)} of {len(self.results)} "
            "conditions missed)"
        )

    def as_manifest(self) -> dict[str, Any]:
        """manifest.json's ``gate``: the verdict, every condition with its measured value,
        and the failing ones in words."""
        return {
            "passed": self.passed,
            "conditions": [r.as_dict() for r in self.results],
            "failed": [r.describe() for r in self.failed],
        }

    def as_outcome(self) -> GateOutcome:
        """What the termination message carries of it (the operator's condition)."""
        return {"passed": self.passed, "failed": [r.describe() for r in self.failed]}


def judge(conditions: Sequence[GateCondition], metrics: Mapping[str, Any]) -> GateVerdict:
    """Judge ``metrics`` (metrics.json's keys: ``<name>`` after training, ``<name>Before``
    for the base model) against every condition."""
    return GateVerdict(tuple(_judge_one(c, metrics) for c in conditions))


def _judge_one(condition: GateCondition, metrics: Mapping[str, Any]) -> ConditionResult:
    value = _number(metrics.get(condition.metric))
    if condition.min is not None:
        passed = value is not None and _at_least(value, condition.min)
        return ConditionResult(condition.metric, "min", condition.min, value, passed=passed)
    if condition.max is not None:
        passed = value is not None and _at_least(-value, -condition.max)
        return ConditionResult(condition.metric, "max", condition.max, value, passed=passed)
    bound = condition.min_improvement
    assert bound is not None  # the model holds exactly one bound
    before = _number(metrics.get(f"{condition.metric}Before"))
    result = ConditionResult(condition.metric, "minImprovement", bound, value, before)
    improvement = result.improvement
    return ConditionResult(
        condition.metric,
        "minImprovement",
        bound,
        value,
        before,
        passed=improvement is not None and _at_least(improvement, bound),
    )


def _at_least(value: float, bound: float) -> bool:
    return value >= bound - TOLERANCE * max(1.0, abs(bound))


def _number(value: Any) -> float | None:
    """A finite number, else None (a metric skipped, NaN from a diverged run)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
