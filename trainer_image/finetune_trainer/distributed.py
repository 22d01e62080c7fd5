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
from typing import Any

from finetune_trainer.config import DistributedSpec
from finetune_trainer.errors import ConfigError


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


def make_accelerator(spec: DistributedSpec, mixed_precision: str, use_cuda: bool) -> Any:
    """An Accelerator for this process, checked against ``spec``.

    ``ddp`` (and ``auto``) replicate the model: accelerate wraps it in
    DistributedDataParallel when the world has more than one process (gloo on CPUs,
    NCCL on GPUs). ``fsdp`` shards it with FullyShardedDataParallel (GPUs only).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if spec.strategy == "fsdp" and not use_cuda:
        raise ConfigError(
            "resources.strategy fsdp shards the model across GPUs, and this process has none; "
            "use ddp (or auto) for CPU training"
        )
    # accelerate keeps process-wide state; a second run in one process (tests, notebooks)
    # may want another precision, so each run starts from a clean slate.
    AcceleratorState._reset_state(reset_partial_state=True)
    kwargs: dict[str, Any] = {"mixed_precision": mixed_precision, "cpu": not use_cuda}
    if spec.strategy == "fsdp":
        from accelerate.utils import FullyShardedDataParallelPlugin

        kwargs["fsdp_plugin"] = FullyShardedDataParallelPlugin(
            fsdp_version=2, reshard_after_forward=True, auto_wrap_policy="transformer_based_wrap"
        )
    accelerator = Accelerator(**kwargs)
    check_world(spec, accelerator.num_processes, os.environ)
    return accelerator
