"""The devices the planner knows: memory, peak throughput, and the factors calibrated
from this project's own measurements (``benchmarks/plan_calibration.py``).

Data, not code: a new GPU is one entry. Memory is what the driver reports as total
(``nvidia-smi``), not the marketing figure; peak throughput is the dense tensor-core
rate without sparsity, from the vendor's data sheet.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Final, Literal

GiB: Final = 1024**3

GpuType = Literal["H100", "H200", "A100-40GB", "A100-80GB", "L40S", "L4", "A10G"]
"""The ``resources.gpuType`` values: GPUs whose memory and speed the planner knows."""


@dataclass(frozen=True)
class Device:
    """One kind of device the planner can size a job for."""

    name: str
    memory_bytes: int | None
    """Usable memory per device; None for a CPU, whose memory is the pod's or host's."""
    peak_flops_16bit: float
    """Dense bf16/fp16 matmul FLOP/s (a CPU: fp32 FLOP/s per core, calibrated)."""
    peak_flops_32bit: float
    """fp32 FLOP/s (torch does not use TF32 for matmuls by default)."""
    gpu: bool = True
    bf16: bool = True


DEVICES: Final[dict[str, Device]] = {
    "H100": Device("H100", 81559 * 2**20, 989e12, 67e12),
    "H200": Device("H200", 143771 * 2**20, 989e12, 67e12),
    "A100-40GB": Device("A100-40GB", 40960 * 2**20, 312e12, 19.5e12),
    "A100-80GB": Device("A100-80GB", 81920 * 2**20, 312e12, 19.5e12),
    "L40S": Device("L40S", 46068 * 2**20, 362e12, 91.6e12),
    "L4": Device("L4", 23034 * 2**20, 121e12, 30.3e12),
    # AWS publishes no tensor rate for the A10G; NVIDIA's A10 figure, scaled to its clocks.
    "A10G": Device("A10G", 23028 * 2**20, 70e12, 31.2e12),
}
assert set(DEVICES) == set(typing.get_args(GpuType)), "every GPU type has one entry"


# --------------------------------------------------------------------------- calibration
# Measured by benchmarks/plan_calibration.py (the table in benchmarks/README.md); change
# them only with a new measurement.

CPU_FLOPS_PER_CORE: Final = 30e9
"""Effective fp32 FLOP/s one CPU core sustains in training matmuls (torch, AVX-512)."""
CPU_SECONDS_PER_MICRO_BATCH_LAYER: Final = 0.004
"""Fixed cost per micro-batch and transformer block on a CPU (dispatch, small ops)."""
GPU_EFFICIENCY: Final = 0.40
"""Share of the peak a large model's training matmuls reach on a GPU (model FLOPs
utilisation); small models are bounded by the per-block latency below instead."""
GPU_SECONDS_PER_MICRO_BATCH_LAYER: Final = 0.0025
"""Fixed cost per micro-batch and block on a GPU (kernel launches, Python): measured on
an H100 with SmolLM2-135M, where it, not the FLOPs, sets the step time."""
CPU_PROCESS_BYTES: Final = 700 * 2**20
"""Resident memory of the trainer process before the model loads (Python, torch,
transformers, peft, tokenizer)."""
CUDA_CONTEXT_BYTES: Final = 600 * 2**20
"""CUDA context and cuBLAS/cuDNN workspaces: on the GPU, outside the allocator."""
ALLOCATOR_OVERHEAD: Final = 0.08
"""The caching allocator's fragmentation, as a share of the allocated peak (GPU)."""
ACTIVATION_FACTOR: Final = 1.0
"""Measured activation memory over the counted tensors (temporaries, alignment)."""
