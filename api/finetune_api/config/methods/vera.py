"""VeRA: one pair of frozen random matrices shared by every adapted layer, and per-layer
trainable scaling vectors (peft VeraConfig)."""

from __future__ import annotations

from typing import Final

from pydantic import Field

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._fields import (
    PRESERVE,
    TARGET_MODULES_HELP,
    ModuleNames,
    TargetModules,
)
from finetune_api.config.methods._registry import MethodEntry, register_method


class VeraSpec(CamelModel):
    """VeRA: shared frozen random low-rank matrices, trained scaling vectors per layer."""

    r: int = Field(
        default=256,
        ge=1,
        le=4096,
        description="Rank of the shared random matrices. Each adapted layer trains r + its "
        "output features scalars whatever r is, so VeRA takes a high rank (the paper: 256 "
        "and more) where LoRA takes 8 to 64.",
    )
    target_modules: TargetModules = Field(
        default="all-linear",
        description="Which layers get the scaling vectors: " + TARGET_MODULES_HELP + " The "
        "shared matrices are as large as the largest adapted layer's input and output.",
        json_schema_extra=PRESERVE,
    )
    projection_prng_key: int = Field(
        default=0,
        ge=0,
        # Within float64's exact integers: Helm's template round trip (fromYaml/toYaml)
        # reads the CRD's numbers as float64, and 2**63 - 1 would come back changed.
        le=2**53,
        description="Seed of the shared random matrices: the same key gives the same "
        "matrices, so an adapter saved without them (saveProjection: false) is rebuilt from "
        "it on loading.",
    )
    save_projection: bool = Field(
        default=True,
        description="Publish the shared matrices with the adapter (r x (in + out) numbers), "
        "so that it loads identically whatever the random generator of the loading "
        "machine's torch; false keeps the adapter to the scaling vectors and regenerates "
        "the matrices from projectionPrngKey.",
    )
    vera_dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout on the adapter input."
    )
    d_initial: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="Initial value of every layer's rank-side scaling vector d (the output "
        "side b starts at zero, so training starts from the base model). The VeRA paper "
        "finds small values (0.1 and below) train best.",
    )
    modules_to_save: ModuleNames | None = Field(
        default=None,
        description="Modules trained in full and published with the adapter, e.g. [lm_head].",
    )


VERA: Final = register_method(
    MethodEntry(
        name="vera",
        options=VeraSpec,
        order=10,
        summary="shared frozen random matrices, trained scaling vectors",
    )
)
