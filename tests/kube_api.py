"""A Kubernetes API for integration tests: kmock's emulator on 127.0.0.1, plus the
apiserver behaviours the operator relies on, and a way to run a kopf operator against it.

Why kmock: it is a real HTTP server (kopf's author wrote it for testing kopf operators), so
the operator is exercised through its real clients (kopf's aiohttp client and the official
``kubernetes`` client), not through monkey-patched functions.

Usage (the ``kube`` fixture is in tests/integration/conftest.py)::

    def test_x(kube: Kube) -> None:
        with run_operator(kube, registry, namespaces=["team-a"]):
            kube.create({"apiVersion": ..., "kind": "FineTuneJob", "metadata": {...}, ...})
            cm = wait_for(lambda: kube.get("ConfigMap", "team-a", "x-config"))
            kube.patch_status("Job", "team-a", "x", {"succeeded": 1})  # the job controller

What kmock 0.8 emulates (read from ``kmock/_internal/k8s.py``, ``k8s_dicts.py``, ``dicts.py``,
``parsing.py``; exercised by tests/integration/test_kube_harness.py):

- discovery: ``/version``, ``/api``, ``/api/v1``, ``/apis``, ``/apis/<group>/<version>``, built
  from ``kmock.resources``; ``resources.load_bundled()`` adds ~70 built-ins of a K3s cluster
  (core v1, batch/v1 jobs with ``status``, coordination leases, CRDs ...). kopf needs this to
  resolve ``@kopf.on.*('finetune-operator.io', 'v1alpha1', 'finetunejobs')`` and to learn which
  resources have a ``status`` subresource (it then patches ``/status`` separately);
- storage: objects keyed by (resource, namespace, name) with a version history;
  POST creates (409 if it exists), GET reads, LIST lists, DELETE deletes: an object with
  ``metadata.finalizers`` only gets ``deletionTimestamp`` and disappears once a PATCH empties
  the finalizers (kopf's finalizers work on it);
- PATCH: a JSON body that is an object is a recursive merge (``None`` deletes a key, lists are
  replaced whole); a JSON body that is a list is a JSON patch (RFC 6902, ``jsonpatch``). The
  Content-Type is ignored, so a strategic-merge patch (the ``kubernetes`` client's default for
  dict bodies) is applied as a merge patch: lists with merge keys (conditions, containers) are
  replaced, not merged. The emulator keeps these semantics;
- watch (``?watch=true``): ADDED/MODIFIED/DELETED for every write made through the HTTP API,
  so an out-of-band change made over HTTP (:meth:`Kube.patch_status`) reaches kopf's watch.
  Changing ``kmock.objects`` directly does NOT reach watchers: always write over HTTP.

What kmock does not do (or does wrongly), and how :class:`Emulator` scripts it:

- ``metadata.uid``, ``creationTimestamp``, ``resourceVersion``, ``generation``: kmock stores
  the body as sent. Emulator fills them in on create, increments ``resourceVersion`` (a global
  counter) on every create and update, and increments ``generation`` when anything outside
  ``metadata`` and ``status`` changes, as the apiserver does, so ``observedGeneration`` logic
  can be tested. kopf's JSON patches (finalizers) begin with a ``test`` of
  ``/metadata/resourceVersion``, so without resourceVersions they would all fail.
- watch from a resourceVersion: kmock replays every stored object as ADDED to each new stream
  and ignores ``?resourceVersion=``; a list says ``"..."``. kopf lists, then watches from the
  list's version, so it saw every object twice, the second time stale after its own patch:
  the finalizer patch then failed its ``test`` and the create handler never ran. Emulator's
  lists carry the current revision, and its watches send only what is newer (created since:
  ADDED, changed since: MODIFIED; deletions in between are not replayed). kmock also subscribed
  a stream only after the replay, losing writes made meanwhile; Emulator subscribes first.
- the ``status`` subresource: kmock treats ``/status`` as the object itself. Emulator keeps only
  the ``status`` part of a write to ``/status``, and drops ``status`` from creates and from
  writes to the main endpoint, for resources that declare the subresource (FineTuneJob, Job,
  Pod, ...): an operator that writes status to the wrong endpoint fails here as in a cluster.
- failed JSON-patch ``test`` ops: kmock answers 500; Emulator answers 422, as kopf expects.
- PUT (replace): kmock has no route for it (404). Emulator replaces, 409 on a stale version.
- ``generateName``: kmock would store a nameless object (kopf posts its Events with
  ``generateName``). Emulator appends a random suffix.
- label and field selectors: kmock ignores ``labelSelector``/``fieldSelector``. Emulator
  filters LIST and WATCH by label selectors (``a=b``, ``a!=b``, ``a in (x,y)``, ``a notin (...)``,
  ``a``, ``!a``) and by ``metadata.name``/``metadata.namespace`` field selectors; any other
  field selector is refused with 400 rather than silently ignored. A watch does not turn an
  object that stops matching into DELETED.
- garbage collection: kmock has none. After each create, update or delete, Emulator deletes objects
  whose ``ownerReferences`` uids all no longer exist (repeatedly, so it cascades), honouring
  their finalizers, with watch events. Deletion is immediate (no foreground/background
  distinction, no ``blockOwnerDeletion``).
- ``/api/v1/namespaces`` (the cluster-scoped Namespace list): kmock 0.8's path parser fails on
  it with a 500. A namespaced kopf lists namespaces, so :func:`run_operator` turns kopf's
  scanning off for namespaced runs (see there). Namespaces as objects are not emulated.
- controllers: nothing runs Jobs or Pods. A test plays the job controller or kubelet with
  :meth:`Kube.patch_status` (a PATCH of ``/status``) and :meth:`Kube.create` for Pods.
- admission, defaulting, OpenAPI/CEL validation of the CRD, RBAC, ``timeoutSeconds`` of
  watches, bookmarks, ``410 Gone``: none. The CRD schema is unit-tested (tests/unit/test_crd.py).

Running kopf (:func:`run_operator`): ``kopf.operator()`` runs in its own thread and event loop,
because kopf treats every asyncio task created after its start as its own and cancels it on
exit, and because the tests are synchronous. It runs standalone (no peering objects), with a
``@kopf.on.login`` handler added to the registry that returns the emulator's URL; being a
non-fallback login handler, it also keeps kopf's fallback ``login_via_client`` from running
(it would read a kubeconfig now that ``kubernetes`` is installed). The emulator serves from a
second thread. Tests talk to it over HTTP, like ``kubectl``. kopf 1.45 posts Events only for
explicit ``kopf.event()``/``info()``/``warn()``/``exception()`` calls: its own log lines
("Handler 'x' succeeded") become Events only with ``settings.posting.loggers = True``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import logging
import re
import secrets
import socket
import threading
import time
import urllib.parse
import uuid
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import kmock
import kopf
import kubernetes.client
import urllib3
import yaml
from kmock._internal import dicts as kmock_dicts
from kmock._internal import rendering

CRD_PATH = (
    Path(__file__).resolve().parent.parent / "crds" / "finetunejobs.finetune-operator.io.yaml"
)
VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
T = TypeVar("T")
Object = dict[str, Any]
Objects = list[Object]


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API; the helpers address objects by kind name."""

    group: str
    version: str
    plural: str
    namespaced: bool = True

    @property
    def key(self) -> str:
        """kmock's notation, e.g. ``batch/v1/jobs`` or ``v1/pods``."""
        prefix = f"{self.group}/{self.version}" if self.group else self.version
        return f"{prefix}/{self.plural}"

    def path(self, namespace: str | None = None, name: str | None = None, sub: str = "") -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        return f"{base}/{sub}" if sub else base


def crd_resource(path: Path = CRD_PATH) -> tuple[Resource, kmock.ResourceInfo]:
    """Our CRD's resource and discovery info, read from the generated YAML (one source)."""
    crd = yaml.safe_load(path.read_text())
    spec, names = crd["spec"], crd["spec"]["names"]
    version = next(v for v in spec["versions"] if v.get("storage"))
    info = kmock.ResourceInfo(
        kind=names["kind"],
        singular=names["singular"],
        namespaced=spec["scope"] == "Namespaced",
        shortnames=names.get("shortNames", []),
        categories=names.get("categories", []),
        subresources=list(version.get("subresources", {})),
        verbs=VERBS,
    )
    resource = Resource(spec["group"], version["name"], names["plural"], info.namespaced is True)
    return resource, info


FINETUNEJOB, FINETUNEJOB_INFO = crd_resource()
KINDS: dict[str, Resource] = {
    "FineTuneJob": FINETUNEJOB,
    "ConfigMap": Resource("", "v1", "configmaps"),
    "Secret": Resource("", "v1", "secrets"),
    "Pod": Resource("", "v1", "pods"),
    "Service": Resource("", "v1", "services"),
    "Event": Resource("", "v1", "events"),
    "Job": Resource("batch", "v1", "jobs"),
    "Lease": Resource("coordination.k8s.io", "v1", "leases"),
    "FineTuneRuntime": Resource(FINETUNEJOB.group, FINETUNEJOB.version, "finetuneruntimes"),
    "ClusterFineTuneRuntime": Resource(
        FINETUNEJOB.group, FINETUNEJOB.version, "clusterfinetuneruntimes", namespaced=False
    ),
}


# --------------------------------------------------------------------------- selectors

_SET_SELECTOR = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(selector: str) -> list[str]:
    """Split on commas that are not inside ``( )`` (set-based terms contain commas)."""
    terms, depth, current = [], 0, ""
    for char in selector:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    return [t.strip() for t in [*terms, current] if t.strip()]


def label_selector_matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Kubernetes label-selector semantics for the forms operators use."""
    for term in _split_selector(selector):
        if m := _SET_SELECTOR.match(term):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",")}
            if (op == "in") != (labels.get(key) in values):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str, obj: Mapping[str, Any]) -> bool:
    """Only ``metadata.name`` and ``metadata.namespace`` (``=``, ``==``, ``!=``)."""
    meta = obj.get("metadata", {})
    for term in _split_selector(selector):
        negate = "!=" in term
        field, value = (s.strip() for s in re.split(r"!=|==|=", term, maxsplit=1))
        if field not in ("metadata.name", "metadata.namespace"):
            raise kmock.KubernetesError(400, "BadRequest", f"field selector {field!r} unsupported")
        if (meta.get(field.split(".", 1)[1]) == value) == negate:
            return False
    return True


def _selected(params: Mapping[str, str], obj: Mapping[str, Any]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return label_selector_matches(
        params.get("labelSelector", ""), labels
    ) and field_selector_matches(params.get("fieldSelector", ""), obj)


# --------------------------------------------------------------------------- emulator


def _now() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _revision_of(obj_or_version: Mapping[str, Any] | str | None) -> int:
    """A resourceVersion as a number (the emulator's are counters); 0 when absent."""
    version = (
        obj_or_version.get("metadata", {}).get("resourceVersion")
        if isinstance(obj_or_version, Mapping)
        else obj_or_version
    )
    return int(version) if isinstance(version, str) and version.isdigit() else 0


def _body_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """Everything whose change bumps ``generation``: all but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the apiserver behaviours listed in the module docstring."""

    _revision: int = 0
    _created: dict[str, int] = attrs.field(factory=dict)  # uid -> revision of its creation

    def _next_revision(self) -> str:
        self._revision += 1
        return str(self._revision)

    def _has_status(self, request: rendering.Request) -> bool:
        resource = request.resource
        return (
            resource is not None
            and resource in self.resources
            and "status" in self.resources[resource].subresources
        )

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """Creates: completed, then stored by kmock. Updates (PATCH, PUT): stored here."""
        if request.resource is not None and request.resource.plural:
            if request.action == kmock.action.CREATE and isinstance(request.data, dict):
                self._prepare_create(request)
            elif request.name and request.method in (kmock.method.PATCH, kmock.method.PUT):
                stored = await self._update(request.resource, request)
                await self._collect_garbage()
                return aiohttp.web.json_response(stored)
        try:
            return await super()._handle(request)
        finally:
            # After a create too: a child created after its owner was deleted (a
            # reconcile racing the deletion) is an orphan the real GC collects.
            if request.action in (kmock.action.DELETE, kmock.action.CREATE):
                await self._collect_garbage()

    def _prepare_create(self, request: rendering.Request) -> None:
        meta = request.data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if request.namespace:
            meta["namespace"] = request.namespace
        meta.update(
            uid=str(uuid.uuid4()),
            creationTimestamp=_now(),
            resourceVersion=self._next_revision(),
            generation=1,
        )
        self._created[meta["uid"]] = self._revision
        if self._has_status(request):
            request.data.pop("status", None)

    async def _update(self, resource: kmock.resource, request: rendering.Request) -> Object:
        """Store what the apiserver would store after this PATCH/PUT, and tell the watchers.

        Done here, atomically under kmock's lock, rather than by kmock: kmock's PATCH has no
        status-subresource split, no resourceVersion or generation, and no PUT at all.
        """
        key = (resource, request.namespace, request.name or "")
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                raise kmock.KubernetesObjectNotFoundError()
            stored = self.objects[key]
            old = copy.deepcopy(stored.raw)
            new = self._updated(request, old)
            stored.history.append(new)
            await self._buses[resource].put({"type": "MODIFIED", "object": new})
            meta = new["metadata"]
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                stored.delete()  # the last finalizer is gone: the deletion completes
                await self._buses[resource].put({"type": "DELETED", "object": new})
        return new

    def _updated(self, request: rendering.Request, old: Object) -> Object:
        new = self._apply(request, old)
        if request.subresource == "status":
            new = {**old, "status": new.get("status")}
        elif self._has_status(request):
            new = {k: v for k, v in new.items() if k != "status"}
            if "status" in old:
                new["status"] = old["status"]
        new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "namespace", "name", "deletionTimestamp"):
            if field in old.get("metadata", {}):
                new["metadata"][field] = old["metadata"][field]
        generation = old.get("metadata", {}).get("generation", 1)
        if _body_of(new) != _body_of(old):
            generation += 1
        new["metadata"]["generation"] = generation
        new["metadata"]["resourceVersion"] = self._next_revision()
        return new

    def _apply(self, request: rendering.Request, old: Object) -> Object:
        if request.method == kmock.method.PUT:
            sent = request.data.get("metadata", {}).get("resourceVersion")
            if sent and sent != old["metadata"].get("resourceVersion"):
                raise kmock.KubernetesError(409, "Conflict", "the object has been modified")
            return copy.deepcopy(request.data)
        try:
            return dict(kmock_dicts.patch_dict(old, request.data))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
            raise kmock.KubernetesError(422, "Invalid", str(e)) from e

    async def _collect_garbage(self) -> None:
        """Delete objects whose owners are all gone, until nothing more goes (cascades)."""
        async with self._lock:
            while True:
                live = {
                    obj.raw["metadata"].get("uid")
                    for obj in self.objects.values()
                    if not obj.deleted
                }
                orphans = [
                    (key, obj)
                    for key, obj in self.objects.items()
                    if not obj.deleted
                    and (owners := obj.raw["metadata"].get("ownerReferences"))
                    and not any(o.get("uid") in live for o in owners)
                    and not obj.raw["metadata"].get("deletionTimestamp")
                ]
                if not orphans:
                    return
                for (resource, _, _), obj in orphans:
                    if obj.raw["metadata"].get("finalizers"):
                        obj.patch({"metadata": {"deletionTimestamp": _now()}})
                        await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
                    else:
                        raw = obj.raw
                        obj.delete()
                        await self._buses[resource].put({"type": "DELETED", "object": raw})

    def _matching(self, request: rendering.Request) -> list[dict[str, Any]]:
        """Live objects addressed by a LIST/WATCH request, selectors applied."""
        return [
            obj.raw
            for (resource, namespace, name), obj in self.objects.items()
            if resource == request.resource
            and not obj.deleted
            and request.namespace in (None, namespace)
            and request.name in (None, name)
            and _selected(request.params, obj.raw)
        ]

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        """kmock's LIST, plus selectors and a real ``resourceVersion`` to watch from."""
        if request.resource not in self.resources:
            raise kmock.KubernetesResourceNotFoundError()
        async with self._lock:
            items = self._matching(request)
            revision = str(self._revision)
        return {"metadata": {"resourceVersion": revision}, "items": items}

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """A watch from ``?resourceVersion=``, as the apiserver does it.

        kmock replays every stored object as ADDED to each new stream and subscribes only
        after the replay, so kopf (which lists, then watches from the list's version) saw
        stale ADDED events after its own patches, and a write during the replay was lost.
        Here the stream is subscribed before the snapshot, under the lock that writers hold,
        and only what is newer than the requested version is sent: objects created since as
        ADDED, changed since as MODIFIED. Deletions between the list and the watch are lost.
        """
        yield b""  # send the headers now: the stream may stay silent for long
        assert request.resource is not None
        since = _revision_of(request.params.get("resourceVersion"))
        bus = self._buses[request.resource]
        async with self._lock:
            mark = await bus.mark()
            replay = [
                {"type": "ADDED" if self._created_after(raw, since) else "MODIFIED", "object": raw}
                for raw in self._matching(request)
                if since == 0 or _revision_of(raw) > since
            ]
        try:
            for event in replay:
                yield event
            async for event in bus.stream(since=mark):
                meta = event["object"].get("metadata", {})
                if (
                    request.namespace in (None, meta.get("namespace"))
                    and request.name in (None, meta.get("name"))
                    and _selected(request.params, event["object"])
                ):
                    yield event
        finally:
            await bus.unmark(mark)

    def _created_after(self, raw: Mapping[str, Any], since: int) -> bool:
        return self._created.get(raw.get("metadata", {}).get("uid"), 0) > since


# --------------------------------------------------------------------------- client side


class ApiError(Exception):
    """An HTTP error from the emulator, with the Kubernetes ``Status`` body."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def wait_for(
    predicate: Callable[[], T | None], timeout: float = 5.0, interval: float = 0.02, what: str = ""
) -> T:
    """Poll until ``predicate()`` is truthy and return it: operators act asynchronously."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout}s: {what or predicate}")
        time.sleep(interval)


class Kube:
    """The emulator served from a background thread, and a synchronous client for tests.

    Objects are addressed by kind name (see ``KINDS``; add more with ``kinds=``). All writes
    go over HTTP, so each one is stored with the scripted semantics and reaches watchers.
    """

    def __init__(self, kinds: Mapping[str, Resource] | None = None) -> None:
        self.kinds = {**KINDS, **(kinds or {})}
        self.emulator: Emulator | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._http = urllib3.PoolManager(retries=False, timeout=5.0)

    # lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=asyncio.run, args=(self._serve(),), name="kmock")
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("kmock did not start")

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
            assert not self._thread.is_alive(), "kmock's thread did not stop"
        self._http.clear()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        emulator = Emulator()
        with warnings.catch_warnings():  # kmock 0.8 uses importlib.resources.read_binary
            warnings.simplefilter("ignore", DeprecationWarning)
            emulator.resources.load_bundled()
        for resource in self.kinds.values():  # kinds added by tests
            if resource.key not in emulator.resources:
                emulator.resources[resource.key] = kmock.ResourceInfo(verbs=VERBS)
        emulator.resources[FINETUNEJOB.key] = FINETUNEJOB_INFO
        async with emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._started.set()
            await self._stop.wait()

    # raw HTTP -------------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        """One API call; raises :class:`ApiError` on HTTP >= 400."""
        data = None if body is None else json.dumps(body).encode()
        response = self._http.request(
            method, self.url + path, body=data, headers={"Content-Type": content_type}
        )
        payload = json.loads(response.data) if response.data else None
        if response.status >= 400:
            raise ApiError(response.status, payload)
        return payload

    def resource(self, kind: str) -> Resource:
        return self.kinds[kind]

    # objects --------------------------------------------------------------------------

    def create(self, obj: Mapping[str, Any], namespace: str | None = None) -> dict[str, Any]:
        """POST ``obj`` (kind from ``obj['kind']``; namespace from its metadata or the arg)."""
        ns = namespace or obj.get("metadata", {}).get("namespace")
        path = self.resource(obj["kind"]).path(ns)
        result: dict[str, Any] = self.request("POST", path, obj)
        return result

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The stored object, or None when there is none."""
        try:
            result: dict[str, Any] = self.request("GET", self.resource(kind).path(namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise
        return result

    def list(self, kind: str, namespace: str | None = None, label_selector: str = "") -> Objects:
        """LIST, optionally by label selector (which the emulator honours, kmock alone not)."""
        path = self.resource(kind).path(namespace)
        if label_selector:
            path += "?" + urllib.parse.urlencode({"labelSelector": label_selector})
        items: Objects = self.request("GET", path)["items"]
        return items

    def patch(
        self, kind: str, namespace: str | None, name: str, patch: Mapping[str, Any] | Sequence[Any]
    ) -> dict[str, Any]:
        """Merge-patch (a dict) or JSON-patch (a list) the main endpoint, as a user would."""
        ctype = (
            "application/json-patch+json"
            if isinstance(patch, list)
            else "application/merge-patch+json"
        )
        result: dict[str, Any] = self.request(
            "PATCH", self.resource(kind).path(namespace, name), patch, ctype
        )
        return result

    def patch_status(
        self, kind: str, namespace: str | None, name: str, status: Mapping[str, Any]
    ) -> dict[str, Any]:
        """Merge ``status`` through ``/status``, as the job controller or kubelet would."""
        path = self.resource(kind).path(namespace, name, "status")
        result: dict[str, Any] = self.request(
            "PATCH", path, {"status": status}, "application/merge-patch+json"
        )
        return result

    def delete(self, kind: str, namespace: str | None, name: str) -> None:
        """DELETE: gone at once without finalizers; owned objects are then collected."""
        self.request("DELETE", self.resource(kind).path(namespace, name))

    def events(self, namespace: str, involved_name: str | None = None) -> Objects:
        """core/v1 Events in ``namespace`` (kopf posts one per handler outcome)."""
        events = self.list("Event", namespace)
        return [
            e for e in events if involved_name in (None, e.get("involvedObject", {}).get("name"))
        ]

    def requests_made(self, since: int = 0) -> list[str]:
        """``"VERB path"`` of the requests answered so far (from the ``since``-th on), other
        than this class's own and watch streams: what the code under test asked for."""
        assert self.emulator is not None
        log = list(self.emulator._requests)[since:]
        made = []
        for request in log:
            if "python-urllib3" in (request.headers or {}).get("User-Agent", ""):
                continue
            url = urllib.parse.urlsplit(str(request.url))
            if "watch=true" in url.query:
                continue
            made.append(f"{str(request.method).rsplit('.', 1)[-1]} {url.path}")
        return made

    def request_count(self) -> int:
        """How many requests the log holds: a mark for :meth:`requests_made`."""
        assert self.emulator is not None
        return len(self.emulator._requests)

    # clients for the code under test ----------------------------------------------------

    def configuration(self) -> kubernetes.client.Configuration:
        configuration = kubernetes.client.Configuration(host=self.url)
        configuration.retries = False
        return configuration

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client pointed here; close it (``with``) when done."""
        return kubernetes.client.ApiClient(self.configuration())

    def connection_info(self) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=self.url, insecure=True, default_namespace="default")

    def write_kubeconfig(self, path: Path, namespace: str, name: str = "emulator") -> Path:
        """A kubeconfig pointing here, for processes that log in as they would outside a
        cluster (``finetune operator``, ``kubectl``): plain HTTP, a dummy token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}
            ],
            "users": [{"name": name, "user": {"token": f"{name}-token"}}],
            "contexts": [
                {
                    "name": name,
                    "context": {"cluster": name, "user": name, "namespace": namespace},
                }
            ],
            "current-context": name,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for servers a test starts in another process)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_kube(kinds: Mapping[str, Resource] | None = None) -> Iterator[Kube]:
    """Start the emulator; point the ``kubernetes`` client's default configuration at it, so
    code that builds ``kubernetes.client.CoreV1Api()`` without arguments reaches it too."""
    kube = Kube(kinds)
    kube.start()
    previous = kubernetes.client.Configuration.get_default_copy()
    kubernetes.client.Configuration.set_default(kube.configuration())
    try:
        yield kube
    finally:
        kubernetes.client.Configuration.set_default(previous)
        kube.stop()


# --------------------------------------------------------------------------- operator


def fast_settings() -> kopf.OperatorSettings:
    """kopf settings for tests: standalone (no peering objects), short queueing timeouts so
    the operator stops within a second. :func:`run_operator` adds ``scanning.disabled`` for
    namespaced runs (see there)."""
    settings = kopf.OperatorSettings()
    settings.peering.standalone = True
    # kopf 1.45 posts Events only for explicit kopf.event()/info()/warn()/exception() calls;
    # its log lines ("Handler 'x' succeeded") become Events only with posting.loggers=True,
    # which stays off here as in production.
    settings.posting.enabled = True
    settings.queueing.idle_timeout = 1.0
    settings.queueing.exit_timeout = 0.5
    settings.watching.reconnect_backoff = 0.1
    settings.networking.request_timeout = 5.0
    return settings


@dataclass
class RunningOperator:
    thread: threading.Thread
    stop_flag: threading.Event
    error: list[BaseException]


_LOGINS: weakref.WeakKeyDictionary[kopf.OperatorRegistry, dict[str, Kube]] = (
    weakref.WeakKeyDictionary()
)


def _point_login_at(registry: kopf.OperatorRegistry, kube: Kube) -> None:
    """Register (once per registry) a login handler returning the current emulator's URL.

    A non-fallback login handler also keeps kopf's fallback ``login_via_client`` from running
    (it would read a kubeconfig, now that ``kubernetes`` is installed). Registered once and
    re-pointed, because a restarted operator reuses the registry and the handler id is fixed.
    """
    if registry not in _LOGINS:
        target: dict[str, Kube] = {}
        _LOGINS[registry] = target

        @kopf.on.login(registry=registry, id="kmock-login")
        def login(**_: Any) -> kopf.ConnectionInfo:
            return target["kube"].connection_info()

    _LOGINS[registry]["kube"] = kube


@contextlib.contextmanager
def run_operator(
    kube: Kube,
    registry: kopf.OperatorRegistry,
    *,
    namespaces: list[str] | None = None,
    settings: kopf.OperatorSettings | None = None,
    memo: Any = None,
    startup_timeout: float = 10.0,
) -> Iterator[RunningOperator]:
    """Run ``kopf.operator()`` for ``registry`` against ``kube`` in a background thread.

    Cluster-wide unless ``namespaces`` is given. Yields once kopf reports ready; on exit sets
    the stop flag, joins the thread and re-raises whatever the operator raised. Restarting is
    entering this again with the same ``kube``: kopf's state lives in the stored objects.
    """
    stop_flag, ready_flag = threading.Event(), threading.Event()
    error: list[BaseException] = []

    _point_login_at(registry, kube)
    settings = settings or fast_settings()
    if namespaces:
        # A namespaced kopf lists and watches /api/v1/namespaces, which kmock 0.8 cannot parse
        # (its path parser takes "namespaces" for the /namespaces/<ns>/ prefix and answers 500).
        # Without scanning, kopf serves exactly the given namespaces, as it does when RBAC
        # forbids listing namespaces, and reads discovery once at startup.
        settings.scanning.disabled = True

    async def main() -> None:
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces or (),
            stop_flag=stop_flag,
            ready_flag=ready_flag,
            memo=memo,
        )

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:
            error.append(e)
            ready_flag.set()

    thread = threading.Thread(target=target, name="kopf-operator")
    thread.start()
    running = RunningOperator(thread, stop_flag, error)
    try:
        if not ready_flag.wait(startup_timeout) or error:
            raise RuntimeError(f"the operator did not start: {error}")
        yield running
    finally:
        stop_flag.set()
        thread.join(15)
        if thread.is_alive():
            raise RuntimeError("the operator did not stop within 15 s")
        # kopf runs sync handlers in this executor and leaves it open when it exits.
        settings.execution.executor.shutdown(wait=True)
        if error:
            raise error[0]
        logging.getLogger(__name__).debug("operator stopped")
