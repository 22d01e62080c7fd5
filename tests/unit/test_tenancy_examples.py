"""examples/tenancy/: one team's namespace as docs/operations/tenancy.md sets it up.

The core objects (Namespace, RoleBinding, ResourceQuota, ClusterRole, ClusterRoleBinding)
validate strictly against the Kubernetes OpenAPI schemas (kubernetes-validate); the
FineTuneRuntime against the contract's model. Kueue's kinds are CRDs kubernetes-validate
has no schema for: their required fields are checked here by name, with the rules Kueue's
webhook applies (each flavor lists exactly the covered resources, in order). Then the
pieces must fit one another: the queue the runtime names exists in the namespace and
points at the team's ClusterQueue, which selects the namespace, covers every resource a
trainer pod requests and holds the same GPU quota as the ResourceQuota; the runtime's
per-job cap fits inside it; the RoleBinding gives the team the built-in `edit` the chart
aggregates into.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest
import yaml

from finetune_api.crd import build_crd
from finetune_api.render import render_trainer_config
from finetune_api.resource import FineTuneJob
from finetune_api.runtime import FineTuneRuntime
from finetune_operator import builders
from finetune_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TENANCY = ROOT / "examples" / "tenancy"
DOCS_PAGE = ROOT / "docs" / "operations" / "tenancy.md"
K8S_VERSIONS = ["1.29", kv.latest_version()]
CORE_KINDS = {"Namespace", "RoleBinding", "ResourceQuota", "ClusterRole", "ClusterRoleBinding"}
KUEUE = "kueue.x-k8s.io/v1beta1"
GPU = "nvidia.com/gpu"


def load() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(TENANCY.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d)
    return docs


DOCS = load()


def one(kind: str) -> dict[str, Any]:
    (found,) = [d for d in DOCS if d["kind"] == kind]
    return found


def test_every_kind_is_known() -> None:
    kinds = {d["kind"] for d in DOCS}
    assert kinds == CORE_KINDS | {"FineTuneRuntime", "ResourceFlavor", "ClusterQueue", "LocalQueue"}


@pytest.mark.parametrize(
    "obj", [d for d in DOCS if d["kind"] in CORE_KINDS], ids=lambda d: d["kind"]
)
def test_core_objects_validate(obj: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kv.validate(obj, version, strict=True)


def test_runtime_is_the_namespaces_default_with_a_gpu_cap() -> None:
    runtime = FineTuneRuntime.model_validate(one("FineTuneRuntime"))
    assert runtime.metadata.namespace == one("Namespace")["metadata"]["name"]
    assert runtime.spec.default
    assert runtime.spec.limits is not None and runtime.spec.limits.max_gpus is not None


def test_kueue_objects_have_their_required_fields() -> None:
    flavor, cq, lq = one("ResourceFlavor"), one("ClusterQueue"), one("LocalQueue")
    for obj in (flavor, cq, lq):
        assert obj["apiVersion"] == KUEUE
        assert obj["metadata"]["name"]
    assert "namespace" not in flavor["metadata"] and "namespace" not in cq["metadata"]
    assert lq["metadata"]["namespace"] and lq["spec"]["clusterQueue"]
    assert set(cq["spec"]) <= {"cohort", "namespaceSelector", "queueingStrategy", "resourceGroups"}
    assert cq["spec"]["queueingStrategy"] in ("StrictFIFO", "BestEffortFIFO")
    assert cq["spec"]["resourceGroups"]
    for group in cq["spec"]["resourceGroups"]:
        assert group["coveredResources"] and group["flavors"]
        for fl in group["flavors"]:
            # Kueue's webhook: a flavor lists exactly the covered resources, in order.
            assert [r["name"] for r in fl["resources"]] == group["coveredResources"]
            assert all("nominalQuota" in r for r in fl["resources"])


def gpu_quota(cq: dict[str, Any]) -> int:
    return sum(
        int(r["nominalQuota"])
        for group in cq["spec"]["resourceGroups"]
        for fl in group["flavors"]
        for r in fl["resources"]
        if r["name"] == GPU
    )


def test_the_pieces_fit_together() -> None:
    namespace = one("Namespace")
    ns = namespace["metadata"]["name"]
    runtime = FineTuneRuntime.model_validate(one("FineTuneRuntime"))
    flavor, cq, lq = one("ResourceFlavor"), one("ClusterQueue"), one("LocalQueue")
    quota = one("ResourceQuota")

    # The runtime's queue is this namespace's LocalQueue, feeding the team's ClusterQueue.
    assert (lq["metadata"]["name"], lq["metadata"]["namespace"]) == (runtime.spec.queue_name, ns)
    assert lq["spec"]["clusterQueue"] == cq["metadata"]["name"]
    selector = cq["spec"]["namespaceSelector"]["matchLabels"]
    assert selector.items() <= namespace["metadata"]["labels"].items()
    flavors = {fl["name"] for g in cq["spec"]["resourceGroups"] for fl in g["flavors"]}
    assert flavors == {flavor["metadata"]["name"]}
    # The flavor's nodes are the ones the runtime sends jobs to.
    assert flavor["spec"]["nodeLabels"].items() <= runtime.spec.node_selector.items()

    # Kueue and the API server hold the same GPU budget; one job fits inside it.
    assert quota["metadata"]["namespace"] == ns
    hard = quota["spec"]["hard"]
    assert int(hard[f"requests.{GPU}"]) == gpu_quota(cq)
    assert runtime.spec.limits is not None and runtime.spec.limits.max_gpus is not None
    assert runtime.spec.limits.max_gpus <= gpu_quota(cq)
    crd = build_crd()
    assert f"count/{crd['spec']['names']['plural']}.{crd['spec']['group']}" in hard

    # The team's group holds the built-in `edit` in its namespace, nothing else.
    binding = one("RoleBinding")
    assert binding["metadata"]["namespace"] == ns
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "edit",
    }


def test_cluster_queue_covers_every_resource_a_trainer_requests() -> None:
    """Kueue refuses a workload that requests a resource its ClusterQueue does not cover:
    build a job that sets everything and compare with what the operator's Job asks for."""
    job = FineTuneJob.model_validate(
        {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "covered", "namespace": "team-a", "uid": "u1"},
            "spec": {
                "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M"},
                "dataset": {"train": "s3://data/train.jsonl"},
                "output": {"uri": "s3://out/covered"},
                "resources": {"gpus": 2, "cpu": "8", "memory": "64Gi"},
                "queueName": "gpu-queue",
            },
        }
    )
    job_manifest = builders.build_job(job, render_trainer_config(job), "uid", Settings())
    pod = job_manifest["spec"]["template"]["spec"]
    requested = {
        name
        for container in pod["containers"]
        for section in ("requests", "limits")
        for name in container.get("resources", {}).get(section, {})
    }
    assert GPU in requested
    covered = {
        r for g in one("ClusterQueue")["spec"]["resourceGroups"] for r in g["coveredResources"]
    }
    assert requested <= covered


def test_docs_page_shows_every_example() -> None:
    page = DOCS_PAGE.read_text(encoding="utf-8")
    for path in sorted(TENANCY.glob("*.yaml")):
        assert f"examples/tenancy/{path.name}" in page, path.name


# The optional cluster-wide reader role is named by the page, not quoted.
QUOTED = [p for p in sorted(TENANCY.glob("*.yaml")) if p.name != "cluster-runtime-readers.yaml"]


@pytest.mark.parametrize("path", QUOTED, ids=lambda p: p.name)
def test_docs_page_quotes_the_examples_verbatim(path: Path) -> None:
    """The page shows the files themselves, so what a reader copies is what is tested."""
    page = DOCS_PAGE.read_text(encoding="utf-8")
    body = path.read_text(encoding="utf-8").rstrip("\n")
    assert f"```yaml\n# examples/tenancy/{path.name}\n{body}\n```" in page
