"""Starting accelerate for one process or many, and refusing a world that is not the
one the job asked for.

Processes find each other through the standard variables ``torchrun`` (and the
operator's pods) set: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``. A known trap: a launcher that cannot read them (or a pod started
without them) silently trains as one process, each replica on the whole data, and
publishes several times. So the world accelerate reports is compared with the one in
the TrainerConfig, and any difference stops the run before it loads a model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from finetune_api.config import DistributedSpec
from finetune_trainer.errors import ConfigError

if TYPE_CHECKING:
    from accelerate import Accelerator
    from torch.distributed.checkpoint.state_dict import ValueType


def check_world(spec: DistributedSpec, seen: int, env: Mapping[str, str]) -> None:
    """Raise :class:`ConfigError` unless ``seen`` processes is what ``spec`` expects.

    ``env`` is the process environment; its ``WORLD_SIZE`` is what the launcher
    promised, ``seen`` what the process group actually has.
    """
    expected = spec.world_size
    launched = env.get("WORLD_SIZE")
    if launched is not None and launched != str(expected):
        raise ConfigError(
            f"distributed: the launcher started WORLD_SIZE={launched} processes but the job "
            f"expects {expected} ({spec.nodes} node(s) x {spec.processes_per_node}); the pods "
            "and the rendered TrainerConfig disagree, check resources.nodes and resources.gpus"
        )
    if seen != expected:
        hint = (
            "WORLD_SIZE is not set: start the trainer with torchrun (or as the operator's "
            "Indexed Job), not as a plain process"
            if launched is None
            else "the process group did not form with every process; check MASTER_ADDR/"
            "MASTER_PORT and that the launcher passed the environment through"
        )
        raise ConfigError(
            f"distributed: this process sees a world of {seen} process(es), the job expects "
            f"{expected}; {hint}"
        )


def make_accelerator(spec: DistributedSpec, mixed_precision: str, use_cuda: bool) -> Accelerator:
    """An Accelerator for this process, checked against ``spec``.

    ``ddp`` (and ``auto``) replicate the model: accelerate wraps it in
    DistributedDataParallel when the world has more than one process (gloo on CPUs,
    NCCL on GPUs). ``fsdp`` shards it with FullyShardedDataParallel (GPUs only).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps process-wide state; a second run in one process (tests, notebooks)
    # may want another precision, so each run starts from a clean slate.
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not use_cuda)
    check_world(spec, accelerator.num_processes, os.environ)
    return accelerator


# --------------------------------------------------------------------------- FSDP
#
# ``fsdp`` is PyTorch's FSDP2 (``fully_shard``) applied here rather than through
# accelerate's plugin: each transformer block becomes one unit whose parameters,
# gradients and optimizer state are split across the ranks (DTensors), gathered for
# its forward and backward only. accelerate then sees plain modules and only prepares
# the optimizer. The same code runs on GPUs (NCCL) and CPUs (gloo), which is how the
# tests exercise it without a GPU.


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_model(model: torch.nn.Module) -> None:
    """Shard ``model`` in place: every transformer block (the model's own
    ``_no_split_modules``) is one FSDP unit, the rest goes with the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = set(_no_split_modules(model))
    if not blocks:
        raise ConfigError(
            "resources.strategy fsdp: this model does not name its transformer blocks "
            "(_no_split_modules), so it cannot be sharded block by block; use ddp"
        )
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)


def reshard(model: torch.nn.Module) -> None:
    """Put a sharded model's parameters back into shards after an evaluation.

    FSDP2 keeps the root unit's parameters gathered after a forward pass without
    gradients; until resharded, ``model.parameters()`` would hand out those gathered
    copies, and an optimizer built on them would update tensors the next gather
    overwrites."""
    from torch.distributed.fsdp import FSDPModule

    if isinstance(model, FSDPModule):
        model.reshard()


def _no_split_modules(model: torch.nn.Module) -> list[str]:
    for candidate in (model, getattr(model, "base_model", None), getattr(model, "model", None)):
        names = getattr(candidate, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def full_state_dict(model: torch.nn.Module) -> dict[str, ValueType]:
    """The whole model's weights on rank 0's CPU (empty elsewhere); collective."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank must call it)."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def copy_into(param: torch.Tensor, value: torch.Tensor) -> None:
    """Copy a whole tensor into ``param``, keeping only this rank's shard of it."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        value = distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
    param.copy_(value)


def localize_optimizer_state(state_dict: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """An optimizer state dict with every DTensor replaced by this rank's shard.

    Returns the dict and whether anything was sharded (then every rank saves its own).
    """
    from torch.distributed.tensor import DTensor

    sharded = False
    state: dict[Any, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        state[index] = {}
        for key, value in values.items():
            if isinstance(value, DTensor):
                sharded = True
                value = value.to_local()
            state[index][key] = value
    return {"state": state, "param_groups": state_dict["param_groups"]}, sharded


def rebuild_optimizer_state(
    state_dict: dict[str, Any], params: list[torch.Tensor]
) -> dict[str, Any]:
    """The inverse of :func:`localize_optimizer_state` for the same sharding: a saved
    shard of parameter ``i``'s state becomes a DTensor laid out like the parameter."""
    from torch.distributed.tensor import DTensor

    state: dict[Any, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        param = params[int(index)]
        state[index] = {
            key: DTensor.from_local(
                value.to(param.device), param.device_mesh, param.placements, run_check=False
            )
            if isinstance(param, DTensor)
            and hasattr(value, "shape")
            and value.shape == param.to_local().shape
            else value
            for key, value in values.items()
        }
    return {"state": state, "param_groups": state_dict["param_groups"]}
