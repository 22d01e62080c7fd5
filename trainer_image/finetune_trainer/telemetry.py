"""Progress a running trainer reports: Prometheus gauges on /metrics and JSON log lines.

A trainer pod is watched three ways: Prometheus scrapes ``/metrics`` (dashboards,
alerts), people read ``kubectl logs`` (one compact JSON object per step, so the log is
both readable and parseable), and the CLI needs the last completed step for the
termination message when a run fails. One :class:`Telemetry` object does all three.

Only rank 0 reports: with several training processes every rank sees the same step,
and N copies of each line and N scrape targets would only confuse. Other ranks still
remember their last step (for their own termination message).

Each Telemetry has its own ``CollectorRegistry``: the global one would carry one run's
gauges into the next run of the same process (tests, notebooks).
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import IO, TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Info, ProcessCollector, start_http_server

from finetune_api.redaction import redact, redact_data

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from finetune_api.config import TrainerConfig
    from finetune_trainer.state import StepReport

PREFIX = "finetune_trainer"

Line = dict[str, str | int | float | None]
"""One JSON progress line: camelCase names to numbers (null when not finite) or text."""

# name (without PREFIX) -> help text; docs/operations/metrics.md's table lists the same names.
GAUGES: dict[str, str] = {
    "step": "Optimizer steps completed.",
    "total_steps": "Optimizer steps the run will take (maxSteps, or epochs x steps per epoch).",
    "epoch": "Fractional epoch reached (1.5 = half-way through the second pass).",
    "train_loss": "Training loss of the latest step (token-weighted mean).",
    "eval_loss": "Loss on the validation set at the latest periodic evaluation (NaN before).",
    "learning_rate": "Learning rate of the latest step.",
    "tokens_per_second": "Training throughput: non-padding input tokens per second.",
    "samples_seen": "Training examples consumed so far (a packed sequence counts as one).",
    "eta_seconds": "Estimated seconds until the last step, from the mean step time so far.",
    "peak_memory_bytes": "Peak memory: CUDA memory allocated when on a GPU, else peak RSS.",
}


def rank_from_env() -> int:
    """This process's global rank: torchrun sets RANK; a single process is rank 0."""
    return int(os.environ.get("RANK", "0"))


def peak_memory_bytes() -> int:
    """Peak memory of this run: GPU memory when CUDA is in use, else the process's peak RSS.

    torch is looked up, never imported: when it is not loaded yet CUDA cannot be in use.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows
        import psutil  # type: ignore[import-untyped]

        return int(psutil.Process().memory_info().rss)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def _number(value: float | None, digits: int | None = None) -> float | None:
    """A JSON-safe number: NaN and infinities become null (JSON has no spelling for them)."""
    if value is None or not math.isfinite(value):
        return None
    return round(value, digits) if digits is not None else value


def step_line(report: StepReport, peak_memory: int) -> Line:
    """The JSON progress line for one optimizer step (camelCase, like the job status)."""
    line: Line = {
        "event": "step",
        "step": report.step,
        "totalSteps": report.total_steps,
        "epoch": _number(report.epoch, 4),
        "loss": _number(report.loss),
        "learningRate": _number(report.learning_rate),
        "tokensPerSecond": _number(report.tokens_per_second, 1),
        "samples": report.samples,
        "etaSeconds": _number(report.eta_seconds, 1),
        "peakMemoryBytes": peak_memory,
    }
    if report.grad_norm is not None:
        line["gradNorm"] = _number(report.grad_norm)
    for name, value in report.extras.items():
        line.setdefault(name, _number(value))  # the loop's own fields keep their names
    return line


def eval_line(step: int, scores: Mapping[str, float | None]) -> Line:
    """The JSON line for an evaluation: the step and every score that was measured."""
    measured = {name: _number(value) for name, value in scores.items() if value is not None}
    return {"event": "eval", "step": step, **measured}


@dataclass(frozen=True)
class Progress:
    """Which progress outputs a run shows; the CLI decides (see :func:`progress_for`)."""

    json_lines: bool
    """One JSON object per step and per evaluation on stdout."""
    bar: bool
    """The tqdm bar on stderr, for a person at a terminal."""


def progress_for(*, pod: bool) -> Progress:
    """Pods log JSON lines and no bar: a bar's carriage returns make ``kubectl logs`` a
    mess. Locally the bar is shown when stderr is a terminal, and JSON lines are written
    unless they would land on that same terminal under the bar (``finetune run > log``
    keeps both: the bar on screen, the lines in the file)."""
    if pod:
        return Progress(json_lines=True, bar=False)
    bar = sys.stderr.isatty()
    return Progress(json_lines=not (bar and sys.stdout.isatty()), bar=bar)


QUIET = Progress(json_lines=False, bar=False)


class Telemetry:
    """Serves the run's gauges (when a port is given) and writes its JSON progress lines.

    ``port=None`` serves nothing; ``port=0`` binds a free port (see :attr:`port`). Use as
    a context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        *,
        job_name: str = "",
        method: str = "",
        task: str = "",
        port: int | None = None,
        addr: str = "0.0.0.0",
        rank: int = 0,
        progress: Progress = QUIET,
        stream: IO[str] | None = None,
    ) -> None:
        self.reporting = rank == 0
        self.progress = progress if self.reporting else QUIET
        self.last_step = 0
        self._requested_port = port if self.reporting else None
        self._addr = addr
        self._stream = stream
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self._gauges = {
            name: Gauge(f"{PREFIX}_{name}", text, registry=self.registry)
            for name, text in GAUGES.items()
        }
        self._gauges["eval_loss"].set(math.nan)
        self._eval_scores = Gauge(
            f"{PREFIX}_eval_score",
            "Every score of the latest periodic evaluation, by name (evalLoss, perplexity, ...).",
            ["name"],
            registry=self.registry,
        )
        self._step_metrics = Gauge(
            f"{PREFIX}_step_metric",
            "The loss's own numbers of the latest step, by name (reinforcement: reward, "
            "rewardStd, kl, completionLength, clipFraction, each reward).",
            ["name"],
            registry=self.registry,
        )
        Info(f"{PREFIX}_job", "The job this trainer runs.", registry=self.registry).info(
            {"job": job_name, "method": method, "task": task}
        )
        self._trackers = Gauge(
            f"{PREFIX}_tracker",
            "1 for each experiment tracker the run reports to, with the run's page (url).",
            ["tracker", "url"],
            registry=self.registry,
        )

    @classmethod
    def from_config(
        cls,
        config: TrainerConfig,
        *,
        progress: Progress = QUIET,
        rank: int | None = None,
        addr: str = "0.0.0.0",
        free_port: bool = False,
    ) -> Telemetry:
        """The run's telemetry: /metrics on ``addr`` at ``training.metricsPort`` (0 =
        none), or at a free port with ``free_port``; rank from RANK."""
        port = 0 if free_port else (config.training.metrics_port or None)
        return cls(
            job_name=config.job_name,
            method=config.method.type,
            task=config.task,
            port=port,
            addr=addr,
            rank=rank_from_env() if rank is None else rank,
            progress=progress,
        )

    @property
    def port(self) -> int | None:
        """The port /metrics is served on, or None when nothing is served."""
        return None if self._server is None else int(self._server.server_port)

    @property
    def url(self) -> str | None:
        """Where /metrics is served (``addr`` as given), or None when nothing is."""
        return None if self.port is None else f"http://{self._addr}:{self.port}/metrics"

    def start(self) -> None:
        """Serve /metrics. A taken port is a warning, not a failure: metrics are not
        worth losing a training run for."""
        if self._requested_port is None or self._server is not None:
            return
        try:
            self._server, self._thread = start_http_server(
                self._requested_port, addr=self._addr, registry=self.registry
            )
        except OSError as exc:
            print(
                f"warning: cannot serve trainer metrics on {self._addr}:{self._requested_port} "
                f"({exc.strerror or exc}); training goes on without /metrics. Set "
                "training.metricsPort to a free port, or 0 to turn metrics off.",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        """Stop serving and free the port (a later run in this process may want it)."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Telemetry:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def on_trackers(self, urls: Mapping[str, str]) -> None:
        """The experiment trackers' pages, for the operator to show in the job's status."""
        if not self.reporting:
            return
        for tracker, url in urls.items():
            self._trackers.labels(tracker=tracker, url=redact(url)).set(1)

    def on_step(self, report: StepReport) -> None:
        """After each optimizer step: remember it, update the gauges, log a line."""
        self.last_step = report.step
        if not self.reporting:
            return
        peak = peak_memory_bytes()
        values = {
            "step": report.step,
            "total_steps": report.total_steps,
            "epoch": report.epoch,
            "train_loss": report.loss,
            "learning_rate": report.learning_rate,
            "tokens_per_second": report.tokens_per_second,
            "samples_seen": report.samples,
            "eta_seconds": report.eta_seconds,
            "peak_memory_bytes": peak,
        }
        for name, value in values.items():
            self._gauges[name].set(value)
        for name, value in report.extras.items():
            self._step_metrics.labels(name=name).set(value)
        self._write(step_line(report, peak))

    def on_eval(self, scores: Mapping[str, float | None], step: int | None = None) -> None:
        """After an evaluation (at ``step``, default the last step reported)."""
        if not self.reporting:
            return
        measured = {name: value for name, value in scores.items() if value is not None}
        if "evalLoss" in measured:
            self._gauges["eval_loss"].set(measured["evalLoss"])
        for name, value in measured.items():
            self._eval_scores.labels(name=name).set(value)
        self._write(eval_line(self.last_step if step is None else step, measured))

    def _write(self, line: Line) -> None:
        if not self.progress.json_lines:
            return
        stream = self._stream or sys.stdout  # looked up per line: tests swap sys.stdout
        shown = redact_data(line)  # its texts (score names) pass the redaction layer too
        stream.write(json.dumps(shown, separators=(",", ":"), allow_nan=False) + "\n")
        stream.flush()
