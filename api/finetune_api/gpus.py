"""The GPUs the contract knows (``resources.gpuType``): memory and peak throughput.

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
