"""The planner's devices (:mod:`finetune_api.gpus`) and the factors calibrated from this
project's own measurements (``benchmarks/plan_calibration.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from finetune_api.gpus import DEVICES as DEVICES
from finetune_api.gpus import Device as Device
from finetune_api.gpus import GiB as GiB
from finetune_api.gpus import GpuType as GpuType

# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """What the formulas cannot know, measured on real runs of each kind of device.

    The memory factors scale the planner's count of each term to what the device
    really holds; 1.0 is the count itself. Change them only with a new measurement
    (``benchmarks/plan_calibration.py``, the table in ``benchmarks/README.md``).
    """

    runtime_bytes: int
    """Memory held before the model loads: Python, torch, transformers, peft and the
    tokenizer (CPU), or the CUDA context and library workspaces (GPU)."""
    block: float
    """The blocks' own saved tensors (norms, attention, MLP) against the count."""
    adapter: float
    """The adapters' saved inputs, masks and low-rank outputs against the count."""
    logits: float
    """The label-position logits, their log-softmax and gradient against the count."""
    checkpoint_retained: float
    """With gradient checkpointing, the share of the un-checkpointed activations the
    process still holds at its peak (a CPU's allocator keeps freed memory)."""
    allocator_overhead: float
    """Fragmentation of a caching allocator, as a share of the allocated peak."""
    flops: float
    """FLOP/s of training matmuls: per core on a CPU; a share of the peak (model FLOPs
    utilisation) on a GPU."""
    seconds_per_block: float
    """Fixed cost per micro-batch and transformer block (dispatch, small ops, kernel
    launches): it, not the FLOPs, sets a small model's step time."""
    seconds_per_adapter_input: float
    """Cost per token and adapted input feature: an adapter's dropout, its thin matmuls
    and the sum read and write the layer's input, bound by memory, not FLOPs."""
    seconds_per_parameter_step: float
    """The optimizer's step per trainable parameter (adamw, sgd, adafactor)."""
    seconds_per_parameter_step_8bit: float
    """The same for bitsandbytes' adamw-8bit (on a CPU it dequantizes in Python-level
    loops, far slower than torch's fused adamw)."""


CPU: Final = Calibration(
    runtime_bytes=490 * 2**20,
    block=1.22,
    adapter=1.97,
    logits=1.32,
    checkpoint_retained=0.36,
    allocator_overhead=0.0,
    flops=35.3e9,
    seconds_per_block=0.0099,
    seconds_per_adapter_input=2.37e-8,
    seconds_per_parameter_step=6.9e-9,
    seconds_per_parameter_step_8bit=4.0e-8,
)
"""Fitted (``benchmarks/plan_calibration.py --refit``) on 20 runs of SmolLM2-135M, fp32, on
2 cores of an Intel Xeon at 2.0 GHz (AVX-512), 2026-12-01: peak RSS from ``wait4``, the
training loop's time from ``metrics.json``."""

GPU: Final = Calibration(
    runtime_bytes=600 * 2**20,
    # The same autograd saves the same tensors on any device: the counts' corrections
    # measured on the CPU hold here (the CPU allocator's retention does not).
    block=CPU.block,
    adapter=CPU.adapter,
    logits=CPU.logits,
    checkpoint_retained=0.0,
    allocator_overhead=0.08,
    flops=0.40,
    seconds_per_block=0.0127,
    seconds_per_adapter_input=0.0,
    seconds_per_parameter_step=0.0,
    seconds_per_parameter_step_8bit=0.0,
)
"""Not yet fitted on a GPU: the per-block latency is the 0.38 s a step one H100 run of
SmolLM2-135M took with LoRA on every linear layer, over its 30 blocks
(``benchmarks/results/trainer_vs_trl_h100.json``: launch-bound, the FLOPs take a
hundredth of it); the utilisation is a typical large-model figure. ``scripts/gpu_check.py``
compares the memory side with ``torch.cuda.max_memory_allocated``."""
