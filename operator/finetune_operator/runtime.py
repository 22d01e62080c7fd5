"""Merging a FineTuneRuntime under a FineTuneJob, or refusing the job: pure.

Precedence, highest first (docs/concepts/runtimes.md): the job's own fields; its
``spec.runtimeRef`` runtime, else its namespace's default FineTuneRuntime; the default
ClusterFineTuneRuntime; the chart's operator settings. "Own" means present in the
object as written, so a field the job leaves out takes the runtime's value, never the
model's default. Two exceptions merge instead of replacing, because an admin's
scheduling facts must survive a job's additions: ``nodeSelector`` (per key, the job's
value winning) and ``tolerations`` (the runtime's and the job's together).

The runtime's limits are checked on the merged spec, so a default cannot be used to
slip past them either; a refusal names the field, the limit and the runtime, and the
operator writes it before any child exists. The trainer image is not a job field: a
runtime pins it (so no job can run a forbidden image).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes.utils import parse_quantity
from pydantic import ValidationError

from finetune_api.runtime import CLUSTER_KIND, KIND, RuntimeSpec
from finetune_operator.settings import Settings

RUNTIME_NOT_FOUND = "RuntimeNotFound"
"""spec.runtimeRef names a runtime that does not exist (or a namespaced install cannot read)."""
RUNTIME_FORBIDS = "RuntimeForbids"
"""The job asks for more than its runtime's limits allow."""
RUNTIME_AMBIGUOUS = "RuntimeAmbiguous"
"""Two runtimes claim to be the default of the same scope."""
RUNTIME_INVALID = "RuntimeInvalid"
"""The chosen runtime does not pass the contract (e.g. written without the CRD's schema)."""

_DEFAULTED = ("gpus", "gpuType", "gpuMemory", "cpu", "memory", "sharedMemory")
_LIMITS = (
    ("nodes", "maxNodes", False),
    ("gpus", "maxGpus", False),
    ("cpu", "maxCpu", True),
    ("memory", "maxMemory", True),
)


@dataclass(frozen=True)
class Runtime:
    """One runtime object as read: its kind, name, generation and validated spec."""

    kind: str
    name: str
    generation: int | None
    spec: RuntimeSpec

    @property
    def title(self) -> str:
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class Resolved:
    """The job's spec with the runtime merged under it (wire names), the settings its
    Job is built with, and status.runtime (None: no runtime applied)."""

    spec: dict[str, Any]
    settings: Settings
    status: dict[str, Any] | None


@dataclass(frozen=True)
class Refusal:
    """Why the job cannot run with its runtime: a condition reason and a message."""

    reason: str
    message: str


def resolve(
    spec: Mapping[str, Any],
    namespaced: Sequence[Mapping[str, Any]],
    cluster: Sequence[Mapping[str, Any]],
    settings: Settings,
) -> Resolved | Refusal:
    """Choose the job's runtimes among those read, merge them under ``spec``, check the
    limits. No runtime anywhere: the spec and settings unchanged (today's behaviour)."""
    chosen = _choose(spec, namespaced, cluster)
    if isinstance(chosen, Refusal):
        return chosen
    primary, fallback = chosen
    layers = [r for r in (primary, fallback) if r is not None]
    if not layers:
        return Resolved(dict(spec), settings, None)
    effective = _stack([r.spec for r in layers])
    merged = merge(spec, effective)
    refusal = check_limits(merged, effective, _limit_owners(layers))
    if refusal is not None:
        return refusal
    head = layers[0]
    status: dict[str, Any] = {"kind": head.kind, "name": head.name}
    if head.generation is not None:
        status["generation"] = head.generation
    if fallback is not None and primary is not None:
        status["clusterDefault"] = fallback.name
    return Resolved(merged, runtime_settings(settings, effective), status)


# --------------------------------------------------------------------------- choosing


def _choose(
    spec: Mapping[str, Any],
    namespaced: Sequence[Mapping[str, Any]],
    cluster: Sequence[Mapping[str, Any]],
) -> tuple[Runtime | None, Runtime | None] | Refusal:
    """(the named or namespace-default runtime, the cluster default beneath it)."""
    fallback = _default(cluster, CLUSTER_KIND)
    if isinstance(fallback, Refusal):
        return fallback
    ref = spec.get("runtimeRef")
    if isinstance(ref, Mapping):
        kind, name = ref.get("kind") or KIND, ref.get("name")
        pool = cluster if kind == CLUSTER_KIND else namespaced
        found = [o for o in pool if (o.get("metadata") or {}).get("name") == name]
        if not found:
            where = "the cluster" if kind == CLUSTER_KIND else "the job's namespace"
            return Refusal(
                RUNTIME_NOT_FOUND,
                f"spec.runtimeRef: {kind} {name} does not exist in {where}; create it, or "
                "name an existing runtime (kubectl get finetuneruntimes,"
                "clusterfinetuneruntimes)",
            )
        primary = _parse(found[0], kind)
        if isinstance(primary, Refusal):
            return primary
        same = fallback is not None and (primary.kind, primary.name) == (
            fallback.kind,
            fallback.name,
        )
        return primary, None if same else fallback
    primary_or = _default(namespaced, KIND)
    if isinstance(primary_or, Refusal):
        return primary_or
    return primary_or, fallback


def _default(objects: Sequence[Mapping[str, Any]], kind: str) -> Runtime | Refusal | None:
    defaults = [o for o in objects if (o.get("spec") or {}).get("default") is True]
    if len(defaults) > 1:
        names = ", ".join(sorted(str((o.get("metadata") or {}).get("name")) for o in defaults))
        return Refusal(
            RUNTIME_AMBIGUOUS,
            f"several {kind}s are marked spec.default ({names}); an admin must keep one, "
            "or name a runtime in spec.runtimeRef",
        )
    return _parse(defaults[0], kind) if defaults else None


def _parse(obj: Mapping[str, Any], kind: str) -> Runtime | Refusal:
    meta = obj.get("metadata") or {}
    name = str(meta.get("name"))
    try:
        spec = RuntimeSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return Refusal(
            RUNTIME_INVALID,
            f"{kind} {name} is invalid at spec.{where}: {first['msg']}; an admin must fix it",
        )
    generation = meta.get("generation")
    return Runtime(kind, name, generation if isinstance(generation, int) else None, spec)


# --------------------------------------------------------------------------- merging


def _stack(specs: Sequence[RuntimeSpec]) -> dict[str, Any]:
    """The runtimes as one (wire names), the first winning: a namespaced runtime over the
    cluster default, by the same rules as a job over its runtime."""
    out: dict[str, Any] = {}
    for spec in reversed(specs):
        out = _over(spec.model_dump(by_alias=True, exclude_unset=True, mode="json"), out)
    return out


def _over(upper: Mapping[str, Any], lower: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(lower)
    for key, value in upper.items():
        if key == "tolerations":
            out[key] = _tolerations(lower.get(key) or [], value)
        elif key in ("nodeSelector", "defaults", "limits", "storage", "trainer"):
            out[key] = {**(lower.get(key) or {}), **value}
        else:
            out[key] = value
    return out


def _tolerations(lower: Sequence[Any], upper: Sequence[Any]) -> list[Any]:
    return [*lower, *(t for t in upper if t not in lower)]


def merge(spec: Mapping[str, Any], runtime: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` (wire names, as written) with the runtime's values where it has none."""
    out = copy.deepcopy(dict(spec))
    resources = dict(out.get("resources") or {})
    for key, value in (runtime.get("defaults") or {}).items():
        if key in _DEFAULTED and key not in resources:
            resources[key] = value
    if runtime.get("nodeSelector"):
        resources["nodeSelector"] = {
            **runtime["nodeSelector"],
            **(resources.get("nodeSelector") or {}),
        }
    if runtime.get("tolerations"):
        resources["tolerations"] = _tolerations(
            runtime["tolerations"], resources.get("tolerations") or []
        )
    for key in ("affinity", "priorityClassName"):
        if runtime.get(key) is not None and key not in resources:
            resources[key] = runtime[key]
    if resources:
        out["resources"] = resources
    if runtime.get("queueName") and "queueName" not in out:
        out["queueName"] = runtime["queueName"]
    if runtime.get("tracking") and not out.get("tracking"):
        out["tracking"] = runtime["tracking"]
    secret = (runtime.get("storage") or {}).get("credentialsSecret")
    output = dict(out.get("output") or {})
    if secret and "credentialsSecret" not in output:
        out["output"] = {**output, "credentialsSecret": secret}
    return out


def runtime_settings(settings: Settings, runtime: Mapping[str, Any]) -> Settings:
    """The chart's settings with the runtime's image, pull secrets and storage endpoint."""
    trainer = runtime.get("trainer") or {}
    env = dict(settings.trainer_env)
    endpoint = (runtime.get("storage") or {}).get("endpoint")
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    secrets = [*settings.image_pull_secrets]
    secrets += [s for s in trainer.get("imagePullSecrets") or [] if s not in secrets]
    return dataclasses.replace(
        settings,
        trainer_image=trainer.get("image") or settings.trainer_image,
        image_pull_policy=trainer.get("pullPolicy") or settings.image_pull_policy,
        image_pull_secrets=tuple(secrets),
        trainer_env=tuple(sorted(env.items())),
    )


# --------------------------------------------------------------------------- limits


def _limit_owners(layers: Sequence[Runtime]) -> dict[str, str]:
    """Which runtime set each limit (the first that sets it), for the refusal's words."""
    owners: dict[str, str] = {}
    for layer in reversed(layers):
        limits = layer.spec.limits
        if limits is None:
            continue
        for key in limits.model_fields_set:
            field = type(limits).model_fields[key]
            owners[field.alias or key] = layer.title
    return owners


def check_limits(
    spec: Mapping[str, Any], runtime: Mapping[str, Any], owners: Mapping[str, str]
) -> Refusal | None:
    """The first of the merged spec's resources over the runtime's limits, refused."""
    limits = runtime.get("limits") or {}
    resources = spec.get("resources") or {}
    for field, limit, quantity in _LIMITS:
        cap = limits.get(limit)
        if cap is None:
            continue
        asked = resources.get(field, 1 if field == "nodes" else None)
        if asked is None or isinstance(asked, bool):
            continue
        try:
            over = parse_quantity(asked) > parse_quantity(cap) if quantity else int(asked) > cap
        except (ValueError, TypeError):
            continue  # not a number: the contract's validation says so next
        if over:
            who = owners.get(limit, "the runtime")
            return Refusal(
                RUNTIME_FORBIDS,
                f"spec.resources.{field}: {asked} exceeds the {who}'s limits.{limit} "
                f"{cap}; ask for at most {cap}, or use a runtime that allows more "
                "(spec.runtimeRef)",
            )
    return None
