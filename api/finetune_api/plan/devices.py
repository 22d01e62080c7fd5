"""The planner's devices (:mod:`finetune_api.gpus`) and the factors calibrated from this
project's own measurements (``benchmarks/plan_calibration.py``)."""

from __future__ import annotations

from typing import Final

from finetune_api.gpus import DEVICES as DEVICES
from finetune_api.gpus import Device as Device
from finetune_api.gpus import GiB as GiB
from finetune_api.gpus import GpuType as GpuType

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
