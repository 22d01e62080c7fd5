"""A running trainer's progress, read from its Prometheus endpoint by the operator.

Why scraping: the trainer already serves ``finetune_trainer_*`` gauges on
``training.metricsPort`` (rank 0 only) for Prometheus, so reading them needs nothing
new from the trainer, and above all no API rights: a trainer pod that patched its own
FineTuneJob status would need a ServiceAccount allowed to write FineTuneJobs, which a
pod running user-chosen models and data should not have. The cost is a network path
from the operator to the trainer pods on the metrics port, which a NetworkPolicy that
isolates training namespaces must allow (docs/operations/metrics.md says how).

Everything here is a pure function of its inputs except :func:`scrape`, which does one
HTTP GET and never raises: a trainer that is not up yet, restarting or gone is normal
while a job runs, and the caller simply keeps the last progress it had.
"""

from __future__ import annotations

import http.client
import logging
import math
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from finetune_operator.status.pods import completion_index
from finetune_operator.values import EPOCH, finite, get, parse_time, whole

log = logging.getLogger(__name__)

PREFIX = "finetune_trainer_"
MAX_BYTES = 1 << 20
"""A trainer's /metrics is a few KiB; anything past 1 MiB is not one."""

# No proxy for pod IPs: HTTP(S)_PROXY set for the operator's own egress must not send
# a scrape of a pod on the cluster network through a corporate proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

Pod = TypeVar("Pod", bound=Mapping[str, Any])


@dataclass(frozen=True)
class TrainerProgress:
    """One reading of the trainer's gauges. Values the trainer does not know yet (NaN,
    like ``eval_loss`` before the first evaluation) or cannot express (an infinite
    loss) are None: the status is JSON, which has no spelling for either."""

    step: int
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    samples_seen: int | None = None
    peak_memory_bytes: int | None = None
    eval_scores: Mapping[str, float] = field(default_factory=dict)
    """Every score of the latest evaluation by name (``finetune_trainer_eval_score``)."""
    job_name: str | None = None
    """The job the trainer says it runs (``finetune_trainer_job_info``): a pod IP can be
    reused by another pod, so a caller can check the reading is its own trainer's."""
    trackers: Mapping[str, str] = field(default_factory=dict)
    """Each experiment tracker's page of the run (``finetune_trainer_tracker``)."""
    step_metrics: Mapping[str, float] = field(default_factory=dict)
    """The loss's own numbers of the latest step by name (``finetune_trainer_step_metric``:
    reinforcement's reward, kl, ...)."""

    @property
    def reward(self) -> float | None:
        """The mean reward of the latest step's sampled completions (task reinforcement);
        None for other tasks."""
        return self.step_metrics.get("reward")

    @property
    def percent(self) -> int | None:
        """Whole percent of steps done, 0-100; None when the total is unknown."""
        if not self.total_steps:
            return None
        return max(0, min(100, math.floor(100 * self.step / self.total_steps)))


def parse(text: str) -> TrainerProgress | None:
    """The progress in a Prometheus text exposition; None when it holds no
    ``finetune_trainer_step`` (it is some other program's metrics)."""
    plain: dict[str, float] = {}
    scores: dict[str, float] = {}
    step_metrics: dict[str, float] = {}
    job_name: str | None = None
    trackers: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.startswith(PREFIX):
                continue
            name = sample.name[len(PREFIX) :]
            if name == "eval_score" and "name" in sample.labels:
                if math.isfinite(sample.value):
                    scores[sample.labels["name"]] = sample.value
            elif name == "step_metric" and "name" in sample.labels:
                if math.isfinite(sample.value):
                    step_metrics[sample.labels["name"]] = sample.value
            elif name == "job_info":
                job_name = sample.labels.get("job") or None
            elif name == "tracker" and sample.value == 1:
                tracker, url = sample.labels.get("tracker"), sample.labels.get("url")
                if tracker and url:
                    trackers[tracker] = url
            elif not sample.labels:
                plain[name] = sample.value
    step = whole(plain.get("step"))
    if step is None:
        return None
    return TrainerProgress(
        step=step,
        total_steps=whole(plain.get("total_steps")),
        epoch=finite(plain.get("epoch")),
        train_loss=finite(plain.get("train_loss")),
        eval_loss=finite(plain.get("eval_loss")),
        learning_rate=finite(plain.get("learning_rate")),
        tokens_per_second=finite(plain.get("tokens_per_second")),
        eta_seconds=finite(plain.get("eta_seconds")),
        samples_seen=whole(plain.get("samples_seen")),
        peak_memory_bytes=whole(plain.get("peak_memory_bytes")),
        eval_scores=scores,
        job_name=job_name,
        trackers=trackers,
        step_metrics=step_metrics,
    )


def scrape(url: str, timeout: float = 5) -> TrainerProgress | None:
    """GET the trainer's /metrics and parse it; None on any failure (refused, timed
    out, an HTTP error, not Prometheus text, not a trainer), logged at debug level.

    Blocking: kopf runs the (plain) handlers that call it on its worker threads.
    ``timeout`` bounds each socket operation (connect, each read), as urllib does.
    """
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body: bytes = response.read(MAX_BYTES + 1)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        log.debug("trainer metrics at %s unreadable: %s", url, exc)
        return None
    if len(body) > MAX_BYTES:
        log.debug("trainer metrics at %s larger than %d bytes; ignored", url, MAX_BYTES)
        return None
    try:
        return parse(body.decode("utf-8"))
    except Exception as exc:  # the parser raises what it likes on garbage
        log.debug("trainer metrics at %s not Prometheus text: %r", url, exc)
        return None


def metrics_url(pod: Mapping[str, Any], port: int) -> str | None:
    """The trainer's /metrics URL on a pod (``status.podIP``), None before it has an IP."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    host = f"[{ip}]" if ":" in ip else ip  # IPv6 literal
    return f"http://{host}:{port}/metrics"


def _created(pod: Mapping[str, Any]) -> datetime:
    return parse_time(get(pod, "metadata").get("creationTimestamp")) or EPOCH


def _running(pod: Mapping[str, Any]) -> bool:
    return get(pod, "status").get("phase") == "Running" and not get(pod, "metadata").get(
        "deletionTimestamp"
    )


def rank0_pod(pods: Iterable[Pod]) -> Pod | None:
    """The pod whose trainer reports: rank 0 is completion index 0 of an Indexed Job
    (multi-node), or the only pod of a plain Job. Only running pods not being deleted
    count; of several (a replacement overlapping its predecessor), the newest wins."""
    running = [pod for pod in pods if _running(pod)]
    indexed = [pod for pod in running if completion_index(pod) is not None]
    candidates = [pod for pod in indexed if completion_index(pod) == "0"] if indexed else running
    return max(candidates, key=_created, default=None)
