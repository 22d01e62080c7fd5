"""Names and labels of the objects the operator creates for a FineTuneJob.

Every child's name is a pure function of the FineTuneJob's name, so an operator that
restarts at any moment finds (and adopts) what an earlier run created instead of
creating a second one. Labels let the watches and `kubectl` find a job's children.
"""

from __future__ import annotations

from finetune_api.resource import API_VERSION, KIND

MANAGED_BY = "finetune-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_JOB = "finetune-operator.io/job"
"""The owning FineTuneJob's name, on every child and every trainer pod."""
LABEL_KUEUE_QUEUE = "kueue.x-k8s.io/queue-name"
ANNOTATION_CONFIG_HASH = "finetune-operator.io/config-sha256"
ANNOTATION_SUSPENDED_BY_USER = "finetune-operator.io/suspended-by-user"
"""On a Job the operator suspended because spec.suspend said so (not Kueue's queueing)."""
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
"""Set by Kubernetes on an Indexed Job's pods (annotation; also a label since 1.28): the
node rank of a multi-node job."""

CONTAINER = "trainer"
CONFIG_KEY = "trainer-config.json"
CONFIG_DIR = "/etc/finetune"
SECRETS_ROOT = "/var/run/secrets/finetune"
PVC_ROOT = "/mnt/pvc"
CACHE_DIR = "/var/cache/finetune"
MASTER_PORT = 29500


def job_name(ftj_name: str) -> str:
    """The batch/v1 Job (and the headless Service of a multi-node job)."""
    return ftj_name


def config_map_name(ftj_name: str) -> str:
    return f"{ftj_name}-config"


def service_name(ftj_name: str) -> str:
    return ftj_name


def labels(ftj_name: str, component: str = "trainer") -> dict[str, str]:
    """The labels every child of ``ftj_name`` carries."""
    return {
        LABEL_NAME: "finetune-trainer",
        LABEL_INSTANCE: ftj_name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_JOB: ftj_name,
    }


def selector(ftj_name: str) -> str:
    """A label selector for the children (and pods) of ``ftj_name``."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_JOB}={ftj_name}"


def owner_reference(ftj_name: str, uid: str) -> dict[str, object]:
    """Makes the FineTuneJob the controller of a child: deleting it deletes the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": ftj_name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }
