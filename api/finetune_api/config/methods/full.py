"""Full fine-tuning: every parameter trains; the whole model is published."""

from __future__ import annotations

from typing import Final

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._registry import MethodEntry, register_method


class FullSpec(CamelModel):
    """Full fine-tuning: every parameter trains; the whole model is published."""


FULL: Final = register_method(
    MethodEntry(
        name="full", options=FullSpec, order=5, summary="every weight trains", artifact="model"
    )
)
