"""``finetune plan``: memory, time and fit of a FineTuneJob before any GPU is allocated.

Pure (no torch), so the operator image uses the same planner as the CLI:

- :mod:`~finetune_api.plan.shape`: the base model's shape from its ``config.json``;
- :mod:`~finetune_api.plan.trainable`: what each method trains;
- :mod:`~finetune_api.plan.devices`: the GPUs it knows and the calibrated constants;
- :mod:`~finetune_api.plan.planner`: the memory terms, the time and the verdict;
- :mod:`~finetune_api.plan.report`: the answer as data (``-o json``, ``status.plan``).
"""

from finetune_api.plan.devices import DEVICES, Device, GpuType
from finetune_api.plan.planner import DataFacts, Target, format_bytes, plan_job
from finetune_api.plan.report import Plan
from finetune_api.plan.shape import ModelShape, ShapeError

__all__ = [
    "DEVICES",
    "DataFacts",
    "Device",
    "GpuType",
    "ModelShape",
    "Plan",
    "ShapeError",
    "Target",
    "format_bytes",
    "plan_job",
]
