"""The evaluations a run makes: the full one before and after training, and the cheap
periodic one inside the loop. The measuring is :mod:`finetune_trainer.evaluation`'s;
here is what the recipe measures on, how it logs it, and the FSDP care it needs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from finetune_api.config import EvaluationSpec, TrainerConfig
from finetune_trainer.alignment.grpo import RewardEvaluation
from finetune_trainer.alignment.scoring import PairEvaluation
from finetune_trainer.data.prepare import PreparedData, prepare_general
from finetune_trainer.distributed import reshard
from finetune_trainer.embedding.retrieval import RetrievalEvaluation
from finetune_trainer.evaluation import EvalResult, Extras, Scores, evaluate, scores_for
from finetune_trainer.logs import kv
from finetune_trainer.storage.backends import Access, fetch_model_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("finetune.trainer")


@dataclass(frozen=True)
class Scorer:
    """Evaluates a model on the run's validation data as ``evaluation`` says."""

    tokenizer: PreTrainedTokenizerBase
    data: PreparedData
    spec: EvaluationSpec
    extras: Extras = field(default_factory=Extras)
    """The retention set and the BERTScore encoder, when the spec asks for them."""
    pairs: PairEvaluation | None = None
    """How a reward-model or preference run scores its held-out pairs (None: another
    task)."""
    rewards: RewardEvaluation | None = None
    """How a reinforcement run scores its held-out prompts (None: another task)."""
    retrieval: RetrievalEvaluation | None = None
    """How a sentence-embedding run scores its held-out pairs (None: another task)."""

    @property
    def class_names(self) -> list[str] | None:
        """The classifier's class names in id order, or None for a language model."""
        return None if self.data.labels is None else list(self.data.labels.names)

    def full(self, model: torch.nn.Module, when: str) -> EvalResult:
        """Scores on every validation example, plus generation scores for language
        models; logged with how long they took."""
        started = time.perf_counter()
        if self.retrieval is not None:
            result = self.retrieval.evaluate(
                model, self.data.validation, self.spec.batch_size, self.tokenizer.pad_token_id
            )
        elif self.rewards is not None:
            result = self.rewards.evaluate(
                model,
                self.tokenizer,
                self.data.validation,
                self.data.eval_samples,
                batch_size=self.spec.batch_size,
                max_new_tokens=self.spec.max_new_tokens,
            )
        elif self.pairs is not None:
            result = self.pairs.evaluate(
                model,
                self.tokenizer,
                self.data.validation,
                self.data.eval_samples,
                batch_size=self.spec.batch_size,
                max_new_tokens=self.spec.max_new_tokens,
            )
        else:
            result = evaluate(
                model,
                self.tokenizer,
                self.data.validation,
                self.data.eval_samples,
                batch_size=self.spec.batch_size,
                max_new_tokens=self.spec.max_new_tokens,
                num_labels=self.class_names,
                extras=self.extras,
            )
        shown = {k: round(v, 4) for k, v in result.as_metrics().items() if v is not None}
        log.info("eval %s", kv(when=when, **shown, seconds=round(time.perf_counter() - started)))
        return result

    def periodic(self, model: torch.nn.Module) -> dict[str, float]:
        """The cheap evaluation run every ``evaluation.everySteps`` (no generation)."""
        scores: Scores | None
        if self.retrieval is not None:
            scores = self.retrieval.scores(
                model, self.data.validation, self.spec.batch_size, self.tokenizer.pad_token_id
            )
        elif self.rewards is not None:
            scores = self.rewards.scores(
                model, self.data.validation, self.spec.batch_size, self.tokenizer
            )[0]
        elif self.pairs is not None:
            scores = self.pairs.scores(
                model, self.data.validation, self.spec.batch_size, self.tokenizer.pad_token_id
            )
        else:
            scores = scores_for(
                model,
                self.data.validation,
                self.spec.batch_size,
                self.tokenizer.pad_token_id,
                self.class_names,
            )
        reshard(model)
        return {} if scores is None else scores.as_metrics()


def pair_evaluation(config: TrainerConfig) -> PairEvaluation | None:
    """How the held-out pairs of a reward-model or preference run are scored."""
    if config.task not in ("reward-model", "preference"):
        return None
    return PairEvaluation(config.task, config.preference_options)


@contextmanager
def base_only(model: torch.nn.Module) -> Iterator[None]:
    """The base model's behaviour: a PEFT model with its adapter switched off.

    Switching it back on, peft marks every parameter of the active adapter trainable;
    each parameter's flag is put back as it was, so that what a method froze (LoRA-FA's
    A matrices) stays frozen."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield
        return
    flags = [(p, p.requires_grad) for p in model.parameters()]
    try:
        with disable():
            yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def evaluation_extras(config: TrainerConfig, tokenizer: PreTrainedTokenizerBase) -> Extras:
    """The retention set read and tokenized, and the BERTScore encoder fetched, before
    any model is loaded: a missing file or a bad row fails the run at once, naming the
    setting, not after the base model's evaluation."""
    spec, dataset = config.evaluation, config.dataset
    general = None
    if spec.retention is not None:
        retention = spec.retention
        general = prepare_general(
            tokenizer,
            retention.dataset,
            retention.format or dataset.format,
            retention.columns or dataset.columns,
            max_rows=retention.max_rows,
            max_length=config.training.max_seq_length,
            eval_samples=spec.exact_match_samples,
            access=Access(dataset.credentials_secret),
        )
        log.info("retention %s", kv(dataset=retention.dataset, rows=len(general.examples)))
    encoder = None
    if spec.bert_score is not None:
        access = Access(config.model.credentials_secret, config.output.retry_deadline_seconds)
        encoder = fetch_model_dir(spec.bert_score.model, spec.bert_score.revision, access)
    return Extras(general, encoder)
