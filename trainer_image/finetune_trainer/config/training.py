"""The ``training`` and ``evaluation`` sections: optimisation and measurement."""

from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from finetune_trainer.config.base import CamelModel

# --------------------------------------------------------------------------- training


class TrainingSpec(CamelModel):
    """Optimisation hyperparameters."""

    epochs: int = Field(default=1, ge=1, le=1000, description="Passes over the training set.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="Peak learning rate.")
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        default="cosine", description="Decay after warmup."
    )
    warmup_ratio: float = Field(
        default=0.03, ge=0, lt=1, description="Fraction of steps spent warming up linearly."
    )
    batch_size: int = Field(default=8, ge=1, le=4096, description="Sequences per micro-batch.")
    gradient_accumulation: int = Field(
        default=1, ge=1, le=4096, description="Micro-batches per optimizer step."
    )
    max_seq_length: int = Field(
        default=1024, ge=16, le=1048576, description="Longer examples are truncated."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        default="auto",
        description="auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU.",
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Makes runs repeatable.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    loss_on: Literal["completion", "all"] = Field(
        default="completion",
        description="completion: loss on the assistant turns / completions only; all: on "
        "every token (raw text always trains on all).",
    )
    packing: bool = Field(
        default=False,
        description="Pack several examples into each sequence of maxSeqLength tokens; no "
        "example attends to another (block-diagonal attention, positions restart).",
    )
    max_grad_norm: float = Field(
        default=1.0, ge=0, description="Gradient clipping norm; 0 turns clipping off."
    )


class EvaluationSpec(CamelModel):
    """What is measured on the validation set before and after training."""

    batch_size: int = Field(default=16, ge=1, le=4096, description="Sequences per eval batch.")
    exact_match_samples: int = Field(
        default=64,
        ge=0,
        le=100000,
        description="Validation rows whose greedy generation is compared with the reference "
        "answer; 0 skips exact match.",
    )
    max_new_tokens: int = Field(
        default=64, ge=1, le=4096, description="Generation budget per exact-match sample."
    )
