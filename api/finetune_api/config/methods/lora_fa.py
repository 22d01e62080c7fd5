"""LoRA-FA: LoRA whose down-projection A stays frozen at its random initialisation and
only the up-projection B trains.

Its options are LoRA's, under its own section ``loraFa:`` (a LoRA-FA adapter is a
LoRA adapter: published in peft's LoRA format, loaded, merged and served like one).
The LoRA options that contradict "A frozen, only B trains" are refused here, so that
``finetune validate`` refuses them as the pod would.
"""

from __future__ import annotations

from typing import Final, Self

from pydantic import model_validator

from finetune_api.config.methods._registry import MethodEntry, register_method
from finetune_api.config.methods.lora import LoraSpec


class LoraFaSpec(LoraSpec):
    """LoRA-FA: LoRA with A frozen after its initialisation; only B trains."""

    @model_validator(mode="after")
    def _only_b_trains(self) -> Self:
        if self.use_dora:
            raise ValueError(
                "useDora: LoRA-FA trains only the B matrices, and DoRA adds a trained "
                "magnitude per output feature that needs the whole adapted weight in every "
                "step (the activation memory LoRA-FA saves); set useDora: false or use type lora"
            )
        if self.lora_plus_ratio is not None:
            raise ValueError(
                "loraPlusRatio: LoRA+ sets B's learning rate against A's, and LoRA-FA does not "
                "train A; remove loraPlusRatio and set training.learningRate for B"
            )
        if self.init in ("pissa", "olora"):
            raise ValueError(
                f"init {self.init}: LoRA-FA keeps A as the frozen random projection it "
                f"starts from; {self.init} fills A from each weight's decomposition and moves "
                f"it out of the base. Use init: default or gaussian, or type lora for "
                f"init {self.init}"
            )
        return self


LORA_FA: Final = register_method(
    MethodEntry(
        name="lora-fa",
        options=LoraFaSpec,
        order=11,
        summary="LoRA with A frozen, only B trains",
    )
)
