"""FineTuneJob → ConfigMap, Job and Service: every field the trainer pods depend on."""

from __future__ import annotations

import json
from typing import Any

import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest

from finetune_api.config import TrainerConfig
from finetune_api.render import render_trainer_config
from finetune_api.resource import FineTuneJob
from finetune_operator import builders, names
from finetune_operator.settings import Settings

UID = "0f6c1a7e-5d2b-4a57-9c1e-2b5f3f0a9e11"
SETTINGS = Settings(trainer_image="registry.example/trainer:1.2.3", trainer_service_account="ft")


def ftj(name: str = "sft", **spec: Any) -> FineTuneJob:
    body: dict[str, Any] = {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"train": "s3://data-bucket/chat/train.jsonl"},
        "output": {"uri": "s3://artifacts-bucket/adapters/sft"},
    }
    for key, value in spec.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return FineTuneJob.model_validate(
        {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "ml"},
            "spec": body,
        }
    )


def children(job: FineTuneJob, settings: Settings = SETTINGS) -> dict[str, dict[str, Any]]:
    config = render_trainer_config(job)
    return {c["kind"]: c for c in builders.build_children(job, config, UID, settings)}


def container(job_manifest: dict[str, Any]) -> dict[str, Any]:
    (c,) = job_manifest["spec"]["template"]["spec"]["containers"]
    return c


@pytest.mark.parametrize(
    "job",
    [
        ftj(),
        ftj(resources={"gpus": 8, "nodes": 4, "cpu": "32", "memory": "256Gi"}),
        ftj(
            model={"uri": "pvc://models/smollm2", "credentialsSecret": "hf-token"},
            output={"uri": "pvc://artifacts/sft", "credentialsSecret": "s3-creds"},
            queueName="team-a",
            suspend=True,
            runPolicy={"activeDeadlineSeconds": 3600, "ttlSecondsAfterFinished": 600},
            resources={
                "gpus": 1,
                "priorityClassName": "training-low",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [
                                {
                                    "matchExpressions": [
                                        {
                                            "key": "gpu",
                                            "operator": "In",
                                            "values": ["h100"],
                                        }
                                    ]
                                }
                            ]
                        }
                    }
                },
            },
        ),
    ],
    ids=["one-pod", "four-nodes", "everything"],
)
def test_every_child_validates_against_the_kubernetes_schemas(job: FineTuneJob) -> None:
    for child in builders.build_children(job, render_trainer_config(job), UID, SETTINGS):
        for version in ("1.29", kv.latest_version()):
            kv.validate(child, version, strict=True)


def test_children_are_owned_labelled_and_deterministically_named() -> None:
    built = children(ftj(resources={"nodes": 2}))
    assert set(built) == {"ConfigMap", "Service", "Job"}
    for child in built.values():
        meta = child["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["labels"][names.LABEL_JOB] == "sft"
        assert meta["labels"][names.LABEL_MANAGED_BY] == "finetune-operator"
        (owner,) = meta["ownerReferences"]
        assert owner == {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "sft",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    assert built["Job"]["metadata"]["name"] == "sft"
    assert built["ConfigMap"]["metadata"]["name"] == "sft-config"
    # Built twice, identical: a restarted operator finds what it would create.
    assert children(ftj(resources={"nodes": 2})) == built


def test_the_config_map_holds_the_rendered_trainer_config() -> None:
    job = ftj(training={"maxSteps": 7})
    cm = children(job)["ConfigMap"]
    config = TrainerConfig.from_json(cm["data"][names.CONFIG_KEY])
    assert config == render_trainer_config(job)
    assert config.training.max_steps == 7
    digest = builders.config_hash(config)
    assert cm["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == digest
    assert children(job)["Job"]["metadata"]["annotations"][names.ANNOTATION_CONFIG_HASH] == digest


def test_one_cpu_pod_runs_the_trainer_directly() -> None:
    built = children(ftj())
    assert "Service" not in built
    job = built["Job"]["spec"]
    assert "completionMode" not in job
    c = container(built["Job"])
    assert c["command"] == ["finetune", "train", "--config", "/etc/finetune/trainer-config.json"]
    assert c["image"] == "registry.example/trainer:1.2.3"
    assert "resources" not in c or "nvidia.com/gpu" not in c["resources"].get("limits", {})


def test_several_gpus_on_one_node_run_under_torchrun() -> None:
    c = container(children(ftj(resources={"gpus": 4}))["Job"])
    assert c["command"][:4] == ["torchrun", "--standalone", "--nproc-per-node=4", "--no-python"]
    assert c["command"][4:6] == ["finetune", "train"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_several_nodes_make_an_indexed_job_with_a_rendezvous_service() -> None:
    built = children(ftj("big-run", resources={"gpus": 8, "nodes": 4}))
    job = built["Job"]["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 4, 4)
    pod = job["template"]["spec"]
    assert pod["subdomain"] == "big-run"
    service = built["Service"]
    assert service["metadata"]["name"] == "big-run"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    # The Service selects exactly this job's pods (by the labels the template carries).
    labels = job["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service["spec"]["selector"].items())
    c = container(built["Job"])
    assert "--nnodes=4" in c["command"] and "--nproc-per-node=8" in c["command"]
    assert "--master-addr=big-run-0.big-run" in c["command"]
    assert "--node-rank=$(NODE_RANK)" in c["command"]
    (rank,) = [e for e in c["env"] if e["name"] == "NODE_RANK"]
    assert "job-completion-index" in rank["valueFrom"]["fieldRef"]["fieldPath"]
    # The TrainerConfig expects the world these pods make: 4 nodes x 8 processes.
    config = TrainerConfig.from_json(built["ConfigMap"]["data"][names.CONFIG_KEY])
    assert config.distributed.world_size == 32


def test_pod_failure_policy_follows_the_trainer_exit_codes() -> None:
    rules = children(ftj())["Job"]["spec"]["podFailurePolicy"]["rules"]
    fail, disruption, preempted = rules
    assert fail["action"] == "FailJob"
    assert fail["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": [2, 3, 5, 6, 8],  # 8: a failed evaluation gate
    }
    assert disruption == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }
    assert preempted["action"] == "Ignore" and preempted["onExitCodes"]["values"] == [143]
    job = children(ftj())["Job"]["spec"]
    assert job["podReplacementPolicy"] == "Failed"
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_run_policy_suspend_and_kueue() -> None:
    plain = children(ftj())["Job"]
    assert plain["spec"]["backoffLimit"] == 3 and plain["spec"]["suspend"] is False
    assert "activeDeadlineSeconds" not in plain["spec"]
    assert names.LABEL_KUEUE_QUEUE not in plain["metadata"]["labels"]

    suspended = children(ftj(suspend=True))["Job"]["spec"]
    assert suspended["suspend"] is True

    queued = children(
        ftj(queueName="team-a", runPolicy={"backoffLimit": 1, "activeDeadlineSeconds": 60})
    )["Job"]
    assert queued["metadata"]["labels"][names.LABEL_KUEUE_QUEUE] == "team-a"
    assert queued["spec"]["suspend"] is True  # Kueue unsuspends it on admission
    assert queued["spec"]["backoffLimit"] == 1
    assert queued["spec"]["activeDeadlineSeconds"] == 60


def test_pods_are_locked_down() -> None:
    job = children(ftj())["Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "ft"
    context = container(job)["securityContext"]
    assert context == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    # A read-only root needs writable scratch: /tmp, the cache and /dev/shm are volumes.
    mounts = {m["mountPath"] for m in container(job)["volumeMounts"]}
    assert {"/tmp", names.CACHE_DIR, "/dev/shm", names.CONFIG_DIR} <= mounts
    assert pod["terminationGracePeriodSeconds"] == SETTINGS.termination_grace_seconds


def test_scheduling_fields_are_copied_to_the_pods() -> None:
    affinity = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    job = ftj(
        resources={
            "nodeSelector": {"nvidia.com/gpu.product": "H100"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
            "affinity": affinity,
            "priorityClassName": "training-low",
            "cpu": "8",
            "memory": "64Gi",
            "gpus": 1,
        }
    )
    pod = children(job)["Job"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "training-low"
    resources = pod["containers"][0]["resources"]
    assert resources["limits"] == {"nvidia.com/gpu": 1, "cpu": "8", "memory": "64Gi"}
    assert resources["requests"] == {"cpu": "8", "memory": "64Gi"}


def test_secrets_and_claims_are_mounted_where_the_trainer_looks() -> None:
    job = ftj(
        model={"uri": "pvc://models/smollm2", "credentialsSecret": "hf-token"},
        dataset={"train": "pvc://models/data/train.jsonl", "credentialsSecret": "hf-token"},
        output={"uri": "pvc://artifacts/runs/sft", "credentialsSecret": "s3-creds"},
    )
    built = children(job)["Job"]
    pod = built["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["secret-hf-token"]["secret"] == {"secretName": "hf-token"}
    assert volumes["secret-s3-creds"]["secret"] == {"secretName": "s3-creds"}
    assert volumes["pvc-models"]["persistentVolumeClaim"] == {"claimName": "models"}
    mounts = {m["name"]: m for m in container(built)["volumeMounts"]}
    assert mounts["secret-hf-token"]["mountPath"] == "/var/run/secrets/finetune/hf-token"
    assert mounts["secret-hf-token"]["readOnly"] is True
    assert mounts["pvc-models"] == {
        "name": "pvc-models",
        "mountPath": "/mnt/pvc/models",
        "readOnly": True,  # inputs only
    }
    assert mounts["pvc-artifacts"]["readOnly"] is False  # the output claim
    env = {e["name"]: e.get("value") for e in container(built)["env"]}
    assert env["FINETUNE_SECRETS_ROOT"] == "/var/run/secrets/finetune"
    assert env["FINETUNE_PVC_ROOT"] == "/mnt/pvc"


def test_the_platforms_trainer_env_reaches_every_pod_but_cannot_replace_ours() -> None:
    settings = Settings(
        trainer_env=(("MLFLOW_TRACKING_URI", "http://mlflow:5000"), ("HOME", "/elsewhere"))
    )
    env = container(children(ftj(), settings)["Job"])["env"]
    values = {e["name"]: e.get("value") for e in env}
    assert values["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert values["HOME"] == "/tmp"
    assert [e["name"] for e in env].count("HOME") == 1


@pytest.mark.parametrize(
    "text",
    ["[1]", "{not json", '{"1BAD": "x"}', '{"OK": 1}'],
    ids=["list", "json", "name", "value"],
)
def test_a_malformed_trainer_env_stops_the_operator_at_start(text: str) -> None:
    with pytest.raises(ValueError, match="FINETUNE_TRAINER_ENV"):
        Settings.from_env({"FINETUNE_TRAINER_ENV": text})


def test_metrics_port_is_declared_and_can_be_turned_off() -> None:
    on = container(children(ftj(training={"metricsPort": 9300}))["Job"])
    assert on["ports"] == [{"name": "metrics", "containerPort": 9300, "protocol": "TCP"}]
    off = container(children(ftj(training={"metricsPort": 0}))["Job"])
    assert "ports" not in off


def test_shared_memory_size_comes_from_the_spec() -> None:
    pod = children(ftj(resources={"sharedMemory": "16Gi"}))["Job"]["spec"]["template"]["spec"]
    (dshm,) = [v for v in pod["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}


def test_no_secret_value_or_credentials_reach_the_manifests() -> None:
    job = ftj(output={"uri": "s3://artifacts-bucket/x", "credentialsSecret": "s3-creds"})
    text = json.dumps(builders.build_children(job, render_trainer_config(job), UID, SETTINGS))
    assert "AWS_SECRET_ACCESS_KEY" not in text  # secrets are mounted by reference only


def job_state(suspend: bool, by_user: bool = False) -> dict[str, Any]:
    annotations = {names.ANNOTATION_SUSPENDED_BY_USER: "true"} if by_user else {}
    return {"metadata": {"annotations": annotations}, "spec": {"suspend": suspend}}


@pytest.mark.parametrize(
    ("spec", "job", "expected"),
    [
        ({}, job_state(False), None),  # running as wanted
        ({"suspend": True}, job_state(False), True),  # suspend it
        ({"suspend": True}, job_state(True, by_user=True), None),  # done already
        ({}, job_state(True, by_user=True), False),  # resume
        ({}, job_state(True), False),  # no queue: a suspended Job is ours to resume
        # Kueue: a queued (suspended) Job is Kueue's to admit, not ours to unsuspend...
        ({"queueName": "q"}, job_state(True), None),
        # ...but a suspension the user asked for is marked, and lifted when cleared.
        ({"queueName": "q", "suspend": True}, job_state(True), True),
        ({"queueName": "q"}, job_state(True, by_user=True), False),
    ],
)
def test_suspension_follows_the_spec_and_leaves_queued_jobs_to_kueue(
    spec: dict[str, Any], job: dict[str, Any], expected: bool | None
) -> None:
    patch = builders.suspend_patch(spec, job)
    if expected is None:
        assert patch is None
        return
    assert patch is not None and patch["spec"] == {"suspend": expected}
    marker = patch["metadata"]["annotations"][names.ANNOTATION_SUSPENDED_BY_USER]
    assert marker == ("true" if expected else None)
