"""Runtimes through the real operator against the emulated API: a FineTuneRuntime's
defaults reach the trainer Job, its limits refuse a job before any child exists, and the
documented precedence (job > FineTuneRuntime > default ClusterFineTuneRuntime > the
chart's settings) holds."""

from __future__ import annotations

from typing import Any

from test_operator import (
    IMAGE,
    NS,
    condition,
    ftj,
    quiet_requests,
    running,
    status_of,
    wait_phase,
)

from kube_api import Kube, wait_for

RUNTIME_IMAGE = "registry.example/team-a/trainer:1.2"
GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def runtime(name: str, *, cluster: bool = False, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if not cluster:
        meta["namespace"] = NS
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "ClusterFineTuneRuntime" if cluster else "FineTuneRuntime",
        "metadata": meta,
        "spec": spec,
    }


def team_a(**extra: Any) -> dict[str, Any]:
    return runtime(
        "team-a",
        default=True,
        trainer={"image": RUNTIME_IMAGE, "imagePullSecrets": ["team-a-registry"]},
        tolerations=[GPU_TAINT],
        nodeSelector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        priorityClassName="training-low",
        defaults={"gpus": 1, "gpuType": "H100", "memory": "32Gi"},
        limits={"maxGpus": 4, "maxNodes": 2},
        storage={"credentialsSecret": "team-a-s3", "endpoint": "http://minio.storage:9000"},
        queueName="team-a",
        **extra,
    )


def pod_spec(kube: Kube, name: str = "sft") -> dict[str, Any]:
    job = wait_for(lambda: kube.get("Job", NS, name), what="the Job")
    spec: dict[str, Any] = job["spec"]["template"]["spec"]
    return spec


def trainer(spec: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in spec["containers"] if c["name"] == "trainer"]
    return container


def test_defaults_come_from_the_namespace_default_runtime(kube: Kube) -> None:
    kube.create(team_a())
    with running(kube):
        kube.create(ftj())
        spec = pod_spec(kube)
        status = wait_phase(kube, "Suspended")  # queued for Kueue: the runtime's queue
    container = trainer(spec)
    assert container["image"] == RUNTIME_IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["memory"] == "32Gi"
    assert GPU_TAINT.items() <= spec["tolerations"][0].items()
    assert spec["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert spec["priorityClassName"] == "training-low"
    assert {"name": "team-a-registry"} in spec["imagePullSecrets"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["AWS_ENDPOINT_URL"] == "http://minio.storage:9000"
    job = kube.get("Job", NS, "sft") or {}
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert status["runtime"]["kind"] == "FineTuneRuntime"
    assert status["runtime"]["name"] == "team-a"


def test_a_request_over_the_limit_is_refused_before_any_job(kube: Kube) -> None:
    kube.create(team_a())
    with running(kube):
        kube.create(ftj(resources={"gpus": 8}))
        status = wait_phase(kube, "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "RuntimeForbids"
    assert "spec.resources.gpus: 8" in failed["message"]
    assert "FineTuneRuntime team-a" in failed["message"] and "maxGpus 4" in failed["message"]
    assert condition(status, "Validated")["status"] == "False"
    assert kube.get("Job", NS, "sft") is None
    assert kube.get("ConfigMap", NS, "sft-config") is None


def test_a_missing_runtime_is_refused_with_the_field_named(kube: Kube) -> None:
    with running(kube):
        kube.create(ftj(runtimeRef={"name": "nope"}))
        status = wait_phase(kube, "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "RuntimeNotFound"
    assert failed["message"].startswith("spec.runtimeRef: FineTuneRuntime nope")
    assert kube.get("Job", NS, "sft") is None


def test_precedence_job_over_runtime_over_cluster_default_over_settings(kube: Kube) -> None:
    """The job's own gpus and priority class win; the team's runtime's image and
    tolerations come next; the cluster default supplies what neither says (a
    toleration, added, and the maxNodes the team's runtime leaves unset); the chart's
    settings (the service account) remain under all."""
    spot = {"key": "spot", "operator": "Exists"}
    kube.create(
        runtime(
            "platform",
            cluster=True,
            default=True,
            trainer={"image": "registry.example/platform/trainer:1.0"},
            tolerations=[spot],
            priorityClassName="platform-default",
            limits={"maxNodes": 1},
        )
    )
    kube.create(
        runtime(
            "team-b",
            trainer={"image": RUNTIME_IMAGE},
            tolerations=[GPU_TAINT],
            priorityClassName="team-b",
            defaults={"gpus": 1},
        )
    )
    with running(kube):
        kube.create(
            ftj(
                runtimeRef={"name": "team-b"},
                resources={"gpus": 2, "priorityClassName": "urgent"},
            )
        )
        spec = pod_spec(kube)
        status = wait_phase(kube, "Pending")
        kube.create(ftj("wide", runtimeRef={"name": "team-b"}, resources={"nodes": 2}))
        refused = wait_phase(kube, "Failed", "wide")
    container = trainer(spec)
    assert container["image"] == RUNTIME_IMAGE  # team-b over the cluster default
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2  # the job's own
    assert spec["priorityClassName"] == "urgent"  # the job's own
    tolerated = [{k: t.get(k) for k in ("key", "operator")} for t in spec["tolerations"]]
    assert {"key": "spot", "operator": "Exists"} in tolerated  # from the cluster default
    assert {"key": "nvidia.com/gpu", "operator": "Exists"} in tolerated
    assert spec["serviceAccountName"] == "finetune-trainer"  # the chart's setting
    assert status["runtime"] == {
        "kind": "FineTuneRuntime",
        "name": "team-b",
        "generation": 1,
        "clusterDefault": "platform",
    }
    message = condition(refused, "Failed")["message"]
    assert "ClusterFineTuneRuntime platform's limits.maxNodes 1" in message


def test_no_runtime_is_todays_behaviour(kube: Kube) -> None:
    with running(kube):
        kube.create(ftj())
        spec = pod_spec(kube)
        status = wait_phase(kube, "Pending")
    assert trainer(spec)["image"] == IMAGE
    assert "runtime" not in status
    assert status_of(kube).get("phase") == "Pending"


def test_a_runtime_tightened_after_admission_does_not_fail_the_running_job(kube: Kube) -> None:
    """Limits are checked when a job is admitted. An operator restart reconciles every
    job again; one admitted under the runtime as it was keeps running, though the
    runtime now forbids its request, and its Job is not replaced."""
    kube.create(team_a())
    with running(kube):
        kube.create(ftj(resources={"gpus": 2}))
        before = wait_phase(kube, "Suspended")  # admitted, queued for Kueue
    uid = (kube.get("Job", NS, "sft") or {})["metadata"]["uid"]
    tightened = team_a()
    tightened["spec"]["limits"] = {"maxGpus": 1, "maxNodes": 2}
    kube.delete("FineTuneRuntime", NS, "team-a")
    kube.create(tightened)
    with running(kube):
        mark = kube.request_count()
        made = quiet_requests(kube, mark)  # the restart's reconcile, done
        after = status_of(kube)
    assert any("finetuneruntimes" in request for request in made), made
    assert before["runtime"]["name"] == after["runtime"]["name"] == "team-a"
    assert not any(c["type"] == "Failed" and c["status"] == "True" for c in after["conditions"])
    assert (kube.get("Job", NS, "sft") or {})["metadata"]["uid"] == uid
