"""The harness in tests/kube_api.py works with a real kopf operator: a throwaway registry
defined here (not the product's operator) creates a ConfigMap with the ``kubernetes`` client,
reports status through kopf, reacts to a Job status change made as the job controller would,
keeps its progress across a restart, and deletes through its finalizer."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import kopf
import kubernetes.client
import pytest

from kube_api import FINETUNEJOB, ApiError, Kube, run_operator, wait_for

NS = "team-a"
GROUP, VERSION, PLURAL = FINETUNEJOB.group, FINETUNEJOB.version, FINETUNEJOB.plural


@dataclass
class Seen:
    """What the throwaway operator's handlers saw, shared with the test thread."""

    created: list[str] = field(default_factory=list)
    updated: list[int] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    job_statuses: list[dict[str, Any]] = field(default_factory=list)


def throwaway_registry(seen: Seen) -> kopf.OperatorRegistry:
    """A miniature of the operator's shape: child via the kubernetes client, status via kopf."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def create(
        name: str, namespace: str | None, body: kopf.Body, patch: kopf.Patch, **_: Any
    ) -> None:
        seen.created.append(name)
        config_map: dict[str, Any] = {"metadata": {"name": f"{name}-config"}, "data": {"k": "v"}}
        kopf.adopt(config_map, owner=body)
        with kubernetes.client.ApiClient() as api:  # the default configuration: the emulator
            kubernetes.client.CoreV1Api(api).create_namespaced_config_map(namespace, config_map)
        patch.status["phase"] = "Pending"
        patch.status["observedGeneration"] = body.metadata["generation"]
        kopf.info(body, reason="ConfigMapCreated", message=f"created {name}-config")

    @kopf.on.update(GROUP, VERSION, PLURAL, field="spec", registry=registry)
    def update(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        seen.updated.append(body.metadata["generation"])
        patch.status["observedGeneration"] = body.metadata["generation"]

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    def resume(name: str, **_: Any) -> None:
        seen.resumed.append(name)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def delete(name: str, **_: Any) -> None:
        seen.deleted.append(name)

    @kopf.on.event("batch", "v1", "jobs", registry=registry)
    def job_event(body: kopf.Body, **_: Any) -> None:
        seen.job_statuses.append(dict(body.status))

    return registry


def finetunejob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"model": {"uri": "hf://org/model"}, "method": {"type": "lora"}},
    }


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every test stops its operator and emulator threads (the kube fixture ends first)."""
    before = set(threading.enumerate())
    yield
    leaked = [t.name for t in set(threading.enumerate()) - before if t.is_alive()]
    assert not leaked


def test_create_yields_the_child_and_the_status(kube: Kube) -> None:
    seen = Seen()
    with run_operator(kube, throwaway_registry(seen), namespaces=[NS]):
        created = kube.create(finetunejob("ftj"))
        config_map = wait_for(lambda: kube.get("ConfigMap", NS, "ftj-config"), what="ConfigMap")
        ftj = wait_for(
            lambda: (
                (o := kube.get("FineTuneJob", NS, "ftj")) and o.get("status", {}).get("phase") and o
            ),
            what="status.phase",
        )
        events = wait_for(lambda: kube.events(NS, "ftj"), what="kopf's Event")

    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    assert "status" not in created  # the status subresource: not writable on create
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert ftj["status"]["phase"] == "Pending"
    assert ftj["status"]["observedGeneration"] == 1
    assert ftj["metadata"]["generation"] == 1  # status writes do not bump generation
    assert "kopf.zalando.org/KopfFinalizerMarker" in ftj["metadata"]["finalizers"]
    assert [(e["reason"], e["type"]) for e in events] == [("ConfigMapCreated", "Normal")]
    assert seen.created == ["ftj"]


def test_spec_change_bumps_generation_and_reaches_the_update_handler(kube: Kube) -> None:
    seen = Seen()
    with run_operator(kube, throwaway_registry(seen)):  # cluster-wide
        kube.create(finetunejob("ftj"))
        wait_for(lambda: seen.created, what="create handler")
        patched = kube.patch("FineTuneJob", NS, "ftj", {"spec": {"method": {"type": "dora"}}})
        wait_for(lambda: seen.updated, what="update handler")
        ftj = wait_for(
            lambda: (
                (o := kube.get("FineTuneJob", NS, "ftj"))
                and o["status"].get("observedGeneration") == 2
                and o
            ),
            what="observedGeneration 2",
        )
    assert patched["metadata"]["generation"] == 2
    assert seen.updated == [2]
    assert ftj["metadata"]["generation"] == 2


def test_job_status_from_the_job_controller_reaches_a_job_handler(kube: Kube) -> None:
    seen = Seen()
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "ftj-train", "namespace": NS, "labels": {"app": "trainer"}},
        "spec": {"template": {"spec": {"containers": [{"name": "t", "image": "trainer"}]}}},
    }
    with run_operator(kube, throwaway_registry(seen), namespaces=[NS]):
        kube.create(job)
        wait_for(lambda: seen.job_statuses, what="the Job's ADDED event")
        done = {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}
        stored = kube.patch_status("Job", NS, "ftj-train", done)
        wait_for(
            lambda: any(s.get("succeeded") == 1 for s in seen.job_statuses),
            what="the Job's MODIFIED event with the status",
        )
    assert stored["status"] == done
    assert stored["metadata"]["generation"] == 1
    assert [j["metadata"]["name"] for j in kube.list("Job", NS, "app=trainer")] == ["ftj-train"]
    assert kube.list("Job", NS, "app in (other)") == []


def test_restart_does_not_rerun_the_create_handler(kube: Kube) -> None:
    seen = Seen()
    registry = throwaway_registry(seen)
    with run_operator(kube, registry, namespaces=[NS]):
        kube.create(finetunejob("ftj"))
        wait_for(lambda: kube.get("ConfigMap", NS, "ftj-config"), what="ConfigMap")
        wait_for(lambda: kube.events(NS, "ftj"), what="handling finished")
    seen.resumed.clear()
    with run_operator(kube, registry, namespaces=[NS]):
        wait_for(lambda: seen.resumed, what="the restarted operator resumed the object")
    assert seen.resumed == ["ftj"]  # it saw the object, and decided it was handled
    assert seen.created == ["ftj"]
    stored = kube.get("FineTuneJob", NS, "ftj")
    assert stored is not None
    assert "kopf.zalando.org/last-handled-configuration" in stored["metadata"]["annotations"]


def test_delete_runs_the_finalizer_then_collects_the_children(kube: Kube) -> None:
    seen = Seen()
    with run_operator(kube, throwaway_registry(seen), namespaces=[NS]):
        kube.create(finetunejob("ftj"))
        wait_for(lambda: kube.get("ConfigMap", NS, "ftj-config"), what="ConfigMap")
        kube.delete("FineTuneJob", NS, "ftj")
        wait_for(lambda: kube.get("FineTuneJob", NS, "ftj") is None, what="finalized")
        wait_for(lambda: kube.get("ConfigMap", NS, "ftj-config") is None, what="collected")
    assert seen.deleted == ["ftj"]


def test_stale_json_patch_is_a_422_and_put_checks_the_resource_version(kube: Kube) -> None:
    created = kube.create(finetunejob("ftj"))
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}]
    with pytest.raises(ApiError) as error:
        kube.patch("FineTuneJob", NS, "ftj", stale)
    assert error.value.status == 422
    replaced = kube.request("PUT", FINETUNEJOB.path(NS, "ftj"), {**created, "spec": {"x": 1}})
    assert replaced["spec"] == {"x": 1} and replaced["metadata"]["generation"] == 2
    with pytest.raises(ApiError) as error:
        kube.request("PUT", FINETUNEJOB.path(NS, "ftj"), created)
    assert error.value.status == 409


def test_owned_objects_are_collected_in_cascade_and_selectors_filter(kube: Kube) -> None:
    def owned_by(owner: dict[str, Any]) -> list[dict[str, Any]]:
        meta = owner["metadata"]
        return [{"kind": owner["kind"], "name": meta["name"], "uid": meta["uid"]}]

    ftj = kube.create(finetunejob("ftj"))
    job = kube.create(
        {
            "kind": "Job",
            "metadata": {"name": "j", "namespace": NS, "ownerReferences": owned_by(ftj)},
        }
    )
    for index in range(2):
        labels = {"job-name": "j", "index": str(index)}
        meta = {"name": f"j-{index}", "namespace": NS, "labels": labels}
        kube.create({"kind": "Pod", "metadata": {**meta, "ownerReferences": owned_by(job)}})
    kube.create({"kind": "Pod", "metadata": {"name": "other", "namespace": NS}})

    assert [p["metadata"]["name"] for p in kube.list("Pod", NS, "job-name=j,index notin (1)")] == [
        "j-0"
    ]
    by_name = kube.request(
        "GET", kube.resource("Pod").path(NS) + "?fieldSelector=metadata.name%3Dother"
    )
    assert [p["metadata"]["name"] for p in by_name["items"]] == ["other"]

    kube.delete("FineTuneJob", NS, "ftj")  # no finalizers: gone at once, then Job, then Pods
    assert [p["metadata"]["name"] for p in kube.list("Pod", NS)] == ["other"]
    assert kube.list("Job", NS) == []


def test_the_server_port_is_released_after_the_test() -> None:
    from kube_api import serve_kube

    with serve_kube() as api:
        port = int(api.url.rsplit(":", 1)[1])
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
