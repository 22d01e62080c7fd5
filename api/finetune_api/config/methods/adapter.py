"""Bottleneck adapters (Houlsby, Pfeiffer, parallel; AdapterDrop): small trained modules
inside each transformer block, the base frozen.

peft has no bottleneck adapter, and AdapterHub's ``adapters`` package pins transformers
4.x, so the trainer builds them itself (``finetune_trainer.methods.bottleneck``) and
publishes them in its own documented format (``adapter_config.json`` with
``"finetune_adapter": "bottleneck"`` and ``adapter_model.safetensors``), which
``finetune generate`` and ``finetune verify`` load.
"""

from __future__ import annotations

from typing import Final, Literal, Self

from pydantic import Field, model_validator

from finetune_api.config.base import CamelModel
from finetune_api.config.methods._registry import MethodEntry, register_method

AdapterVariant = Literal["houlsby", "pfeiffer", "parallel"]
Nonlinearity = Literal["relu", "gelu", "swish"]
DEFAULT_REDUCTION_FACTOR = 16
"""Houlsby's and AdapterHub's usual width: 48 units on SmolLM2-135M (hidden 576)."""


class AdapterSpec(CamelModel):
    """Bottleneck adapters: down-projection, nonlinearity, up-projection, in each block."""

    variant: AdapterVariant = Field(
        default="pfeiffer",
        description="Where the adapters go. houlsby: after the attention output and after the "
        "feed-forward output of each block, each h + up(act(down(h))). pfeiffer: after the "
        "feed-forward output only (half of houlsby's parameters; Pfeiffer et al. found it "
        "as good). parallel: beside the feed-forward: its output + scaling x "
        "up(act(down(x))) of the feed-forward's input x (He et al.).",
    )
    reduction_factor: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Bottleneck width = the model's hidden size / reductionFactor (rounded "
        f"down, at least 1). Unset: {DEFAULT_REDUCTION_FACTOR}, unless bottleneckSize is set; "
        "give only one of the two.",
    )
    bottleneck_size: int | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Bottleneck width in units, instead of reductionFactor.",
    )
    nonlinearity: Nonlinearity = Field(
        default="relu",
        description="The activation between the projections. relu (default): AdapterHub's "
        "default for the Pfeiffer configuration, and the cheapest; gelu and swish (SiLU, "
        "Houlsby's) are smooth.",
    )
    drop_layers: int = Field(
        default=0,
        ge=0,
        le=1024,
        description="AdapterDrop: no adapters in the lowest N blocks, so backward stops "
        "above them (faster, less activation memory). Less than the model's block count.",
    )
    dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout on each adapter's input while training."
    )
    scaling: float | None = Field(
        default=None,
        gt=0,
        le=1000,
        description="variant parallel only: the factor on the adapter's output. Unset: 1 "
        "(He et al. used 4).",
    )

    @model_validator(mode="after")
    def _one_width_and_scaling_only_for_parallel(self) -> Self:
        if self.bottleneck_size is not None and self.reduction_factor is not None:
            raise ValueError(
                "reductionFactor and bottleneckSize are both set; give one of the two "
                "(bottleneckSize is the width, reductionFactor derives it from the hidden size)"
            )
        if self.scaling is not None and self.variant != "parallel":
            raise ValueError(
                f"scaling applies to variant parallel only (variant is {self.variant}); "
                "remove scaling or set variant: parallel"
            )
        return self

    def width(self, hidden: int) -> int:
        """The bottleneck width for a model of hidden size ``hidden`` (the trainer and the
        planner both use this, so their counts agree)."""
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        return max(1, hidden // (self.reduction_factor or DEFAULT_REDUCTION_FACTOR))

    def output_scale(self) -> float:
        """The factor on each adapter's output: ``scaling`` for parallel, else 1."""
        return self.scaling if self.scaling is not None else 1.0

    def sites(self) -> tuple[str, ...]:
        """Which sublayer of a block gets an adapter: ``attention`` and/or ``mlp``."""
        return ("attention", "mlp") if self.variant == "houlsby" else ("mlp",)


ADAPTER: Final = register_method(
    MethodEntry(
        name="adapter",
        options=AdapterSpec,
        order=13,
        summary="bottleneck adapters in each block; their own format, not peft's",
    )
)
