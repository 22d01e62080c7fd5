"""FineTuneJob → the Kubernetes objects that run it, as plain dicts.

Pure functions of the FineTuneJob, its rendered TrainerConfig and the operator's
:class:`~finetune_operator.settings.Settings`: no API calls, so every field of every
child is unit-tested, and the handlers only create or adopt what these return.

A job becomes:

* a ConfigMap holding the TrainerConfig the trainer reads (``finetune train --config``);
* a ``batch/v1`` Job running the trainer image. One node: one pod, ``torchrun`` when it
  has several GPUs. Several nodes: an Indexed Job (completions = parallelism = nodes)
  whose pod *i* is node rank *i*, and a headless Service giving pod 0 the stable DNS
  name every rank rendezvous at;
* a ``podFailurePolicy`` read from the trainer's exit codes: a bad spec, bad data, a
  storage refusal or out-of-memory fail the Job at once (a retry would fail the same
  way); a disruption (preemption, drain, eviction) or a SIGTERM that saved a checkpoint
  is retried without counting against ``backoffLimit``, and the new pod resumes.
"""

from __future__ import annotations

import hashlib
from typing import Any

from finetune_api.config import TrainerConfig
from finetune_api.outcome import NOT_RETRYABLE_EXIT_CODES, ExitCode
from finetune_api.resource import FineTuneJob
from finetune_operator import names
from finetune_operator.settings import Settings


def config_hash(config: TrainerConfig) -> str:
    return hashlib.sha256(config.to_json().encode()).hexdigest()


def _metadata(job: FineTuneJob, name: str, uid: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": job.metadata.namespace,
        "labels": names.labels(job.metadata.name),
        "ownerReferences": [names.owner_reference(job.metadata.name, uid)],
    }


def build_config_map(job: FineTuneJob, config: TrainerConfig, uid: str) -> dict[str, Any]:
    """The TrainerConfig, mounted read-only into every trainer pod."""
    meta = _metadata(job, names.config_map_name(job.metadata.name), uid)
    meta["annotations"] = {names.ANNOTATION_CONFIG_HASH: config_hash(config)}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {names.CONFIG_KEY: config.to_json()},
    }


def build_service(job: FineTuneJob, uid: str) -> dict[str, Any] | None:
    """The headless Service of a multi-node job (None for one node).

    It gives pod ``<job>-0`` the name ``<job>-0.<service>``, which every rank dials to
    rendezvous; ``publishNotReadyAddresses`` because the name must resolve before any
    pod is ready (they have no readiness probe: they are busy training).
    """
    if job.spec.resources.nodes == 1:
        return None
    name = job.metadata.name
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(job, names.service_name(name), uid),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {names.LABEL_JOB: name, names.LABEL_MANAGED_BY: names.MANAGED_BY},
            "ports": [{"name": "rendezvous", "port": names.MASTER_PORT}],
        },
    }


def trainer_command(job: FineTuneJob) -> list[str]:
    """``finetune train``, under ``torchrun`` when there is more than one process."""
    train = ["finetune", "train", "--config", f"{names.CONFIG_DIR}/{names.CONFIG_KEY}"]
    resources = job.spec.resources
    per_node = max(1, resources.gpus)
    if resources.nodes == 1 and per_node == 1:
        return train
    if resources.nodes == 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={per_node}", "--no-python", *train]
    name = job.metadata.name
    return [
        "torchrun",
        f"--nnodes={resources.nodes}",
        f"--nproc-per-node={per_node}",
        "--node-rank=$(NODE_RANK)",
        f"--master-addr={name}-0.{names.service_name(name)}",
        f"--master-port={names.MASTER_PORT}",
        "--no-python",
        *train,
    ]


def pod_failure_policy() -> dict[str, Any]:
    """The contract's exit codes as Job rules (:mod:`finetune_api.outcome`): the codes a
    retry would end the same way fail the Job at once; a disruption, or the trainer's
    exit after SIGTERM with a checkpoint saved, is retried without counting a failure."""
    return {
        "rules": [
            {
                "action": "FailJob",
                "onExitCodes": {
                    "containerName": names.CONTAINER,
                    "operator": "In",
                    "values": list(NOT_RETRYABLE_EXIT_CODES),
                },
            },
            {
                "action": "Ignore",
                "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
            },
            {
                "action": "Ignore",
                "onExitCodes": {
                    "containerName": names.CONTAINER,
                    "operator": "In",
                    "values": [int(ExitCode.PREEMPTED)],
                },
            },
        ]
    }


def _uris(config: TrainerConfig) -> list[tuple[str, bool]]:
    """Every storage URI the trainer opens, and whether it writes there."""
    found = [(config.model.uri, False), (config.output.uri, True)]
    dataset = config.dataset
    found += [(uri, False) for uri in (dataset.train, dataset.validation) if uri]
    found += [(source.train, False) for source in dataset.mixture or []]
    if config.training.distillation is not None:
        found.append((config.training.distillation.teacher_uri, False))
    return found


def claims(config: TrainerConfig) -> dict[str, bool]:
    """PersistentVolumeClaims named by pvc:// URIs → mounted read-write (an output)?"""
    found: dict[str, bool] = {}
    for uri, writes in _uris(config):
        if uri.startswith("pvc://"):
            claim = uri.removeprefix("pvc://").split("/", 1)[0]
            found[claim] = found.get(claim, False) or writes
    return found


def secrets(config: TrainerConfig) -> list[str]:
    """Secrets named by credentialsSecret (storage and trackers), each mounted as files
    where the trainer looks."""
    named = [
        config.model.credentials_secret,
        config.dataset.credentials_secret,
        config.output.credentials_secret,
        *config.tracking.secrets(),
    ]
    return sorted({s for s in named if s})


def _volumes(job: FineTuneJob, config: TrainerConfig, settings: Settings) -> list[Any]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {"name": names.config_map_name(job.metadata.name)},
        },
        {
            "name": "dshm",
            "emptyDir": {"medium": "Memory", "sizeLimit": str(job.spec.resources.shared_memory)},
        },
        {"name": "cache", "emptyDir": {"sizeLimit": settings.cache_size}},
        {"name": "tmp", "emptyDir": {}},
    ]
    volumes += [
        {"name": f"secret-{secret}", "secret": {"secretName": secret}} for secret in secrets(config)
    ]
    volumes += [
        {"name": f"pvc-{claim}", "persistentVolumeClaim": {"claimName": claim}}
        for claim in claims(config)
    ]
    return volumes


def _volume_mounts(config: TrainerConfig) -> list[Any]:
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": names.CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
        {"name": "cache", "mountPath": names.CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    mounts += [
        {
            "name": f"secret-{secret}",
            "mountPath": f"{names.SECRETS_ROOT}/{secret}",
            "readOnly": True,
        }
        for secret in secrets(config)
    ]
    mounts += [
        {"name": f"pvc-{claim}", "mountPath": f"{names.PVC_ROOT}/{claim}", "readOnly": not writes}
        for claim, writes in claims(config).items()
    ]
    return mounts


def _env(job: FineTuneJob, settings: Settings) -> list[Any]:
    """The trainer's environment: where things are mounted, then the platform's own
    variables (``Settings.trainer_env``), which cannot replace ours."""
    env: list[dict[str, Any]] = [
        {"name": "FINETUNE_SECRETS_ROOT", "value": names.SECRETS_ROOT},
        {"name": "FINETUNE_PVC_ROOT", "value": names.PVC_ROOT},
        {"name": "FINETUNE_CACHE_DIR", "value": names.CACHE_DIR},
        {"name": "HF_HOME", "value": f"{names.CACHE_DIR}/huggingface"},
        {"name": "XDG_CACHE_HOME", "value": names.CACHE_DIR},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    uid = (job.metadata.model_extra or {}).get("uid")
    if uid:  # the run's identity across pod restarts: the output's lease knows it again
        env.append({"name": "FINETUNE_RUN_ID", "value": str(uid)})
    if job.spec.resources.nodes > 1:
        annotation = f"metadata.annotations['{names.COMPLETION_INDEX}']"
        env.append({"name": "NODE_RANK", "valueFrom": {"fieldRef": {"fieldPath": annotation}}})
    ours = {e["name"] for e in env}
    env += [{"name": k, "value": v} for k, v in settings.trainer_env if k not in ours]
    return env


def _resources(job: FineTuneJob) -> dict[str, Any]:
    wanted = job.spec.resources
    limits: dict[str, Any] = {}
    if wanted.gpus:
        limits["nvidia.com/gpu"] = wanted.gpus
    if wanted.cpu is not None:
        limits["cpu"] = str(wanted.cpu)
    if wanted.memory is not None:
        limits["memory"] = str(wanted.memory)
    requests = {k: v for k, v in limits.items() if k in ("cpu", "memory")}
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = limits
    if requests:
        out["requests"] = requests  # requests = limits: Guaranteed QoS, last to be evicted
    return out


def _container(job: FineTuneJob, config: TrainerConfig, settings: Settings) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": names.CONTAINER,
        "image": settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": trainer_command(job),
        "env": _env(job, settings),
        "resources": _resources(job),
        "volumeMounts": _volume_mounts(config),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    port = job.spec.training.metrics_port
    if port:
        container["ports"] = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    return container


def _pod_spec(job: FineTuneJob, config: TrainerConfig, settings: Settings) -> dict[str, Any]:
    resources = job.spec.resources
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # the Job retries; podFailurePolicy needs Never
        "automountServiceAccountToken": False,  # trainers need no API access
        "terminationGracePeriodSeconds": settings.termination_grace_seconds,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(job, config, settings)],
        "volumes": _volumes(job, config, settings),
    }
    if settings.trainer_service_account:
        pod["serviceAccountName"] = settings.trainer_service_account
    if settings.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    if resources.nodes > 1:
        pod["subdomain"] = names.service_name(job.metadata.name)
    if resources.node_selector:
        pod["nodeSelector"] = dict(resources.node_selector)
    if resources.tolerations:
        pod["tolerations"] = [
            t.model_dump(by_alias=True, exclude_none=True) for t in resources.tolerations
        ]
    if resources.affinity:
        pod["affinity"] = resources.affinity
    if resources.priority_class_name:
        pod["priorityClassName"] = resources.priority_class_name
    return pod


def build_job(
    job: FineTuneJob, config: TrainerConfig, uid: str, settings: Settings
) -> dict[str, Any]:
    """The batch/v1 Job that runs the trainer."""
    spec = job.spec
    name = job.metadata.name
    meta = _metadata(job, names.job_name(name), uid)
    meta["annotations"] = {names.ANNOTATION_CONFIG_HASH: config_hash(config)}
    if spec.queue_name:
        meta["labels"][names.LABEL_KUEUE_QUEUE] = spec.queue_name
    policy = spec.run_policy
    job_spec: dict[str, Any] = {
        "backoffLimit": policy.backoff_limit,
        # Kueue admits a queued Job by unsuspending it; it must be created suspended.
        "suspend": spec.suspend or spec.queue_name is not None,
        "podFailurePolicy": pod_failure_policy(),
        # A replacement pod starts only once the failed one is gone: two trainers must
        # never write the same checkpoints.
        "podReplacementPolicy": "Failed",
        "template": {
            "metadata": {"labels": names.labels(name)},
            "spec": _pod_spec(job, config, settings),
        },
    }
    if spec.resources.nodes > 1:
        job_spec |= {
            "completionMode": "Indexed",
            "completions": spec.resources.nodes,
            "parallelism": spec.resources.nodes,
        }
    if policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = policy.active_deadline_seconds
    if policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = policy.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": job_spec}


def suspend_patch(ftj_spec: dict[str, Any], job: dict[str, Any]) -> dict[str, Any] | None:
    """The patch that brings the Job's ``suspend`` in line with the FineTuneJob, or None.

    Level-based (it reads both objects, not a diff), so a change made while the operator
    was down or while kopf was busy with an earlier one is still applied. With a Kueue
    ``queueName`` Kueue owns ``suspend``: the operator suspends on the user's request and
    lifts only a suspension it made itself (marked on the Job), leaving admission to Kueue.
    """
    want = bool(ftj_spec.get("suspend"))
    queued = bool(ftj_spec.get("queueName"))
    suspended = bool((job.get("spec") or {}).get("suspend"))
    annotations = (job.get("metadata") or {}).get("annotations") or {}
    ours = annotations.get(names.ANNOTATION_SUSPENDED_BY_USER) == "true"
    if want and not (suspended and ours):
        return {
            "metadata": {"annotations": {names.ANNOTATION_SUSPENDED_BY_USER: "true"}},
            "spec": {"suspend": True},
        }
    if not want and suspended and (ours or not queued):
        return {
            "metadata": {"annotations": {names.ANNOTATION_SUSPENDED_BY_USER: None}},
            "spec": {"suspend": False},
        }
    return None


def build_children(
    job: FineTuneJob, config: TrainerConfig, uid: str, settings: Settings
) -> list[dict[str, Any]]:
    """Everything a FineTuneJob runs as, in creation order (the Job last: it needs the
    ConfigMap, and its pods the Service)."""
    service = build_service(job, uid)
    children = [build_config_map(job, config, uid)]
    if service is not None:
        children.append(service)
    children.append(build_job(job, config, uid, settings))
    return children
