"""Liveness and readiness of the operator, and the URLs Kubernetes probes them on.

Liveness is kopf's own health endpoint: ``kopf.operator(liveness_endpoint=...)`` (or
``kopf run --liveness=...``) serves exactly one path with aiohttp on the operator's
event loop. A request runs every ``@kopf.on.probe`` handler (results cached 10 s) and
answers 200 with their results as JSON, or 500 when one raises ``kopf.PermanentError``.
Because it answers from the event loop that runs the handlers, a wedged loop stops
answering and Kubernetes restarts the pod: that is the point of the probe. kopf starts
serving it only after the startup handlers have finished, so the chart gives the pod a
``startupProbe`` on the same path rather than a long ``initialDelaySeconds``.

Readiness is ``/readyz`` on the metrics port (see :mod:`.metrics`, which serves it):
kopf's endpoint has room for one path only, and a readiness failure must not count as
a liveness failure (that would restart an operator that is merely starting). It is
ready when every gate of its :class:`Readiness` is up; the default gate is kopf's
``ready_flag``, which kopf raises when the startup handlers are done, the same moment
it starts its watches (FineTuneJobs included). Serving ``/readyz`` at all proves the
metrics server is up.

The chart's probes (ports from ``FINETUNE_HEALTH_PORT``, which ``finetune operator``
hands kopf through :func:`liveness_endpoint`, and ``FINETUNE_METRICS_PORT``):

- liveness and startup: ``GET http://<pod>:8080/healthz``
- readiness: ``GET http://<pod>:8000/readyz``
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import kopf

from finetune_operator.observation.metrics import READINESS_PATH as READINESS_PATH
from finetune_operator.observation.metrics import MetricsServer, OperatorMetrics

LIVENESS_PATH = "/healthz"
STARTUP = "startup"
"""The gate kopf raises (as ``ready_flag``) when its startup handlers have finished."""


def liveness_endpoint(port: int = 8080, addr: str = "0.0.0.0") -> str:
    """The URL to give kopf as ``liveness_endpoint`` (kopf binds ``addr:port``)."""
    return f"http://{addr}:{port}{LIVENESS_PATH}"


class Readiness:
    """Named gates that must all be up before the operator reports ready.

    Each gate is a ``threading.Event``, so kopf can raise one directly:
    ``kopf.operator(ready_flag=readiness.flag(STARTUP))``, and the metrics server's
    thread can read them without touching the event loop.
    """

    def __init__(self, gates: Iterable[str] = (STARTUP,)) -> None:
        self._gates = {gate: threading.Event() for gate in gates}
        if not self._gates:
            raise ValueError("Readiness needs at least one gate")

    def flag(self, gate: str) -> threading.Event:
        """The event behind a gate (KeyError for a gate that was not declared)."""
        return self._gates[gate]

    def mark(self, gate: str) -> None:
        self._gates[gate].set()

    def clear(self, gate: str) -> None:
        """Take a gate down again (e.g. the operator is shutting down)."""
        self._gates[gate].clear()

    def status(self) -> dict[str, bool]:
        return {gate: event.is_set() for gate, event in self._gates.items()}

    @property
    def ready(self) -> bool:
        return all(event.is_set() for event in self._gates.values())

    def report(self) -> tuple[bool, str]:
        """What ``/readyz`` answers: ready or not, and each gate for a person reading."""
        lines = [f"{gate} {'ok' if up else 'waiting'}" for gate, up in self.status().items()]
        return self.ready, "\n".join(["ready" if self.ready else "not ready", *lines]) + "\n"


def alive(**_: Any) -> str:
    """A probe answered by a handler on the operator's loop: the loop is not wedged."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def metrics_server_check(server: MetricsServer | None) -> Callable[..., bool]:
    """A probe that fails when the metrics server's thread has died: a restart brings
    back ``/metrics`` and ``/readyz``, nothing else would."""

    def check(**_: Any) -> bool:
        if server is not None and not server.alive:
            raise kopf.PermanentError("the metrics server thread has stopped")
        return server is not None

    return check


def register_probes(
    *,
    readiness: Readiness,
    server: MetricsServer | None = None,
    metrics: OperatorMetrics | None = None,
    registry: kopf.OperatorRegistry | None = None,
) -> None:
    """Register the liveness probe handlers with kopf (the default registry unless one
    is given). Only ``metricsServer`` can fail; ``ready`` and ``jobs`` are there for a
    person who curls ``/healthz``, never a reason to restart."""
    target = registry if registry is not None else kopf.get_default_registry()
    kopf.on.probe(id="alive", registry=target)(alive)
    kopf.on.probe(id="metricsServer", registry=target)(metrics_server_check(server))

    def ready(**_: Any) -> dict[str, bool]:
        return readiness.status()

    kopf.on.probe(id="ready", registry=target)(ready)
    if metrics is not None:

        def jobs(**_: Any) -> dict[str, int]:
            return metrics.phase_counts()

        kopf.on.probe(id="jobs", registry=target)(jobs)
