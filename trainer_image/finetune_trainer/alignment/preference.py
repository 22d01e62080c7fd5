"""The training losses of tasks ``reward-model`` and ``preference``.

A micro-batch of preference pairs is collated as 2B rows, the B chosen answers then
the B rejected ones (:func:`finetune_trainer.data.batching.collate`). Like every loss
of the trainer, each returns the *sum* over its pairs divided by the step's number of
pairs (``weight``), so micro-batches add up to the step's mean however they are cut.
"""

from __future__ import annotations

import torch

from finetune_api.config.alignment import PreferenceSpec
from finetune_trainer.alignment import losses
from finetune_trainer.alignment.logps import model_inputs, sequence_logps, split_pairs
from finetune_trainer.alignment.reference import Reference, reference_logps
from finetune_trainer.losses import Batch


def reward_scores(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """A reward model's score of every row (``[rows]``, fp32): its one output, read by
    transformers' sequence classifier at each row's last token that is not padding."""
    logits: torch.Tensor = model(**model_inputs(batch)).logits
    return logits[:, 0].float()


def reward_model_loss(model: torch.nn.Module, batch: Batch, weight: int) -> torch.Tensor:
    """The Bradley-Terry loss summed over the micro-batch's pairs, over the step's."""
    chosen, rejected = split_pairs(reward_scores(model, batch))
    loss, _, _ = losses.bradley_terry(chosen, rejected)
    return loss.sum() / weight


def pair_losses(
    spec: PreferenceSpec,
    logps: torch.Tensor,
    counts: torch.Tensor,
    reference: torch.Tensor | None,
) -> losses.PairLoss:
    """``spec.loss`` per pair from the 2B rows' summed log-probabilities, token counts
    and (dpo, ipo) the reference's log-probabilities."""
    chosen, rejected = split_pairs(logps)
    n_chosen, n_rejected = (c.clamp(min=1).to(logps.dtype) for c in split_pairs(counts))
    if spec.loss == "simpo":
        return losses.simpo(chosen, rejected, n_chosen, n_rejected, spec.beta, spec.gamma)
    if spec.loss == "orpo":
        return losses.orpo(chosen, rejected, n_chosen, n_rejected, spec.beta)
    if reference is None:
        raise ValueError(f"preference.loss {spec.loss} needs the reference log-probabilities")
    ref_chosen, ref_rejected = split_pairs(reference.to(logps.dtype))
    if spec.loss == "ipo":
        return losses.ipo(chosen, rejected, ref_chosen, ref_rejected, spec.beta)
    return losses.dpo(chosen, rejected, ref_chosen, ref_rejected, spec.beta, spec.label_smoothing)


class PreferenceLoss:
    """Task preference's loss: ``spec.loss`` on the policy's log-probabilities of each
    pair, against ``reference`` for dpo and ipo (None for the reference-free losses).

    It also keeps the step's implicit rewards, which the loop reads once per step
    (:meth:`step_metrics`): the live ``rewardAccuracy`` and ``rewardMargin`` of the
    training pairs, beside the loss, in the progress lines and gauges."""

    def __init__(self, spec: PreferenceSpec, reference: Reference | None) -> None:
        if spec.uses_reference and reference is None:
            raise ValueError(f"preference.loss {spec.loss} needs a reference policy")
        self.spec = spec
        self.reference = reference
        self._sums = torch.zeros(5, dtype=torch.float64)
        """This step's pairs, right-ranked pairs, margins, chosen and rejected logps."""

    def __call__(self, model: torch.nn.Module, batch: Batch, weight: int) -> torch.Tensor:
        ref = None
        if self.reference is not None:
            ref = reference_logps(self.reference, model, batch)
        logps, counts = sequence_logps(model, batch)
        loss, chosen_reward, rejected_reward = pair_losses(self.spec, logps, counts, ref)
        self._keep(chosen_reward.detach(), rejected_reward.detach(), logps.detach())
        return loss.sum() / weight

    def _keep(self, chosen: torch.Tensor, rejected: torch.Tensor, logps: torch.Tensor) -> None:
        chosen_logps, rejected_logps = split_pairs(logps)
        self._sums += torch.stack(
            [
                torch.tensor(float(chosen.numel())),
                (chosen > rejected).sum().cpu().double(),
                (chosen - rejected).sum().cpu().double(),
                chosen_logps.sum().cpu().double(),
                rejected_logps.sum().cpu().double(),
            ]
        ).double()

    def step_metrics(self) -> dict[str, float]:
        """The step's training pairs: share ranked right by the implicit reward, mean
        reward margin, mean chosen and rejected log-probabilities; then it resets."""
        sums, self._sums = self._sums, torch.zeros(5, dtype=torch.float64)
        pairs = float(sums[0])
        if pairs == 0:
            return {}
        right, margin, chosen, rejected = (float(v) / pairs for v in sums[1:])
        return {
            "rewardAccuracy": right,
            "rewardMargin": margin,
            "chosenLogps": chosen,
            "rejectedLogps": rejected,
        }
