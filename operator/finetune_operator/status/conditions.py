"""The ``conditions`` of a FineTuneJob's status.

All of Validated, Running, Succeeded, Failed and Suspended, always, each True or False,
so Argo CD's health check and ``kubectl wait --for=condition=X`` read them alone. The
phase's own condition is True (Running only while training runs); the others are False
with the same reason. ``lastTransitionTime`` moves only when a condition's status does;
every condition carries ``observedGeneration``. Reasons are made CamelCase-safe and
messages capped at the limits of the contract's
:class:`~finetune_api.resource.Condition`, so a status is never refused for its text.
Conditions of other types (another controller's) are kept as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from annotated_types import MaxLen

from finetune_api.resource import Condition
from finetune_operator.status.phases import (
    CONDITION_TYPES,
    EVALUATION_PASSED,
    FAILED,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    VALID,
    VALIDATED,
)
from finetune_operator.values import cap, text


def _max_length(model_field: Any) -> int:
    return next(m.max_length for m in model_field.metadata if isinstance(m, MaxLen))


MAX_MESSAGE = _max_length(Condition.model_fields["message"])
MAX_REASON = _max_length(Condition.model_fields["reason"])

_REASON_DROP = re.compile(r"[^A-Za-z0-9_,:]")


def safe_reason(value: Any, fallback: str) -> str:
    """``value`` fitted to the Condition reason pattern (CamelCase, ``[A-Za-z0-9_,:]``,
    starting with a letter, ending with a letter, digit or _), else ``fallback``."""
    fitted = _REASON_DROP.sub("", text(value))
    fitted = fitted.lstrip("0123456789_,:")[:MAX_REASON].rstrip(",:")
    return fitted or fallback


def condition_of(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """The condition of type ``kind`` in ``status``, or an empty mapping."""
    found = next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)
    return found if isinstance(found, Mapping) else {}


def conditions(
    prev: Mapping[str, Any],
    *,
    true_condition: str | None,
    reason: str,
    message: str,
    stamp: str,
    generation: int | None,
    validated: tuple[bool, str, str] | None = None,
    evaluation: tuple[bool, str, str] | None = None,
) -> list[dict[str, Any]]:
    """Every condition for a verdict: ``true_condition`` True (None: none of the phase
    conditions), the others False, all with ``reason``; the message on the True one and
    on Running. ``validated`` is (status, reason, message); None: the spec is valid.
    ``evaluation`` is the gate's EvaluationPassed (status, reason, message); None: no
    verdict now (a kept one stays, like another controller's condition)."""
    old = {c.get("type"): c for c in prev.get("conditions") or [] if isinstance(c, dict)}
    if validated is None:
        validated = (True, VALID, "the spec is valid")
    made = [condition(VALIDATED, *validated, old, stamp, generation)]
    for kind in (RUNNING, SUCCEEDED, FAILED, SUSPENDED):
        is_true = true_condition == kind
        shown = message if is_true or kind == RUNNING else ""
        made.append(condition(kind, is_true, reason, shown, old, stamp, generation))
    if evaluation is not None:
        made.append(condition(EVALUATION_PASSED, *evaluation, old, stamp, generation))
        old = {t: c for t, c in old.items() if t != EVALUATION_PASSED}
    made += [c for t, c in old.items() if t not in CONDITION_TYPES]
    return made


def condition(
    kind: str,
    is_true: bool | None,
    reason: str,
    message: str,
    old: Mapping[Any, Mapping[str, Any]],
    stamp: str,
    generation: int | None,
) -> dict[str, Any]:
    """One condition (``is_true`` None: status Unknown); its ``lastTransitionTime`` kept
    from ``old`` while its status stays, else ``stamp``."""
    status = "Unknown" if is_true is None else "True" if is_true else "False"
    before = old.get(kind) or {}
    since = before.get("lastTransitionTime") if before.get("status") == status else None
    made: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": safe_reason(reason, "Unknown"),
        "message": cap(message, MAX_MESSAGE),
        "lastTransitionTime": since or stamp,
    }
    if generation is not None:
        made["observedGeneration"] = generation
    return made
