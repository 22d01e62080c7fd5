"""The operator's few Kubernetes API calls, on the official ``kubernetes`` client.

kopf watches and calls the handlers; creating children, reading a Job and its pods and
writing a FineTuneJob's status go through here. Objects travel as plain dicts (raw JSON,
``_preload_content=False``): the builders produce dicts, the status derivation reads
dicts, and no field is lost to a client model that does not know it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from finetune_api.config import API_GROUP
from finetune_api.resource import PLURAL, VERSION
from finetune_api.runtime import CLUSTER_PLURAL
from finetune_api.runtime import PLURAL as RUNTIME_PLURAL
from finetune_operator import names


class NotOurs(Exception):
    """An object with a child's name exists but belongs to something else."""


def default_api_client() -> client.ApiClient:
    """In a pod: the ServiceAccount; elsewhere: the kubeconfig (as kubectl)."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _json(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(response.data)
    return data


@dataclass
class Kube:
    api: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    # ----------------------------------------------------------------- children

    def create_or_adopt(self, obj: dict[str, Any], owner_uid: str) -> tuple[dict[str, Any], bool]:
        """Create ``obj``; if it exists already and is this owner's, keep it.

        Returns the object as the server has it, and whether it was created. An existing
        object of another owner is not touched: :class:`NotOurs`.
        """
        kind, meta = obj["kind"], obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        create, read = {
            "ConfigMap": (
                self.core.create_namespaced_config_map,
                self.core.read_namespaced_config_map,
            ),
            "Service": (self.core.create_namespaced_service, self.core.read_namespaced_service),
            "Job": (self.batch.create_namespaced_job, self.batch.read_namespaced_job),
        }[kind]
        try:
            return _json(create(namespace, obj, _preload_content=False)), True
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = _json(read(name, namespace, _preload_content=False))
        owners = existing.get("metadata", {}).get("ownerReferences") or []
        if not any(o.get("uid") == owner_uid for o in owners):
            raise NotOurs(
                f"a {kind} named {name} already exists in {namespace} and is not this "
                "FineTuneJob's; delete it or rename the FineTuneJob"
            )
        return existing, False

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _json(self.batch.read_namespaced_job(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self, namespace: str, ftj_name: str) -> list[dict[str, Any]]:
        """The trainer pods of ``ftj_name`` (filtered here too: selectors are a server's
        promise, and a pod without our label is not ours whatever a server says)."""
        response = self.core.list_namespaced_pod(
            namespace, label_selector=names.selector(ftj_name), _preload_content=False
        )
        pods = _json(response).get("items", [])
        return [
            p
            for p in pods
            if p.get("metadata", {}).get("labels", {}).get(names.LABEL_JOB) == ftj_name
        ]

    def patch_job(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.batch.patch_namespaced_job(name, namespace, patch)

    # ----------------------------------------------------------------- FineTuneJobs

    def get_ftj(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            response = self.custom.get_namespaced_custom_object(
                API_GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return _json(response)

    def patch_ftj_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge ``status`` into the FineTuneJob's status subresource (never its spec).

        A FineTuneJob deleted meanwhile has no status to write: that is not an error."""
        try:
            self.custom.patch_namespaced_custom_object_status(
                API_GROUP, VERSION, namespace, PLURAL, name, {"status": status}
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # ----------------------------------------------------------------- runtimes

    def list_runtimes(
        self, namespace: str, *, cluster: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The namespace's FineTuneRuntimes and (when ``cluster``: a cluster-wide install,
        whose role may read them) the ClusterFineTuneRuntimes. A 404 (the runtime CRDs
        are not installed) is no runtime: jobs run as they did before runtimes existed."""
        namespaced = self._list(
            lambda: self.custom.list_namespaced_custom_object(
                API_GROUP, VERSION, namespace, RUNTIME_PLURAL, _preload_content=False
            )
        )
        if not cluster:
            return namespaced, []
        clustered = self._list(
            lambda: self.custom.list_cluster_custom_object(
                API_GROUP, VERSION, CLUSTER_PLURAL, _preload_content=False
            )
        )
        return namespaced, clustered

    @staticmethod
    def _list(call: Any) -> list[dict[str, Any]]:
        try:
            items: list[dict[str, Any]] = _json(call()).get("items") or []
        except ApiException as exc:
            if exc.status == 404:
                return []
            raise
        return items
