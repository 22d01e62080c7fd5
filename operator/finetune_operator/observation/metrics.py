"""The operator's own Prometheus metrics, served on their own port with ``/readyz``.

What an operator's user asks of it: how many FineTuneJobs are in each phase, how long
reconciling takes and why it fails, how long a job waits before it trains (queueing,
image pulls, scheduling) and how long a training run takes. The trainer's own
progress is the trainer's metrics (``finetune_trainer_*``); these are the operator's.

Each :class:`OperatorMetrics` owns its own ``CollectorRegistry``: the global one would
leak one test's (or one operator instance's) numbers into the next.

The jobs-by-phase gauge is computed from a map of each job's current phase at scrape
time, not incremented and decremented: a missed event or a deletion can never leave a
count wrong for the life of the process, only until the next update of that job.
"""

from __future__ import annotations

import functools
import inspect
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ParamSpec, Protocol, TypeVar, cast, get_args
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.registry import Collector

from finetune_api.resource import Phase
from finetune_operator.status.phases import EVALUATION_PASSED, PENDING, RUNNING, TERMINAL
from finetune_operator.values import parse_time

PREFIX = "finetune_operator"
PHASES: tuple[str, ...] = get_args(Phase)
"""Every phase a FineTuneJob can be in; each is reported, zeros included, so a
dashboard or an alert never sees a series vanish."""
READINESS_PATH = "/readyz"
"""Where the metrics server answers the readiness probe
(:mod:`finetune_operator.observation.probes` keeps the gates)."""

# Seconds from creation to Running: a free GPU node answers in seconds, a Kueue queue
# or a cold image pull in minutes to hours.
TIME_TO_RUNNING_BUCKETS = (5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200)
# Seconds a job trains: a LoRA on a small model takes minutes, a large one days.
JOB_DURATION_BUCKETS = (60, 300, 600, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 604800)
GATE_RESULTS = ("Passed", "Failed")
"""The results of an evaluation gate, each reported from the start (zeros included) so
``increase()`` sees the first one."""

P = ParamSpec("P")
R = TypeVar("R")
JobKey = tuple[str, str]
Timestamp = datetime | str | None


class ReadinessReport(Protocol):
    """What ``/readyz`` answers from: :class:`~finetune_operator.observation.probes.Readiness`
    is one (a protocol, so the server needs nothing of the probes module)."""

    def report(self) -> tuple[bool, str]: ...


class _PhaseCollector(Collector):
    """Counts the phase map at scrape time."""

    def __init__(self, phases: dict[JobKey, str], lock: threading.Lock) -> None:
        self._phases = phases
        self._lock = lock

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            current = list(self._phases.values())
        family = GaugeMetricFamily(
            f"{PREFIX}_jobs", "FineTuneJobs known to the operator, by phase.", labels=["phase"]
        )
        for phase in (*PHASES, *sorted(set(current) - set(PHASES))):
            family.add_metric([phase], current.count(phase))
        yield family


class OperatorMetrics:
    """The operator's metrics and the state they are computed from.

    Handlers call :meth:`observe_phase` with every phase they see or write for a job,
    :meth:`forget` when a job is deleted, and wrap their work in :meth:`timed`.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._phases: dict[JobKey, str] = {}
        self._ran: set[JobKey] = set()
        self._ended: set[JobKey] = set()
        self._gates: dict[JobKey, str | None] = {}
        self.registry.register(_PhaseCollector(self._phases, self._lock))
        self.reconcile_duration = Histogram(
            f"{PREFIX}_reconcile_duration_seconds",
            "Time one handler took to reconcile a FineTuneJob, errors included.",
            ["handler"],
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            f"{PREFIX}_reconcile_errors",
            "Reconciles that raised, by reason (the exception's class, or a given reason).",
            ["reason"],
            registry=self.registry,
        )
        self.time_to_running = Histogram(
            f"{PREFIX}_time_to_running_seconds",
            "Seconds from a FineTuneJob's creation to its first Running phase.",
            buckets=TIME_TO_RUNNING_BUCKETS,
            registry=self.registry,
        )
        self.job_duration = Histogram(
            f"{PREFIX}_job_duration_seconds",
            "Seconds from a FineTuneJob's start to Succeeded or Failed, by outcome.",
            ["outcome"],
            buckets=JOB_DURATION_BUCKETS,
            registry=self.registry,
        )

        self.evaluation_gates = Counter(
            f"{PREFIX}_evaluation_gates",
            "Evaluation gates judged (jobs with evaluation.gate), by result: Passed or Failed.",
            ["result"],
            registry=self.registry,
        )
        for result in GATE_RESULTS:
            self.evaluation_gates.labels(result=result)

    # ------------------------------------------------------------------ phases

    def observe_phase(
        self,
        namespace: str,
        name: str,
        phase: str | None,
        *,
        created: Timestamp = None,
        started: Timestamp = None,
        now: datetime | None = None,
    ) -> None:
        """Record a job's current phase (None, not yet reconciled, counts as Pending).

        The histograms are observed on a change of phase this process sees, once per
        job: the first Running after ``created`` (``metadata.creationTimestamp``), and
        Succeeded or Failed after ``started`` (``status.startTime``; ``created`` when
        absent). The first phase this process records for a job is not a change: after
        an operator restart, resuming a job that finished long ago counts nothing twice.
        """
        key = (namespace, name)
        current = phase or PENDING
        moment = now or datetime.now(UTC)
        with self._lock:
            previous = self._phases.get(key)
            self._phases[key] = current
            if previous is None or previous == current:
                return
            if current == RUNNING and key not in self._ran:
                self._ran.add(key)
                since = parse_time(created)
                if since is not None:
                    self.time_to_running.observe(max(0.0, (moment - since).total_seconds()))
            elif current in TERMINAL and key not in self._ended:
                self._ended.add(key)
                since = parse_time(started) or parse_time(created)
                if since is not None:
                    seconds = max(0.0, (moment - since).total_seconds())
                    self.job_duration.labels(outcome=current).observe(seconds)

    def observe(
        self,
        ftj: Mapping[str, Any],
        phase: str | None = None,
        patch: Mapping[str, Any] | None = None,
        *,
        now: datetime | None = None,
    ) -> None:
        """:meth:`observe_phase` from a FineTuneJob body and the status patch about to
        be written: the phase is ``phase``, else the patch's, else the stored status's;
        ``startTime`` likewise from the patch, else the stored status."""
        metadata = ftj.get("metadata") or {}
        stored = ftj.get("status") or {}
        update = patch or {}
        self.observe_phase(
            metadata.get("namespace") or "",
            metadata["name"],
            phase or update.get("phase") or stored.get("phase"),
            created=metadata.get("creationTimestamp"),
            started=update.get("startTime") or stored.get("startTime"),
            now=now,
        )
        conditions = update.get("conditions") or stored.get("conditions") or []
        self.observe_gate(
            metadata.get("namespace") or "", metadata["name"], _gate_result(conditions)
        )

    def observe_gate(self, namespace: str, name: str, result: str | None) -> None:
        """Record a job's evaluation gate result (Passed, Failed; None: no verdict yet).

        Counted once per job, when a verdict appears for a job this process saw without
        one; like the phases, the first record of a job is not a change, so an operator
        restart counts no old verdict again."""
        key = (namespace, name)
        with self._lock:
            seen = key in self._gates
            previous = self._gates.get(key)
            self._gates[key] = result
        if seen and previous is None and result is not None:
            self.evaluation_gates.labels(result=result).inc()

    def forget(self, namespace: str, name: str) -> None:
        """The job is gone: stop counting it (a new job of the same name starts afresh)."""
        key = (namespace, name)
        with self._lock:
            self._phases.pop(key, None)
            self._ran.discard(key)
            self._ended.discard(key)
            self._gates.pop(key, None)

    def phase_counts(self) -> dict[str, int]:
        """What the jobs gauge reports now, by phase (for logs and tests)."""
        with self._lock:
            current = list(self._phases.values())
        return {phase: current.count(phase) for phase in (*PHASES, *set(current) - set(PHASES))}

    # ------------------------------------------------------------------ reconciles

    def count_error(self, reason: str) -> None:
        """Count a reconcile error that was handled rather than raised."""
        self.reconcile_errors.labels(reason=reason).inc()

    def timed(self, handler: str) -> Timed:
        """Time a reconcile and count its error, if any; a context manager (``with`` or
        ``async with``) and a decorator of plain and ``async`` functions alike."""
        return Timed(self, handler)

    # ------------------------------------------------------------------ serving

    def serve(
        self, port: int, addr: str = "0.0.0.0", readiness: ReadinessReport | None = None
    ) -> MetricsServer:
        """Serve ``/metrics`` (and ``/readyz`` when a readiness is given) on a thread."""
        return MetricsServer.start(self, port, addr, readiness)


def _gate_result(conditions: Iterable[Any]) -> str | None:
    """Passed or Failed from an EvaluationPassed condition; None without one."""
    for c in conditions:
        if isinstance(c, Mapping) and c.get("type") == EVALUATION_PASSED:
            status = c.get("status")
            return "Passed" if status == "True" else "Failed" if status == "False" else None
    return None


class Timed:
    """One timing of one handler: see :meth:`OperatorMetrics.timed`."""

    def __init__(self, metrics: OperatorMetrics, handler: str) -> None:
        self._metrics = metrics
        self._handler = handler
        self._starts: list[float] = []

    def __enter__(self) -> Timed:
        self._starts.append(time.perf_counter())
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._starts.pop()
        self._metrics.reconcile_duration.labels(handler=self._handler).observe(elapsed)
        # Cancellation and interpreter exit are not reconcile errors.
        if isinstance(exc, Exception):
            self._metrics.count_error(type(exc).__name__)

    async def __aenter__(self) -> Timed:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """Decorate: every call is timed afresh (kopf calls handlers concurrently)."""
        metrics, handler = self._metrics, self._handler
        if inspect.iscoroutinefunction(fn):
            coroutine_fn = cast(Callable[P, Awaitable[Any]], fn)

            @functools.wraps(fn)
            async def timed_coroutine(*args: P.args, **kwargs: P.kwargs) -> Any:
                with Timed(metrics, handler):
                    return await coroutine_fn(*args, **kwargs)

            return cast(Callable[P, R], timed_coroutine)

        @functools.wraps(fn)
        def timed_function(*args: P.args, **kwargs: P.kwargs) -> R:
            with Timed(metrics, handler):
                return fn(*args, **kwargs)

        return timed_function


# ---------------------------------------------------------------------- server


class _SilentHandler(WSGIRequestHandler):
    """Prometheus scrapes every few seconds; a log line per scrape is noise."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _router(metrics_app: WsgiApp, readiness: ReadinessReport | None) -> WsgiApp:
    """``/readyz`` answers from the readiness; every other path is prometheus-client's
    (which serves the metrics on any path, as ``start_http_server`` does)."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if readiness is not None and environ.get("PATH_INFO") == READINESS_PATH:
            ready, body = readiness.report()
            status = "200 OK" if ready else "503 Service Unavailable"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [body.encode()]
        return metrics_app(environ, start_response)

    return app


class MetricsServer:
    """A running metrics server; :meth:`stop` closes its socket (the port is free after)."""

    def __init__(self, server: ThreadingWSGIServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread

    @classmethod
    def start(
        cls, metrics: OperatorMetrics, port: int, addr: str, readiness: ReadinessReport | None
    ) -> MetricsServer:
        """What ``prometheus_client.start_http_server`` does, with ``/readyz`` added: the
        readiness probe shares the metrics port instead of needing a third one (kopf's
        health endpoint serves exactly one path, which is the liveness probe's)."""

        class Server(ThreadingWSGIServer):
            pass

        family, host = _best_family(addr, port)
        Server.address_family = family
        app = _router(cast(WsgiApp, make_wsgi_app(metrics.registry)), readiness)
        server = make_server(host, port, app, Server, handler_class=_SilentHandler)
        thread = threading.Thread(
            target=server.serve_forever, args=(0.1,), name="operator-metrics", daemon=True
        )
        thread.start()
        return cls(server, thread)

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def alive(self) -> bool:
        """Whether the serving thread still runs (the liveness probe asks)."""
        return self._thread.is_alive()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _best_family(addr: str, port: int) -> tuple[socket.AddressFamily, str]:
    """IPv4 or IPv6 as the address asks (``::`` binds IPv6), like prometheus-client."""
    infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])
