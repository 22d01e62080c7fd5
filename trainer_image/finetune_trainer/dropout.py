"""Dropout for adapters on CPUs, drawing 16 random bits per element instead of a float.

LoRA applies dropout to the input of every adapted projection (about 150,000 elements per
token for SmolLM2 with all seven projections adapted), and on a CPU torch draws each
element's Bernoulli mask from its single-threaded Mersenne Twister: a profile of a LoRA
step on SmolLM2-135M puts 15 % of the step in ``aten::bernoulli_``. Filling 64-bit words
takes a quarter of the generator calls, and a 16-bit threshold keeps an element with
probability ``1 - round(p * 65536) / 65536`` (p = 0.05 becomes 0.0500031); the kept
values are scaled by the exact inverse of that probability, so the expectation is
unchanged. CUDA's dropout draws from Philox in the same kernel and is left as it is.

Draws come from torch's default CPU generator, so runs stay seeded and a checkpoint's
saved RNG state resumes the same masks.
"""

from __future__ import annotations

import torch

_LEVELS = 1 << 16


class CpuDropout(torch.nn.Dropout):
    """``torch.nn.Dropout`` with masks from 16-bit draws on CPU tensors."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        dropped = round(self.p * _LEVELS)
        if dropped >= _LEVELS:
            return torch.zeros_like(x)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64)
        words.random_(-(1 << 63), (1 << 63) - 1)  # all 64 bits (plain random_ leaves one 0)
        draws = words.view(torch.int16)[:n].view(x.shape)  # uniform over -32768..32767
        keep = draws >= dropped - (_LEVELS // 2)
        return torch.where(keep, x * (_LEVELS / (_LEVELS - dropped)), 0.0)


def use_cpu_dropout(model: torch.nn.Module) -> int:
    """Swap every adapter dropout (peft's ``lora_dropout`` entries) for :class:`CpuDropout`
    of the same probability; returns how many were swapped. Dropout holds no weights, so
    what is saved and loaded does not change."""
    swapped = 0
    for module in model.modules():
        entries = getattr(module, "lora_dropout", None)
        if not isinstance(entries, torch.nn.ModuleDict):
            continue
        for name, dropout in list(entries.items()):
            if type(dropout) is torch.nn.Dropout and dropout.p > 0:
                entries[name] = CpuDropout(dropout.p)
                swapped += 1
    return swapped
