"""Generating the FineTuneJob CustomResourceDefinition from the pydantic models.

The CRD is never edited by hand: ``finetune crd`` prints it, ``crds/`` holds the
committed copy, and a test regenerates and diffs it. pydantic emits JSON Schema
(2020-12); Kubernetes wants a *structural* OpenAPI v3.0 schema, so this module
translates: ``$ref`` inlined, ``Optional`` as ``nullable``, numeric exclusive bounds as
booleans, ``const`` as a one-value ``enum``, titles and defaults dropped (defaults live
in pydantic only, stated in descriptions). Fields that JSON Schema can only express as
unions are marked in the models with the Kubernetes extension that fits
(``x-kubernetes-int-or-string``, ``x-kubernetes-preserve-unknown-fields``); cross-field
rules travel as CEL (``x-kubernetes-validations``) declared next to their pydantic twin.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from finetune_api import rules, runtime
from finetune_api.config import API_GROUP
from finetune_api.resource import (
    IMMUTABLE_EXCEPT,
    KIND,
    PLURAL,
    SHORT_NAMES,
    SINGULAR,
    VERSION,
    FineTuneJobSpec,
    FineTuneJobStatus,
)

_DROP = {"title", "default", "examples", "additionalProperties_false", "$defs"}
_NAME_RULE = {
    "rule": "self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') "
    "&& size(self.metadata.name) <= 63",
    "message": "metadata.name must be a DNS label (lower-case letters, digits, '-', "
    "at most 63 characters): it names pods and artifacts",
}


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema for a pydantic model (wire names, no $ref)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return _convert(raw, defs)


def _convert(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _convert(merged, defs)
    if node.get("x-kubernetes-preserve-unknown-fields"):
        out = _keep(node, "description") | {"x-kubernetes-preserve-unknown-fields": True}
        if any(branch.get("type") == "null" for branch in node.get("anyOf", [])):
            out["nullable"] = True
        return out
    if node.get("x-kubernetes-int-or-string"):
        out = _keep(node, "description", "pattern")
        return out | {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": True,
        }
    branches = node.get("anyOf")
    if branches is not None:
        return _convert_optional(node, branches, defs)
    return _convert_plain(node, defs)


def _convert_optional(
    node: dict[str, Any], branches: list[dict[str, Any]], defs: dict[str, Any]
) -> dict[str, Any]:
    real = [b for b in branches if b.get("type") != "null"]
    if len(real) != 1:
        raise ValueError(
            f"cannot express the union {branches} structurally; mark the field with "
            "x-kubernetes-int-or-string or x-kubernetes-preserve-unknown-fields"
        )
    inner = {**real[0], **{k: v for k, v in node.items() if k != "anyOf"}}
    out = _convert(inner, defs)
    if len(real) != len(branches):
        out["nullable"] = True
    return out


def _convert_plain(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "additionalProperties" and value is False):
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = _convert(value, defs)
        elif key == "const":
            out["enum"] = [value]
        elif key in ("exclusiveMinimum", "exclusiveMaximum"):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = _json_type(out["enum"][0])
    if out.get("type") == "integer":
        # What the API server stores, and what `finetune validate` holds every whole
        # number to (finetune_api.manifests.INT64_MAX): a larger one is refused by both.
        out["format"] = "int64"
    if (
        node.get("default") is not None
        and "description" in out
        and "Default" not in out["description"]
    ):
        out["description"] += f" Default: {json.dumps(node['default'])}."
    return out


def _keep(node: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: node[k] for k in keys if k in node}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return "string"


def build_crd() -> dict[str, Any]:
    """The whole CustomResourceDefinition object."""
    spec_schema = with_immutability(openapi_schema(FineTuneJobSpec))
    status_schema = openapi_schema(FineTuneJobStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": SHORT_NAMES,
                "categories": ["ml"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A fine-tuning run: base model, data, method, "
                            "hyperparameters, resources and where the result goes.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            "x-kubernetes-validations": [
                                _NAME_RULE,
                                *rules.cel_rules(on_object=True),
                            ],
                        }
                    },
                }
            ],
        },
    }


def with_immutability(spec: dict[str, Any]) -> dict[str, Any]:
    """CEL transition rules: no spec field but ``suspend`` changes after creation.

    A rule on each property refuses a changed value; one on the spec refuses adding or
    removing an optional property (a property's own rule only runs when both old and
    new objects have it). The operator refuses the same changes (a Job already runs the
    old spec), so a cluster without CEL (before 1.25) is still protected.
    """
    frozen = [name for name in spec["properties"] if name not in IMMUTABLE_EXCEPT]
    properties = {
        name: {
            **schema,
            "x-kubernetes-validations": [
                *schema.get("x-kubernetes-validations", []),
                {
                    "rule": "self == oldSelf",
                    "message": f"spec.{name} is immutable: create a new FineTuneJob (only "
                    "spec.suspend may change)",
                },
            ],
        }
        if name in frozen
        else schema
        for name, schema in spec["properties"].items()
    }
    presence = " && ".join(f"has(self.{name}) == has(oldSelf.{name})" for name in frozen)
    rule = {
        "rule": presence,
        "message": "spec fields cannot be added or removed after creation (only spec.suspend "
        "may change): create a new FineTuneJob",
    }
    rules = [*spec.get("x-kubernetes-validations", []), rule]
    return {**spec, "properties": properties, "x-kubernetes-validations": rules}


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {
            "name": "Progress",
            "type": "string",
            "jsonPath": ".status.progress.percent",
            "description": "Percent of optimizer steps done",
        },
        {
            "name": "Step",
            "type": "integer",
            "jsonPath": ".status.progress.step",
            "priority": 1,
        },
        {
            "name": "ETA",
            "type": "integer",
            "jsonPath": ".status.progress.etaSeconds",
            "description": "Estimated seconds to the last step",
            "priority": 1,
        },
        {
            "name": "Estimate",
            "type": "string",
            "jsonPath": ".status.plan.estimatedDuration",
            "description": "Training time the planner estimated before the Job was created",
            "priority": 1,
        },
        {"name": "Method", "type": "string", "jsonPath": ".spec.method.type"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.uri"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


HEADER = "# Generated by `finetune crd` from the pydantic models. Do not edit.\n"


def render_crd_yaml() -> str:
    return HEADER + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


# --------------------------------------------------------------------------- runtimes


def build_runtime_crd(*, cluster: bool) -> dict[str, Any]:
    """The FineTuneRuntime (namespaced) or ClusterFineTuneRuntime CRD: one spec model
    (finetune_api.runtime.RuntimeSpec), two scopes. No status (the operator only reads
    runtimes) and no immutability: an admin edits a runtime in place, and a job records
    the generation it was built from (status.runtime)."""
    kind = runtime.CLUSTER_KIND if cluster else runtime.KIND
    plural = runtime.CLUSTER_PLURAL if cluster else runtime.PLURAL
    where = "every namespace" if cluster else "its namespace"
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Cluster" if cluster else "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": runtime.CLUSTER_SINGULAR if cluster else runtime.SINGULAR,
                "shortNames": runtime.CLUSTER_SHORT_NAMES if cluster else runtime.SHORT_NAMES,
                "categories": ["ml"],
            },
            "versions": [
                {
                    "name": runtime.VERSION,
                    "served": True,
                    "storage": True,
                    "additionalPrinterColumns": _runtime_columns(),
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": f"What FineTuneJobs in {where} run with: trainer "
                            "image, scheduling, default and maximum resources, storage, "
                            "tracking and queue. Owned by cluster admins.",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(runtime.RuntimeSpec),
                            },
                        }
                    },
                }
            ],
        },
    }


def _runtime_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Default", "type": "boolean", "jsonPath": ".spec.default"},
        {"name": "Image", "type": "string", "jsonPath": ".spec.trainer.image"},
        {"name": "GPU", "type": "string", "jsonPath": ".spec.defaults.gpuType"},
        {"name": "Max GPUs", "type": "integer", "jsonPath": ".spec.limits.maxGpus"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def render_runtime_crd_yaml(*, cluster: bool) -> str:
    return HEADER + yaml.safe_dump(build_runtime_crd(cluster=cluster), sort_keys=False, width=100)


def crd_files() -> dict[str, str]:
    """Every generated CRD by its file name (crds/ and the chart's files/crds/ hold each)."""
    return {
        f"{PLURAL}.{API_GROUP}.yaml": render_crd_yaml(),
        f"{runtime.PLURAL}.{API_GROUP}.yaml": render_runtime_crd_yaml(cluster=False),
        f"{runtime.CLUSTER_PLURAL}.{API_GROUP}.yaml": render_runtime_crd_yaml(cluster=True),
    }


def main(argv: list[str]) -> None:
    """``python -m finetune_api.crd DIR...`` (`make crd`): write every CRD into each DIR."""
    for folder in argv:
        for name, text in crd_files().items():
            (Path(folder) / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
