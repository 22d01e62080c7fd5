"""The ``training`` and ``evaluation`` sections: optimisation and measurement."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from finetune_api.config.base import CamelModel, DatasetUri, ModelUri
from finetune_api.config.data import ColumnMapping
from finetune_api.config.gate import MAX_GATE_CONDITIONS, GateCondition
from finetune_api.tasks import LOWER_IS_BETTER, EvalMetric

__all__ = [
    "LOWER_IS_BETTER",
    "BertScoreSpec",
    "DistillationSpec",
    "EarlyStoppingSpec",
    "EvalMetric",
    "EvaluationSpec",
    "RetentionSpec",
    "TrainingSpec",
    "steps_per_epoch",
    "total_steps",
]


class EarlyStoppingSpec(CamelModel):
    """Stop when the metric has not improved for `patience` evaluations; the best
    weights seen are the ones published."""

    metric: EvalMetric = Field(
        default="evalLoss",
        description="What decides: evalLoss and perplexity lower is better; tokenAccuracy, "
        "accuracy and macroF1 (classification), pairwiseAccuracy and meanMargin (reward-model), "
        "preferenceAccuracy, rewardAccuracy and rewardMargin (preference), meanReward "
        "(reinforcement) higher is better. The task must measure it.",
    )
    patience: int = Field(
        default=3, ge=1, le=10000, description="Evaluations without improvement before stopping."
    )
    min_delta: float = Field(
        default=0.0, ge=0, description="The smallest change that counts as an improvement."
    )


class DistillationSpec(CamelModel):
    """Knowledge distillation from a teacher causal LM sharing the student's vocabulary."""

    teacher_uri: ModelUri = Field(
        description="The teacher model, read like model.uri (with model.credentialsSecret)."
    )
    teacher_revision: str | None = Field(
        default=None, min_length=1, max_length=255, description="Revision of an hf:// teacher."
    )
    temperature: float = Field(
        default=2.0, gt=0, le=100, description="Softens both distributions before the KL term."
    )
    weight: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="Loss = (1 - weight) x cross-entropy + weight x temperature^2 x "
        "KL(teacher || student), over the label tokens.",
    )


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
    metrics_port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="Port of the trainer's Prometheus /metrics endpoint (rank 0 only); 0 "
        "turns it off. A pod serves it on all interfaces at this port. `finetune run` serves "
        "it on 127.0.0.1, at a free port unless the manifest sets this field, and prints "
        "the URL. A taken port is a warning: training goes on without /metrics.",
    )
    optimizer: Literal["adamw", "adamw-8bit", "sgd", "adafactor"] = Field(
        default="adamw",
        description="adamw (torch), adamw-8bit (bitsandbytes, 8-bit optimizer states), sgd "
        "(with momentum), adafactor (factored second moments, least memory).",
    )
    momentum: float = Field(default=0.9, ge=0, lt=1, description="SGD momentum.")
    weight_decay: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Decoupled weight decay (adamw, adafactor) or L2 (sgd).",
    )
    model_dropout: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="Overrides the model's own dropout probabilities (attention and hidden) "
        "for training. Default: the model's config.",
    )
    gradient_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass: much less memory, ~30% "
        "more compute.",
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None,
        description="Needs evaluation.everySteps, and a metric the task measures.",
    )
    distillation: DistillationSpec | None = Field(
        default=None,
        description="Also learn from a teacher model's token distributions (task causal-lm).",
    )
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


class RetentionSpec(CamelModel):
    """A general dataset scored with the base model before training and the tuned model
    after: what fine-tuning made the model forget (catastrophic forgetting) shows as a
    higher loss, or a lower exact match, on data it was not trained on."""

    dataset: DatasetUri = Field(
        description="General rows the job does not train on: a .jsonl, .json, .csv or "
        ".parquet file (file://, pvc://, s3://, az://, gs:// or hf://datasets/org/name), read "
        "with dataset.credentialsSecret."
    )
    format: Literal["messages", "instruction", "prompt-completion", "text"] | None = Field(
        default=None,
        description="Its format, as dataset.format (a language model's formats). Default: "
        "dataset.format.",
    )
    columns: ColumnMapping | None = Field(
        default=None, description="Its columns, as dataset.columns. Default: dataset.columns."
    )
    max_rows: int = Field(
        default=256,
        ge=1,
        le=100000,
        description="Score at most this many rows (the first ones), to bound the time it "
        "takes; rows longer than training.maxSeqLength are truncated.",
    )


class BertScoreSpec(CamelModel):
    """BERTScore of the generations, with an encoder the user names: a semantic match
    that credits paraphrases exact match and BLEU miss."""

    model: ModelUri = Field(
        description="The encoder (a BERT-like model in Hugging Face format, e.g. "
        "hf://sentence-transformers/all-MiniLM-L6-v2), read like model.uri with "
        "model.credentialsSecret; never with remote code."
    )
    revision: str | None = Field(
        default=None, min_length=1, max_length=255, description="Revision of an hf:// encoder."
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
    every_steps: int | None = Field(
        default=None,
        ge=1,
        description="Also evaluate (loss, perplexity, token accuracy) every N optimizer steps. "
        "Default: only before and after training.",
    )
    retention: RetentionSpec | None = Field(
        default=None,
        description="Also score a general dataset before and after training (retentionLoss, "
        "retentionExactMatch), to see what fine-tuning made the model forget (task causal-lm).",
    )
    bert_score: BertScoreSpec | None = Field(
        default=None,
        description="Also score the exact-match generations with BERTScore (bertScoreF1) "
        "using this encoder (tasks causal-lm and preference). Default: off.",
    )
    gate: list[GateCondition] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_GATE_CONDITIONS,
        description="Conditions on the final metrics the fine-tuned model must meet; a run "
        "that misses one publishes its artifacts (manifest.json gate.passed false) and "
        "fails with EvaluationGateFailed (exit 8, not retried). Default: no gate.",
    )

    def metric_settings(self) -> frozenset[str]:
        """The settings of the contract's metrics table (``MetricInfo.needs``) this
        evaluation turns on: which optional metrics a run with it reports."""
        on = {
            "evaluation.exactMatchSamples > 0": self.exact_match_samples > 0,
            "evaluation.retention": self.retention is not None,
            "evaluation.bertScore": self.bert_score is not None,
        }
        return frozenset(setting for setting, is_on in on.items() if is_on)


def steps_per_epoch(n_examples: int, spec: TrainingSpec, world_size: int = 1) -> int:
    """Optimizer steps in one pass over ``n_examples`` training rows (sequences, once
    packed) shared by ``world_size`` processes: the trainer's loop and the planner
    count them here, so an estimate and the run agree."""
    batches = math.ceil(n_examples / spec.batch_size)
    return max(1, math.ceil(batches / (spec.gradient_accumulation * world_size)))


def total_steps(n_examples: int, spec: TrainingSpec, world_size: int = 1) -> int:
    """The run's optimizer steps: maxSteps when set, else epochs x steps per epoch."""
    if spec.max_steps is not None:
        return spec.max_steps
    return spec.epochs * steps_per_epoch(n_examples, spec, world_size)
