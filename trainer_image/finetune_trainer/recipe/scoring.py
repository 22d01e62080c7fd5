"""The evaluations a run makes: the full one before and after training, and the cheap
periodic one inside the loop. The measuring is :mod:`finetune_trainer.evaluation`'s;
here is what the recipe measures on, how it logs it, and the FSDP care it needs.
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from finetune_api.config import EvaluationSpec
from finetune_trainer.data.prepare import PreparedData
from finetune_trainer.distributed import reshard
from finetune_trainer.evaluation import EvalResult, evaluate, scores_for
from finetune_trainer.logs import kv

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("finetune.trainer")


@dataclass(frozen=True)
class Scorer:
    """Evaluates a model on the run's validation data as ``evaluation`` says."""

    tokenizer: PreTrainedTokenizerBase
    data: PreparedData
    spec: EvaluationSpec

    @property
    def num_labels(self) -> int | None:
        """The classifier's classes, or None for a language model."""
        return None if self.data.labels is None else len(self.data.labels)

    def full(self, model: torch.nn.Module, when: str) -> EvalResult:
        """Scores on every validation example, plus generation scores for language
        models; logged with how long they took."""
        started = time.perf_counter()
        result = evaluate(
            model,
            self.tokenizer,
            self.data.validation,
            self.data.eval_samples,
            batch_size=self.spec.batch_size,
            max_new_tokens=self.spec.max_new_tokens,
            num_labels=self.num_labels,
        )
        shown = {k: round(v, 4) for k, v in result.as_metrics().items() if v is not None}
        log.info("eval %s", kv(when=when, **shown, seconds=round(time.perf_counter() - started)))
        return result

    def periodic(self, model: torch.nn.Module) -> dict[str, float]:
        """The cheap evaluation run every ``evaluation.everySteps`` (no generation)."""
        scores = scores_for(
            model,
            self.data.validation,
            self.spec.batch_size,
            self.tokenizer.pad_token_id,
            self.num_labels,
        )
        reshard(model)
        return {} if scores is None else scores.as_metrics()


def base_only(model: torch.nn.Module) -> AbstractContextManager[None]:
    """The base model's behaviour: a PEFT model with its adapter switched off."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if disable is not None else nullcontext()
