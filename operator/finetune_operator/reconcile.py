"""Reconciling a FineTuneJob: what each handler does, between the API and the pure parts.

* A FineTuneJob appears (or the operator restarts and finds one): :func:`ensure_children`
  validates it with the same models as ``finetune validate``; if invalid, says so in
  status and an Event and creates nothing; if valid, plans it
  (:mod:`~finetune_operator.planning`, from the base model's shape the handler read
  through :mod:`~finetune_operator.hub`): if its GPUs cannot hold it, fails it the same
  way (WontFit); else creates (or adopts) its ConfigMap, Service and Job, as
  :mod:`~finetune_operator.builders` builds them, and writes the plan with the first
  status.
* A trainer Job or pod changes, or the progress timer fires: :func:`refresh` takes the
  FineTuneJob's Job and pods from kopf's indexes (:class:`Cache`: filled by the watches,
  so reading them costs no request), scrapes the trainer's metrics, derives the status
  (:mod:`~finetune_operator.status`) and, only if it changed, reads the FineTuneJob once
  (the index may lag the operator's own last write), writes the status and posts an
  Event when the phase changed.
* The spec changes: :func:`sync_suspension` suspends or resumes the Job as
  ``spec.suspend`` says; :func:`refuse_spec_changes` says, in a Warning Event, that any
  other change is ignored (the Job runs the spec it was created with).

The operator writes only the FineTuneJob's ``status`` (through the status subresource)
and kopf's bookkeeping annotations; never ``spec`` or anything a GitOps tool owns.

API requests per FineTuneJob are counted by benchmarks/operator_scale.py: creating one
costs its ConfigMap and Job, one status write, one Event and kopf's own annotation patch;
a Pending job costs nothing, a Running one a status write per progress scrape.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from finetune_api.config import API_GROUP
from finetune_api.manifests import validate_body
from finetune_api.render import render_trainer_config
from finetune_api.resource import KIND, VERSION, FineTuneJob
from finetune_operator import builders, names, planning, runtime, status
from finetune_operator.kube import Kube, NotOurs
from finetune_operator.observation import progress
from finetune_operator.observation.metrics import OperatorMetrics
from finetune_operator.planning import ModelFacts
from finetune_operator.settings import Settings

log = logging.getLogger("finetune.operator")


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# --------------------------------------------------------------------------- creation


def ensure_children(
    kube: Kube,
    metrics: OperatorMetrics,
    settings: Settings,
    ftj: dict[str, Any],
    namespace: str,
    name: str,
    *,
    resuming: bool,
    model: ModelFacts | None = None,
) -> None:
    """Validate, plan, then create or adopt the children; idempotent, so a restart is
    safe.

    A job not yet accepted is planned from ``model``, its base model's shape, which the
    handler reads when :func:`needs_plan` says so (None: no planning): one that cannot
    fit its GPUs fails here, with nothing created; otherwise the verdict goes into the
    first status write. When a new
    FineTuneJob is created, the first status is written from the Job just created (no
    read: nothing has happened to it yet). When ``resuming`` (an operator restart), a
    ``spec.suspend`` changed meanwhile is caught up with and the status is refreshed
    from fresh reads.
    """
    had_phase = bool((ftj.get("status") or {}).get("phase"))
    with metrics.timed("reconcile"):
        resolved = _resolve_runtime(kube, settings, ftj, namespace)
        if isinstance(resolved, runtime.Refusal):
            if had_phase:
                # Admitted under the runtime as it was then: a runtime tightened or
                # removed since must not fail a job that already runs (its children
                # exist and are kept as they are; create_or_adopt changes nothing).
                log.warning(
                    "%s/%s: its runtime would refuse it now (%s); it keeps running as "
                    "it was admitted",
                    namespace,
                    name,
                    resolved.message,
                )
                resolved = runtime.Resolved(dict(ftj.get("spec") or {}), settings, None)
            else:
                if not _refused(ftj):
                    update = status.invalid_spec(ftj, resolved.message, now(), resolved.reason)
                    _write(kube, metrics, ftj, update)
                return
        settings = resolved.settings
        body = {**ftj, "spec": resolved.spec}
        job, problem = admit(body)
        if job is None:
            _write(kube, metrics, ftj, status.invalid_spec(ftj, problem, now()))
            return
        if _refused(ftj):
            return  # it won't fit (the spec is immutable): a restart creates nothing
        planned = planning.planned(job, model) if model is not None else None
        if planned is not None and planned.refuses:
            _write(kube, metrics, ftj, status.wont_fit(ftj, planned, now()))
            return
        uid = ftj["metadata"].get("uid")
        config = render_trainer_config(job)
        children = builders.build_children(job, config, uid, settings)
        trainer_job: dict[str, Any] | None = None
        made = []
        try:
            for child in children:
                obj, new = kube.create_or_adopt(child, uid)
                if new:
                    made.append(child["kind"])
                if child["kind"] == "Job":
                    trainer_job = obj
        except NotOurs as exc:
            _write(kube, metrics, ftj, status.invalid_spec(ftj, str(exc), now()))
            return
        if made:
            log.info("%s/%s: created %s", namespace, name, ", ".join(made))
        if not resuming and not had_phase:
            first = status.accepted(ftj, names.job_name(name), now(), planned)
            if resolved.status is not None:  # the runtime the Job was built from, once
                first = status.StatusUpdate(
                    {**first.patch, "runtime": resolved.status}, first.event
                )
            ftj = {**ftj, "status": {**(ftj.get("status") or {}), **first.patch}}
            update = status.derive(ftj, trainer_job, [], None, now())
            _write(kube, metrics, ftj, update, earlier=first)
            return
        if not had_phase:
            update = status.accepted(ftj, names.job_name(name), now(), planned)
            _write(kube, metrics, ftj, update)
        sync_suspension(kube, metrics, ftj, None)  # a change made while no operator ran
        refresh(kube, metrics, namespace, name, None)


def _resolve_runtime(
    kube: Kube, settings: Settings, ftj: dict[str, Any], namespace: str
) -> runtime.Resolved | runtime.Refusal:
    """The job's runtime merged under its spec (finetune_operator.runtime), read fresh:
    two list requests per reconcile, cluster runtimes only where the role may read them
    (a cluster-wide install)."""
    namespaced, cluster = kube.list_runtimes(namespace, cluster=not settings.namespaces)
    return runtime.resolve(ftj.get("spec") or {}, namespaced, cluster, settings)


def needs_plan(ftj: Mapping[str, Any]) -> bool:
    """Whether :func:`ensure_children` plans ``ftj``: only before its first status (a
    job with a phase was planned when it was accepted, or predates planning), so an
    operator restart reads no Hub for the jobs it resumes."""
    return not (ftj.get("status") or {}).get("phase")


def admit(ftj: dict[str, Any]) -> tuple[FineTuneJob | None, str]:
    """The FineTuneJob, or why it cannot run in a cluster: the contract's verdict, the
    same as ``finetune validate --cluster`` (finetune_api.rules), before any child
    object exists."""
    job, problems = validate_body({k: v for k, v in ftj.items() if k != "status"}, "cluster")
    if job is None:
        return None, "; ".join(str(p) for p in problems)
    return job, ""


# --------------------------------------------------------------------------- changes


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


def refuse_spec_changes(body: kopf.Body, diff: kopf.Diff) -> None:
    """A Warning Event naming every changed spec field but ``suspend`` (``diff`` paths are
    relative to ``spec``): the running Job keeps the spec it was created with."""
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


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Cache:
    """The watches' view of FineTuneJobs, Jobs and pods (kopf's indexes): current for the
    object whose event is being handled, possibly a moment behind for the others."""

    ftjs: kopf.Index[Any, Any]
    jobs: kopf.Index[Any, Any]
    pods: kopf.Index[Any, Any]

    @classmethod
    def of(cls, kwargs: dict[str, Any]) -> Cache:
        """From a handler's keyword arguments (kopf passes each index by the name of its
        function: handlers.ftj_index, job_index and pod_index)."""
        return cls(kwargs["ftj_index"], kwargs["job_index"], kwargs["pod_index"])

    def ftj(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self.ftjs.get((namespace, name), [])), None)

    def job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return next(iter(self.jobs.get((namespace, name), [])), None)

    def pods_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        return list(self.pods.get((namespace, name), []))


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
        if ftj is None or _refused(ftj):
            return  # deleted, or refused (its status says so already)
        if cache is not None and not (ftj.get("status") or {}).get("phase"):
            return  # the create handler writes the first status, from the Job it created
        scraped = _scrape(ftj, pods)
        update = status.derive(ftj, job, pods, scraped, now())
        if cache is not None:
            if not update.changes(ftj.get("status")):
                _observe(metrics, ftj, update)
                return
            ftj = kube.get_ftj(namespace, name)
            if ftj is None or _refused(ftj):
                return
            update = status.derive(ftj, job, pods, scraped, now())
        _write(kube, metrics, ftj, update)


def _refused(ftj: dict[str, Any]) -> bool:
    """Whether reconcile found the spec invalid, or too large for its GPUs. The spec is
    immutable, so the verdict stands: refreshes (every Job and pod event) need not
    validate and render it again, and a restart never creates what was refused."""
    conditions = (ftj.get("status") or {}).get("conditions") or []
    return any(
        c.get("type") in (status.VALIDATED, status.PLANNED) and c.get("status") == "False"
        for c in conditions
    )


def _scrape(ftj: dict[str, Any], pods: list[dict[str, Any]]) -> progress.TrainerProgress | None:
    port = ((ftj.get("spec") or {}).get("training") or {}).get("metricsPort", 9090)
    pod = progress.rank0_pod(pods)
    url = progress.metrics_url(pod, port) if pod is not None and port else None
    return progress.scrape(url) if url else None


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
    if earlier is not None or update.changes(ftj.get("status")):
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
