"""Tenancy RBAC: the ClusterRoles the chart aggregates into Kubernetes' built-in `admin`,
`edit` and `view` (templates/aggregate-roles.yaml, docs/operations/tenancy.md).

What a platform team relies on: a team's usual `edit` RoleBinding lets it create and
manage FineTuneJobs, `view` reads them, `admin` also manages the namespace's
FineTuneRuntimes; nobody gets write access to ClusterFineTuneRuntimes or to a job's
status through aggregation, and nothing beyond the contract's own resources (no
wildcards, no Secrets, no escalate, bind or impersonate). What each built-in role *ends
up with* is computed the way the API server aggregates: the union of the rules of every
ClusterRole carrying its label.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest
import yaml

from finetune_api.crd import build_crd, build_runtime_crd

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "finetune-operator"
RELEASE, NAMESPACE = "finetune-operator", "finetune-system"
K8S_VERSIONS = ["1.29", kv.latest_version()]
GROUP = "finetune-operator.io"
LABEL = "rbac.authorization.k8s.io/aggregate-to-"
BUILTINS = ("admin", "edit", "view")
READ = ("get", "list", "watch")
WRITE = ("create", "update", "patch", "delete")
DANGEROUS_VERBS = {"escalate", "bind", "impersonate", "*"}

Grant = tuple[str, str, str]


def grants_of(resources: list[str], verbs: tuple[str, ...]) -> set[Grant]:
    return {(GROUP, r, v) for r in resources for v in verbs}


VIEW = grants_of(
    ["finetunejobs", "finetunejobs/status", "finetuneruntimes", "clusterfinetuneruntimes"], READ
)
EDIT = VIEW | grants_of(["finetunejobs"], WRITE)
ADMIN = EDIT | grants_of(["finetuneruntimes"], WRITE)
EXPECTED = {"view": VIEW, "edit": EDIT, "admin": ADMIN}


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: Any, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    rendered = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith("NOTES.txt"):
            docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def aggregated(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ClusterRoles that extend a built-in role (any aggregate-to-* label)."""
    return [
        d
        for d in docs
        if d["kind"] == "ClusterRole"
        and any(k.startswith(LABEL) for k in d["metadata"].get("labels", {}))
    ]


def grants(rules: list[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def effective(docs: list[dict[str, Any]], builtin: str) -> set[Grant]:
    """What the built-in ClusterRole gains: every rule of the roles labelled for it."""
    return {
        g
        for role in aggregated(docs)
        if role["metadata"]["labels"].get(f"{LABEL}{builtin}") == "true"
        for g in grants(role["rules"])
    }


@pytest.fixture(scope="module")
def default_docs(chart: Any) -> list[dict[str, Any]]:
    return render(chart)


@pytest.mark.parametrize("builtin", BUILTINS)
def test_each_builtin_role_gains_exactly_the_documented_rights(
    default_docs: list[dict[str, Any]], builtin: str
) -> None:
    assert effective(default_docs, builtin) == EXPECTED[builtin]


def test_roles_follow_the_builtins_labelling(default_docs: list[dict[str, Any]]) -> None:
    """As Kubernetes' own system:aggregate-to-* roles: view's rules also go to edit and
    admin, edit's to admin; every label value is the string "true"."""
    labels = {
        r["metadata"]["name"]: {
            k for k, v in r["metadata"]["labels"].items() if k.startswith(LABEL)
        }
        for r in aggregated(default_docs)
    }
    assert labels == {
        f"{RELEASE}-view": {f"{LABEL}{b}" for b in BUILTINS},
        f"{RELEASE}-edit": {f"{LABEL}edit", f"{LABEL}admin"},
        f"{RELEASE}-admin": {f"{LABEL}admin"},
    }
    for role in aggregated(default_docs):
        assert all(
            v == "true" for k, v in role["metadata"]["labels"].items() if k.startswith(LABEL)
        )
        assert "aggregationRule" not in role  # they extend the built-ins, never aggregate


def test_least_privilege(default_docs: list[dict[str, Any]]) -> None:
    roles = aggregated(default_docs)
    assert roles
    for role in roles:
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no URLs, no names
            assert rule["apiGroups"] == [GROUP], rule
            for key in ("apiGroups", "resources", "verbs"):
                assert not any("*" in item for item in rule[key]), rule
            assert not DANGEROUS_VERBS & set(rule["verbs"]), rule
            assert "secrets" not in rule["resources"], rule


def test_no_aggregated_write_to_cluster_runtimes_or_status(
    default_docs: list[dict[str, Any]],
) -> None:
    """Cluster runtimes are the platform's and status is the operator's."""
    every = effective(default_docs, "admin")
    for _, resource, verb in every:
        if resource in ("clusterfinetuneruntimes", "finetunejobs/status"):
            assert verb in READ, (resource, verb)


def test_roles_name_the_contracts_resources(default_docs: list[dict[str, Any]]) -> None:
    """Each resource is a CRD's plural (or its status subresource, where the CRD has
    one): a renamed plural would otherwise silently grant nothing."""
    known: set[str] = set()
    for crd in (build_crd(), build_runtime_crd(cluster=False), build_runtime_crd(cluster=True)):
        assert crd["spec"]["group"] == GROUP
        plural = crd["spec"]["names"]["plural"]
        known.add(plural)
        if "status" in crd["spec"]["versions"][0].get("subresources", {}):
            known.add(f"{plural}/status")
    named = {resource for _, resource, _ in effective(default_docs, "admin")}
    assert named <= known, named - known


@pytest.mark.parametrize(
    "values",
    [{}, {"watchNamespaces": ["ml-team-a", "ml-team-b"], "replicaCount": 2}],
    ids=["cluster-wide", "namespaced"],
)
def test_rendered_in_both_modes_and_valid(chart: Any, values: dict[str, Any]) -> None:
    roles = aggregated(render(chart, values))
    assert len(roles) == 3
    for role in roles:
        assert "namespace" not in role["metadata"]
        for version in K8S_VERSIONS:
            kv.validate(role, version, strict=True)


@pytest.mark.parametrize(
    "values",
    [{"rbac": {"create": True, "aggregateToDefaultRoles": False}}, {"rbac": {"create": False}}],
    ids=["value-off", "rbac-off"],
)
def test_turned_off(chart: Any, values: dict[str, Any]) -> None:
    docs = render(chart, values)
    assert not aggregated(docs)
    assert not any(d["metadata"]["name"].endswith(("-view", "-edit", "-admin")) for d in docs)


def test_values_schema_wants_a_boolean(chart: Any) -> None:
    with pytest.raises(Exception, match="aggregateToDefaultRoles"):
        chart.validate_schema(chart.merge_values({"rbac": {"aggregateToDefaultRoles": "yes"}}))


def test_operators_own_role_only_reads_runtimes(chart: Any) -> None:
    """The operator resolves runtimes, never changes them; its roles stay free of
    wildcards, Secrets and RBAC verbs."""
    for values in ({}, {"watchNamespaces": ["ml-team-a"]}):
        docs = render(chart, values)
        own = [
            d for d in docs if d["kind"] in ("Role", "ClusterRole") and d not in aggregated(docs)
        ]
        assert own
        for group, resource, verb in grants([r for d in own for r in d["rules"]]):
            assert "*" not in (group, resource, verb)
            assert resource != "secrets" and verb not in DANGEROUS_VERBS
            if resource.endswith("finetuneruntimes"):
                assert verb in READ, (resource, verb)
