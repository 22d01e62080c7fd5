"""The kopf handlers: thin shells around the builders, the status derivation and the API.

* A FineTuneJob appears (or the operator restarts and finds one): validate it with the
  same models as ``finetune validate``; if invalid, say so in status and an Event and
  create nothing; if valid, create (or adopt) its ConfigMap, Service and Job.
* A trainer Job or pod changes, or the progress timer fires: take the FineTuneJob's Job
  and pods from kopf's indexes (filled by the watches, so reading them costs no request),
  scrape the trainer's metrics, derive the status and, only if it changed, read the
  FineTuneJob once (the index may lag the operator's own last write), write the status
  and post an Event when the phase changed.
* The spec changes: suspend or resume the Job as ``spec.suspend`` says. Any other spec
  change is refused (the Job runs the spec it was created with): a Warning Event says so.

The operator writes only the FineTuneJob's ``status`` (through the status subresource)
and kopf's bookkeeping annotations; never ``spec`` or anything a GitOps tool owns.

API requests per FineTuneJob are counted by benchmarks/operator_scale.py: creating one
costs its ConfigMap and Job, one status write, one Event and kopf's own annotation patch;
a Pending job costs nothing, a Running one a status write per progress scrape.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import kopf

from finetune_api.config import API_GROUP
from finetune_api.manifests import validate_body
from finetune_api.render import RenderError, render_trainer_config
from finetune_api.resource import KIND, PLURAL, VERSION, FineTuneJob
from finetune_operator import builders, names, progress, status
from finetune_operator.kube import Kube, NotOurs, default_api_client
from finetune_operator.metrics import OperatorMetrics
from finetune_operator.probes import Readiness, register_probes
from finetune_operator.settings import Settings

log = logging.getLogger("finetune.operator")

FTJ = (API_GROUP, VERSION, PLURAL)
OURS = {names.LABEL_MANAGED_BY: names.MANAGED_BY}
PROGRESS_INTERVAL = float(os.environ.get("FINETUNE_PROGRESS_INTERVAL", "15"))
"""Seconds between progress scrapes of a running trainer (status refreshed at least every
30 s; read at import, because kopf fixes a timer's interval when it is registered)."""


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --------------------------------------------------------------------------- startup


def start_runtime(settings: Settings) -> kopf.Memo:
    """What the handlers share, started before kopf: the API client, the metrics server
    (with ``/readyz``, ready once kopf's startup is done) and the health probes."""
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


@kopf.on.cleanup()
def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    server = memo.get("metrics_server")
    if server is not None:
        server.stop()


# --------------------------------------------------------------------------- creation


@kopf.on.create(*FTJ)
def created(body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Validate, create the children, and write the first status from the Job just
    created (no read: nothing has happened to it yet)."""
    reconcile(body, _namespaced(namespace), name, memo, resuming=False)


@kopf.on.resume(*FTJ)
def resumed(body: kopf.Body, name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    """After an operator restart: adopt the children, catch up with a ``spec.suspend``
    changed meanwhile, and refresh the status from fresh reads."""
    reconcile(body, _namespaced(namespace), name, memo, resuming=True)


def reconcile(
    body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, *, resuming: bool
) -> None:
    """Validate, then create or adopt the children; idempotent, so a restart is safe."""
    kube: Kube = memo.kube
    metrics: OperatorMetrics = memo.metrics
    ftj = dict(body)
    with metrics.timed("reconcile"):
        job, problem = _validated(ftj)
        if job is None:
            _write(kube, metrics, ftj, status.invalid_spec(ftj, problem, now()))
            return
        config = render_trainer_config(job)
        children = builders.build_children(job, config, body.metadata.uid, memo.settings)
        trainer_job: dict[str, Any] | None = None
        made = []
        try:
            for child in children:
                obj, new = kube.create_or_adopt(child, body.metadata.uid)
                if new:
                    made.append(child["kind"])
                if child["kind"] == "Job":
                    trainer_job = obj
        except NotOurs as exc:
            _write(kube, metrics, ftj, status.invalid_spec(ftj, str(exc), now()))
            return
        if made:
            log.info("%s/%s: created %s", namespace, name, ", ".join(made))
        if not resuming and not (body.get("status") or {}).get("phase"):
            first = status.accepted(ftj, names.job_name(name), now())
            ftj = {**ftj, "status": {**(ftj.get("status") or {}), **first.patch}}
            update = status.derive(ftj, trainer_job, [], None, now())
            _write(kube, metrics, ftj, update, earlier=first)
            return
        if not (body.get("status") or {}).get("phase"):
            _write(kube, metrics, ftj, status.accepted(ftj, names.job_name(name), now()))
        sync_suspension(kube, metrics, ftj, None)  # a change made while no operator ran
        refresh(kube, metrics, namespace, name, None)


def _validated(ftj: dict[str, Any]) -> tuple[FineTuneJob | None, str]:
    """The FineTuneJob, or why it cannot run: the same checks as ``finetune validate``."""
    job, problems = validate_body({k: v for k, v in ftj.items() if k != "status"})
    if job is None:
        return None, "; ".join(str(p) for p in problems)
    try:
        render_trainer_config(job)
    except (RenderError, ValueError) as exc:
        return None, str(exc)
    cluster = builders.cluster_problems(job)
    if cluster:
        return None, "; ".join(cluster)
    return job, ""


# --------------------------------------------------------------------------- changes


@kopf.on.update(*FTJ, field="spec")
def spec_changed(body: kopf.Body, diff: kopf.Diff, memo: kopf.Memo, **kwargs: Any) -> None:
    """Bring the Job's suspension in line with ``spec.suspend``; refuse any other change
    (the Job runs the spec it was created with). Status changes never call this: the
    handler watches ``spec`` only (``diff`` paths are relative to it)."""
    sync_suspension(memo.kube, memo.metrics, dict(body), Cache.of(kwargs))
    changed = sorted(
        {
            ".".join(("spec", *(str(part) for part in field)))
            for _, field, _, _ in diff
            if field[:1] != ("suspend",)
        }
    )
    if changed:
        kopf.warn(
            body,
            reason="SpecChangeRejected",
            message=f"{', '.join(changed)} changed after creation and is ignored: the running "
            "Job keeps the original spec. Create a new FineTuneJob to train with the new one.",
        )


def sync_suspension(
    kube: Kube, metrics: OperatorMetrics, ftj: dict[str, Any], cache: Cache | None
) -> None:
    """Suspend or resume the Job as ``spec.suspend`` says (see builders.suspend_patch)."""
    namespace, name = ftj["metadata"]["namespace"], ftj["metadata"]["name"]
    job = cache.job(namespace, name) if cache else kube.get_job(namespace, names.job_name(name))
    if job is None:
        return  # not created yet: it will be built with the current value
    patch = builders.suspend_patch(ftj.get("spec") or {}, job)
    if patch is not None:
        kube.patch_job(namespace, names.job_name(name), patch)
        refresh(kube, metrics, namespace, name, None)


# --------------------------------------------------------------------------- status


# Indexers are coroutines: kopf runs plain functions in its thread pool, a hop per event
# of every FineTuneJob, Job and pod for what is a dictionary lookup.
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


@dataclass(frozen=True)
class Cache:
    """The watches' view of FineTuneJobs, Jobs and pods (kopf's indexes): current for the
    object whose event is being handled, possibly a moment behind for the others."""

    ftjs: kopf.Index[Any, Any]
    jobs: kopf.Index[Any, Any]
    pods: kopf.Index[Any, Any]

    @classmethod
    def of(cls, kwargs: dict[str, Any]) -> Cache:
        """From a handler's keyword arguments (kopf passes each index by its name)."""
        return cls(kwargs["ftj_index"], kwargs["job_index"], kwargs["pod_index"])

    def ftj(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self.ftjs.get((namespace, name), [])), None)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self.jobs.get((namespace, name), [])), None)

    def pods_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self.pods.get((namespace, name), []))


@kopf.on.event("batch", "v1", "jobs", labels=OURS)
@kopf.on.event("", "v1", "pods", labels=OURS)
def child_changed(labels: Any, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    owner = labels.get(names.LABEL_JOB)
    if owner:
        refresh(memo.kube, memo.metrics, _namespaced(namespace), owner, Cache.of(kwargs))


def _running(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == "Running"


# ``when`` rather than ``field="status.phase"``: kopf adds a filter's field to the state it
# diffs for update handlers, and every phase change would then count as an update.
@kopf.timer(*FTJ, interval=PROGRESS_INTERVAL, idle=0, when=_running)
def progress_timer(name: str, namespace: str | None, memo: kopf.Memo, **kwargs: Any) -> None:
    refresh(memo.kube, memo.metrics, _namespaced(namespace), name, Cache.of(kwargs))


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


def refresh(
    kube: Kube, metrics: OperatorMetrics, namespace: str, name: str, cache: Cache | None
) -> None:
    """Derive the status from the Job, its pods and the trainer's progress; write it if
    it changed.

    With a ``cache`` the Job and pods come from the watches and a derivation that
    changes nothing costs no request; a change is derived again from a fresh read of
    the FineTuneJob, so an index a moment behind the operator's own last write never
    repeats a write or an Event. Without one (startup), everything is read.
    """
    with metrics.timed("status"):
        if cache is None:
            ftj = kube.get_ftj(namespace, name)
            job = kube.get_job(namespace, names.job_name(name))
            pods = kube.list_pods(namespace, name) if job is not None else []
        else:
            ftj = cache.ftj(namespace, name)
            job, pods = cache.job(namespace, name), cache.pods_of(namespace, name)
        if ftj is None or _marked_invalid(ftj):
            return  # deleted, or invalid (its status says so already)
        if cache is not None and not (ftj.get("status") or {}).get("phase"):
            return  # the create handler writes the first status, from the Job it created
        scraped = _scrape(ftj, pods)
        update = status.derive(ftj, job, pods, scraped, now())
        if cache is not None:
            if not _changes(ftj, update):
                _observe(metrics, ftj, update)
                return
            ftj = kube.get_ftj(namespace, name)
            if ftj is None or _marked_invalid(ftj):
                return
            update = status.derive(ftj, job, pods, scraped, now())
        _write(kube, metrics, ftj, update)


def _marked_invalid(ftj: dict[str, Any]) -> bool:
    """Whether reconcile found the spec invalid. The spec is immutable, so its verdict
    stands; refreshes (every Job and pod event) need not validate and render it again."""
    conditions = (ftj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Validated" and c.get("status") == "False" for c in conditions)


def _scrape(ftj: dict[str, Any], pods: list[dict[str, Any]]) -> progress.TrainerProgress | None:
    port = ((ftj.get("spec") or {}).get("training") or {}).get("metricsPort", 9090)
    pod = progress.rank0_pod(pods)
    url = progress.metrics_url(pod, port) if pod is not None and port else None
    return progress.scrape(url) if url else None


def _changes(ftj: dict[str, Any], update: status.StatusUpdate) -> bool:
    current = ftj.get("status") or {}
    return any(current.get(k) != v for k, v in update.patch.items())


def _observe(metrics: OperatorMetrics, ftj: dict[str, Any], update: status.StatusUpdate) -> None:
    phase = update.patch.get("phase", (ftj.get("status") or {}).get("phase"))
    if phase:
        metrics.observe(ftj, phase, update.patch)


def _write(
    kube: Kube,
    metrics: OperatorMetrics,
    ftj: dict[str, Any],
    update: status.StatusUpdate,
    *,
    earlier: status.StatusUpdate | None = None,
) -> None:
    """Write ``update`` (merged over an ``earlier`` one not written yet, in one request)
    if it changes the status, and post the Events of both."""
    meta = ftj["metadata"]
    patch = {**earlier.patch, **update.patch} if earlier is not None else update.patch
    if earlier is not None or _changes(ftj, update):
        kube.patch_ftj_status(meta["namespace"], meta["name"], patch)
    _observe(metrics, ftj, update)
    events = [u.event for u in (earlier, update) if u is not None and u.event is not None]
    for kind, reason, message in events:
        reference = kopf.Body(
            {
                "apiVersion": f"{API_GROUP}/{VERSION}",
                "kind": KIND,
                "metadata": {
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
            }
        )
        kopf.event(reference, type=kind, reason=reason, message=message)
