"""Small readers of untrusted values: API objects, trainer gauges, timestamps.

Everything the operator reads (a Job's status, a pod's container state, the trainer's
termination message and gauges) is input: a field may be missing, of another type, NaN
or infinite. These helpers turn such a value into what the status model accepts, or
None, and never raise. One copy each, shared by the status derivation and the
observation side (progress scrape, metrics). Text shown in a status or an Event goes
through :func:`cap`, which redacts it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from finetune_api.redaction import redact

TRUNCATED = " ...[truncated]"
EPOCH = datetime.min.replace(tzinfo=UTC)
"""What an unknown time sorts as: before every real one."""


# --------------------------------------------------------------------------- objects


def get(obj: Mapping[str, Any] | None, key: str) -> Mapping[str, Any]:
    """``obj[key]`` when it is a mapping, else an empty one (``obj`` may be None)."""
    value = (obj or {}).get(key)
    return value if isinstance(value, Mapping) else {}


# --------------------------------------------------------------------------- text


def text(value: Any) -> str:
    """``value`` as stripped text; None is empty."""
    return "" if value is None else str(value).strip()


def join(first: Any, second: Any) -> str:
    """``first: second``, leaving out an empty part."""
    return ": ".join(part for part in (text(first), text(second)) if part)


def cap(message: str, limit: int) -> str:
    """``message`` as a status or an Event may show it: through the redaction layer
    (:func:`finetune_api.redaction.redact`; a trainer's termination message or a pod's
    may quote a credential), then within ``limit`` characters, marked when cut. In that
    order: a secret cut in half would no longer be recognised."""
    message = redact(message)
    return message if len(message) <= limit else message[: limit - len(TRUNCATED)] + TRUNCATED


# --------------------------------------------------------------------------- numbers


def finite(value: Any) -> float | None:
    """A finite number as a float; None for NaN, infinities, booleans and non-numbers
    (JSON, and so the status, has no spelling for the first two)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return float(value) if math.isfinite(value) else None
    except OverflowError:  # an int beyond a float's range
        return None


def non_negative(value: Any) -> float | None:
    number = finite(value)
    return number if number is not None and number >= 0 else None


def whole(value: Any) -> int | None:
    """A finite number truncated to an int (negative ones included: combine with
    :func:`non_negative` for a count)."""
    number = finite(value)
    return None if number is None else int(number)


def int_or_none(value: Any) -> int | None:
    """An int, or a string of digits (a Job's counts arrive as either); not a bool."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return None


# --------------------------------------------------------------------------- times


def time_str(value: Any) -> str:
    """RFC 3339 in UTC at whole seconds, as metav1.Time writes it; strings pass as-is
    (so an unchanged time compares equal to what the API server returned)."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def parse_time(value: Any) -> datetime | None:
    """A Kubernetes timestamp (``2024-05-01T12:00:00Z``) or a datetime, timezone-aware
    (naive ones are UTC); None when absent or not a time."""
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
