"""The kopf registrations: what the operator watches, and with which filters.

Each handler is a shell: it takes what kopf hands it (the body, the memo, the indexes)
and calls :mod:`~finetune_operator.reconcile`, where the work is. What is decided here
is only what kopf needs to know at registration time: the resources and label filters,
the timer's interval, the ``when`` filters (so kopf neither invokes nor logs a handler
for events it does not care about), and kopf's own settings. Importing this module
registers everything with kopf's default registry.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from finetune_api.config import API_GROUP
from finetune_api.redaction import install_logging
from finetune_api.resource import PLURAL, VERSION
from finetune_operator import names, reconcile
from finetune_operator.hub import HubConfigs
from finetune_operator.kube import Kube, default_api_client
from finetune_operator.observation.metrics import OperatorMetrics
from finetune_operator.observation.probes import Readiness, register_probes
from finetune_operator.planning import ModelFacts
from finetune_operator.reconcile import Cache
from finetune_operator.settings import Settings

FTJ = (API_GROUP, VERSION, PLURAL)
OURS = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
PROGRESS_INTERVAL = float(os.environ.get("FINETUNE_PROGRESS_INTERVAL", "15"))
"""Seconds between progress scrapes of a running trainer: a Running job's status is
refreshed at least every FINETUNE_PROGRESS_INTERVAL seconds (15 by default), and at once on
any change of its Job or pods. Read at import, because kopf fixes a timer's interval when
it is registered."""


# --------------------------------------------------------------------------- startup


def start_runtime(settings: Settings) -> kopf.Memo:
    """What the handlers share, started before kopf: the API client, the metrics server
    (with ``/readyz``, ready once kopf's startup is done) and the health probes. Every
    log record, kopf's included (which kopf also posts as Events), passes the
    redaction layer first."""
    install_logging()
    readiness = Readiness()
    metrics = OperatorMetrics()
    server = metrics.serve(settings.metrics_port, readiness=readiness)
    register_probes(readiness=readiness, server=server, metrics=metrics)
    return kopf.Memo(
        settings=settings,
        kube=Kube(default_api_client()),
        metrics=metrics,
        metrics_server=server,
        readiness=readiness,
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # kopf's bookkeeping goes to annotations under our own prefix, not to status (ours)
    # and not to spec; children go with ownerReferences. kopf's own finalizer is on a
    # FineTuneJob only while it is Running (kopf's timers need one to stop them before
    # the object goes): deleting a Running job waits for the operator, others do not.
    prefix = "finetune-operator.io"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING  # our own Events say what happened
    settings.watching.server_timeout = 300
    # After its own patch kopf waits for the watch event carrying that resourceVersion
    # before it handles the object again; when the wait runs out it handles the stale body
    # it has, which lacks kopf's own progress annotations, and runs the create handler a
    # second time. The default 5 s runs out whenever the operator is more than 5 s behind
    # (a burst of hundreds of FineTuneJobs): benchmarks/README.md measured 2.7 reconciles
    # per job at 1,000 jobs, each with its API calls, which slowed everything further.
    # On a live watch that event always comes, so the longer wait costs time only when it
    # is lost (a broken watch): then that one object is handled up to 60 s late.
    settings.persistence.consistency_timeout = 60.0
    # Resources are resolved once at startup (the chart installs the CRD first): no
    # cluster-wide watches of namespaces or CRDs, so no RBAC for them.
    settings.scanning.disabled = True
    # Tests hand in their own memo parts; a bare operator gets defaults.
    if memo.get("settings") is None:
        memo.settings = Settings.from_env()
    if memo.get("kube") is None:
        memo.kube = Kube(default_api_client())
    if memo.get("metrics") is None:
        memo.metrics = OperatorMetrics()
    if memo.get("hub") is None:
        memo.hub = HubConfigs(memo.settings.hub_endpoint)


@kopf.on.cleanup()
def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    server = memo.get("metrics_server")
    if server is not None:
        server.stop()


@kopf.on.cleanup()
async def close_hub(memo: kopf.Memo, **_: Any) -> None:
    """The Hub client's connections (its session lives on kopf's event loop)."""
    hub = memo.get("hub")
    if hub is not None:
        await hub.close()


# --------------------------------------------------------------------------- creation


@kopf.on.create(*FTJ)
async def created(
    body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """Validate, plan, create the children, and write the first status."""
    await _ensure_children(memo, dict(body), _namespaced(namespace), name, resuming=False)


@kopf.on.resume(*FTJ)
async def resumed(
    body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    """After an operator restart: adopt the children, catch up with a ``spec.suspend``
    changed meanwhile, and refresh the status from fresh reads."""
    await _ensure_children(memo, dict(body), _namespaced(namespace), name, resuming=True)


async def _ensure_children(
    memo: kopf.Memo, ftj: dict[str, Any], namespace: str, name: str, *, resuming: bool
) -> None:
    """The base model's shape read here, on the event loop (an HTTP request, cached per
    model), then reconcile's blocking API calls in a thread, as kopf runs a plain
    handler (the context, kopf's Event queue included, goes with it)."""
    model = await _model_facts(memo.hub, ftj) if reconcile.needs_plan(ftj) else None
    await asyncio.to_thread(
        reconcile.ensure_children,
        memo.kube,
        memo.metrics,
        memo.settings,
        ftj,
        namespace,
        name,
        resuming=resuming,
        model=model,
    )


async def _model_facts(hub: HubConfigs, ftj: dict[str, Any]) -> ModelFacts:
    model = ((ftj.get("spec") or {}).get("model")) or {}
    uri, revision = model.get("uri"), model.get("revision")
    if not isinstance(uri, str):
        uri = ""  # an invalid spec: reconcile refuses it before planning
    return await hub.model(uri, revision if isinstance(revision, str) else None)


# --------------------------------------------------------------------------- changes


@kopf.on.update(*FTJ, field="spec")
def spec_changed(body: kopf.Body, diff: kopf.Diff, memo: kopf.Memo, **kwargs: Any) -> None:
    """Bring the Job's suspension in line with ``spec.suspend``; refuse any other change.
    Status changes never call this: the handler watches ``spec`` only."""
    reconcile.sync_suspension(memo.kube, memo.metrics, dict(body), Cache.of(kwargs))
    reconcile.refuse_spec_changes(body, diff)


# --------------------------------------------------------------------------- indexes


# Indexers are coroutines: kopf runs plain functions in its thread pool, a hop per event
# of every FineTuneJob, Job and pod for what is a dictionary lookup. Their function names
# are the keyword arguments kopf passes the indexes by (reconcile.Cache.of reads them).
@kopf.index(*FTJ)
async def ftj_index(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> Any:
    """FineTuneJobs by (namespace, name): what a status derivation reads of them (not
    kopf's annotations, whose last-handled copy of the spec would double the memory)."""
    meta = body.metadata
    essentials = {"name": name, "namespace": namespace, "uid": meta.uid}
    for key in ("generation", "creationTimestamp"):  # observedGeneration; time to running
        if meta.get(key) is not None:
            essentials[key] = meta[key]
    return {
        (namespace, name): {
            "metadata": essentials,
            "spec": dict(body.spec),
            "status": dict(body.status),
        }
    }


@kopf.index("batch", "v1", "jobs", labels=OURS)
async def job_index(namespace: str | None, labels: Any, body: kopf.Body, **_: Any) -> Any:
    """Trainer Jobs by (namespace, FineTuneJob name)."""
    owner = labels.get(names.LABEL_JOB)
    return {(namespace, owner): dict(body)} if owner else None


@kopf.index("", "v1", "pods", labels=OURS)
async def pod_index(namespace: str | None, labels: Any, body: kopf.Body, **_: Any) -> Any:
    """Trainer pods by (namespace, FineTuneJob name)."""
    owner = labels.get(names.LABEL_JOB)
    return {(namespace, owner): dict(body)} if owner else None


# --------------------------------------------------------------------------- status


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
@kopf.on.event("", "v1", "pods", labels=OURS)
def child_changed(labels: Any, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    owner = labels.get(names.LABEL_JOB)
    if owner:
        reconcile.refresh(memo.kube, memo.metrics, _namespaced(namespace), owner, Cache.of(kwargs))


def _running(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == "Running"


# ``when`` rather than ``field="status.phase"``: kopf adds a filter's field to the state it
# diffs for update handlers, and every phase change would then count as an update.
@kopf.timer(*FTJ, interval=PROGRESS_INTERVAL, idle=0, when=_running)
def progress_timer(name: str, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    reconcile.refresh(memo.kube, memo.metrics, _namespaced(namespace), name, Cache.of(kwargs))


def _deleted(type: str, **_: Any) -> bool:
    return type == "DELETED"


# Filtered with ``when``, so kopf neither invokes nor logs it for the other events.
@kopf.on.event(*FTJ, when=_deleted)
async def forget_deleted(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    memo.metrics.forget(_namespaced(namespace), name)


def _namespaced(namespace: str | None) -> str:
    if namespace is None:  # FineTuneJobs, Jobs and Pods are all namespaced
        raise kopf.PermanentError("a namespaced object without a namespace")
    return namespace
