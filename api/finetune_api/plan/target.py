"""A FineTuneJob's resources as the planner's :class:`Target`, and the plan as the
status summary the operator writes (``status.plan``).

Not imported by the package's ``__init__``: :mod:`finetune_api.resource` reads the GPU
types from :mod:`finetune_api.plan.devices`, and this module reads the resource.
"""

from __future__ import annotations

import re
from dataclasses import replace
from decimal import Decimal

from finetune_api.plan.devices import DEVICES
from finetune_api.plan.planner import Target
from finetune_api.plan.report import Plan
from finetune_api.resource import FineTuneJobSpec, PlanStatus, Quantity

_SUFFIX: dict[str, int | Decimal] = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": 1,
    "k": 10**3,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def quantity_value(value: Quantity) -> Decimal:
    """A Kubernetes quantity as a number (``16Gi`` is 17179869184, ``500m`` is 0.5)."""
    if isinstance(value, int):
        return Decimal(value)
    match = _QUANTITY.match(value)
    if match is None or match.group(2) not in _SUFFIX:
        raise ValueError(f"{value!r} is not a Kubernetes quantity")
    return Decimal(match.group(1)) * Decimal(_SUFFIX[match.group(2)])


def target_for(
    spec: FineTuneJobSpec,
    *,
    gpu: str | None = None,
    cpu_cores: float | None = None,
    host_memory: int | None = None,
) -> Target:
    """Where ``spec`` runs: its GPUs (``gpu`` overrides ``resources.gpuType``), or CPU
    processes with ``resources.cpu`` cores (else ``cpu_cores``) and ``resources.memory``
    (else ``host_memory``)."""
    r = spec.resources
    gpu_type = gpu or r.gpu_type
    if r.gpus > 0 or gpu is not None:
        device = DEVICES[gpu_type] if gpu_type is not None else None
        memory = int(quantity_value(r.gpu_memory)) if r.gpu_memory is not None else None
        if device is None:
            # A GPU of unknown type: planned at the H100's speed; its memory is unknown
            # unless gpuMemory says it.
            device = replace(DEVICES["H100"], name="GPU", memory_bytes=None)
        return Target(
            device=device,
            devices_per_node=max(1, r.gpus),
            nodes=r.nodes,
            strategy=r.strategy,
            memory_bytes=memory,
        )
    cores = float(quantity_value(r.cpu)) if r.cpu is not None else (cpu_cores or 1.0)
    memory = int(quantity_value(r.memory)) if r.memory is not None else host_memory
    return Target(nodes=r.nodes, strategy=r.strategy, memory_bytes=memory, cpu_cores=cores)


def duration_text(seconds: float) -> str:
    """``1h20m``, ``12m``, ``45s``: a duration as kubectl shows ages."""
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


def memory_text(n: int) -> str:
    """Bytes as a Kubernetes-style quantity with one decimal, e.g. ``21.3Gi``."""
    for unit, size in (("Ti", 2**40), ("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def plan_status(plan: Plan) -> PlanStatus:
    """The summary of ``plan`` the operator writes to ``status.plan``."""
    seconds = plan.time.seconds
    return PlanStatus(
        memory_per_device=memory_text(plan.memory.per_device_bytes),
        device=plan.time.device,
        fits=plan.fits,
        largest_term=plan.memory.largest,
        trainable_parameters=plan.parameters.trainable,
        steps=plan.data.steps,
        tokens=plan.data.tokens,
        estimated_seconds=None if seconds is None else round(seconds),
        estimated_duration=None if seconds is None else duration_text(seconds),
    )
