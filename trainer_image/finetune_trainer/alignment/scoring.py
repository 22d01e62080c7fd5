"""Held-out scores of the reward-model and preference tasks, before and after training.

A reward model is scored on how it ranks the held-out pairs (``pairwiseAccuracy``,
``meanMargin``) and its Bradley-Terry loss. A preference-tuned policy is scored on the
configured loss, on its *own* preference (``preferenceAccuracy``: the chosen answer's
mean token log-probability above the rejected one's, comparable before and after for
every loss), on the loss's implicit reward (``rewardAccuracy``, ``rewardMargin``: before
training the policy is its own reference, so dpo's and ipo's are 0 and not reported
before), on the answers' log-probabilities, and on greedy generations against the
chosen answer (exact match, ROUGE-L...) like supervised training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from finetune_api.config.alignment import PreferenceSpec
from finetune_trainer.alignment.logps import sequence_logps, split_pairs
from finetune_trainer.alignment.losses import bradley_terry
from finetune_trainer.alignment.preference import pair_losses, reward_scores
from finetune_trainer.alignment.reference import REFERENCE_KEY
from finetune_trainer.data.batching import collate
from finetune_trainer.data.prepare import EvalSample
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.evaluation import (
    EvalResult,
    exact_match,
    generate_answers,
    overlap_scores,
    rouge_l,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class RewardModelScores:
    """A reward model on held-out pairs."""

    generations: ClassVar[bool] = False
    loss: float
    pairwise_accuracy: float
    mean_margin: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "evalLoss": self.loss,
            "pairwiseAccuracy": self.pairwise_accuracy,
            "meanMargin": self.mean_margin,
        }


@dataclass(frozen=True)
class PreferenceScores:
    """A preference-tuned policy on held-out pairs."""

    generations: ClassVar[bool] = True
    loss: float
    preference_accuracy: float
    reward_accuracy: float
    reward_margin: float
    chosen_logps: float
    rejected_logps: float

    def as_metrics(self) -> dict[str, float]:
        return {
            "evalLoss": self.loss,
            "preferenceAccuracy": self.preference_accuracy,
            "rewardAccuracy": self.reward_accuracy,
            "rewardMargin": self.reward_margin,
            "chosenLogps": self.chosen_logps,
            "rejectedLogps": self.rejected_logps,
        }


def _batches(
    examples: Sequence[TokenizedExample], batch_size: int, pad_id: int, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """The examples in order, collated ``batch_size`` pairs at a time, on ``device``."""
    return [
        {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        for i in range(0, len(examples), batch_size)
    ]


@torch.no_grad()
def reward_model_scores(
    model: torch.nn.Module, examples: Sequence[TokenizedExample], batch_size: int, pad_id: int
) -> RewardModelScores | None:
    """Bradley-Terry loss, share of pairs ranked right, and mean score margin."""
    if not examples:
        return None
    model.eval()
    device = next(model.parameters()).device
    chosen, rejected = [], []
    for batch in _batches(examples, batch_size, pad_id, device):
        c, r = split_pairs(reward_scores(model, batch))
        chosen.append(c)
        rejected.append(r)
    c, r = torch.cat(chosen), torch.cat(rejected)
    loss, _, _ = bradley_terry(c, r)
    return RewardModelScores(
        float(loss.mean()), float((c > r).float().mean()), float((c - r).mean())
    )


@torch.no_grad()
def preference_scores(
    model: torch.nn.Module,
    examples: Sequence[TokenizedExample],
    batch_size: int,
    pad_id: int,
    spec: PreferenceSpec,
) -> PreferenceScores | None:
    """The loss of ``spec`` and the preference metrics over ``examples``; dpo and ipo
    read each pair's reference log-probabilities, computed before training
    (:func:`finetune_trainer.alignment.precompute.with_reference_logps`)."""
    if not examples:
        return None
    model.eval()
    device = next(model.parameters()).device
    parts: dict[str, list[torch.Tensor]] = {k: [] for k in ("loss", "rc", "rr", "mc", "mr")}
    sums: list[torch.Tensor] = []
    for batch in _batches(examples, batch_size, pad_id, device):
        logps, counts = sequence_logps(model, batch)
        loss, chosen_reward, rejected_reward = pair_losses(
            spec, logps, counts, batch.get(REFERENCE_KEY)
        )
        mean = logps / counts.clamp(min=1)
        for key, value in zip(
            parts, (loss, chosen_reward, rejected_reward, *split_pairs(mean)), strict=True
        ):
            parts[key].append(value)
        sums.append(torch.stack(split_pairs(logps)))
    cat = {k: torch.cat(v) for k, v in parts.items()}
    answer_logps = torch.cat(sums, dim=1)
    return PreferenceScores(
        loss=float(cat["loss"].mean()),
        preference_accuracy=float((cat["mc"] > cat["mr"]).float().mean()),
        reward_accuracy=float((cat["rc"] > cat["rr"]).float().mean()),
        reward_margin=float((cat["rc"] - cat["rr"]).mean()),
        chosen_logps=float(answer_logps[0].mean()),
        rejected_logps=float(answer_logps[1].mean()),
    )


@dataclass(frozen=True)
class PairEvaluation:
    """How a reward-model or preference run is evaluated (``preference``: the loss the
    preference task scores; unused by the reward model)."""

    task: str
    preference: PreferenceSpec

    def scores(
        self,
        model: torch.nn.Module,
        examples: Sequence[TokenizedExample],
        batch_size: int,
        pad_id: int,
    ) -> RewardModelScores | PreferenceScores | None:
        """The cheap scores (the periodic evaluation's): no generation."""
        if self.task == "reward-model":
            return reward_model_scores(model, examples, batch_size, pad_id)
        return preference_scores(model, examples, batch_size, pad_id, self.preference)

    def evaluate(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        validation: Sequence[TokenizedExample],
        samples: Sequence[EvalSample],
        *,
        batch_size: int,
        max_new_tokens: int,
    ) -> EvalResult:
        """The scores, and for a policy its greedy answers against the chosen ones."""
        scores = self.scores(model, validation, batch_size, tokenizer.pad_token_id)
        if self.task == "reward-model":
            return EvalResult(scores)
        predictions = generate_answers(
            model, tokenizer, samples, batch_size=batch_size, max_new_tokens=max_new_tokens
        )
        return EvalResult(
            scores,
            exact_match(predictions),
            rouge_l(predictions),
            predictions,
            overlap_scores(predictions),
        )
