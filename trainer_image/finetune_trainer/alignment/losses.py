"""The preference losses as pure math on per-sequence numbers.

Each function takes per-pair tensors (one value per pair: the summed log-probability of
an answer's tokens, or a reward model's score) and returns three tensors of the same
shape: the per-pair loss, and the implicit reward of the chosen and of the rejected
answer (what ``rewardAccuracy`` and ``rewardMargin`` read). Nothing here runs a model,
so every formula is checked on tiny hand-made tensors, values and gradients alike
(tests/unit/test_alignment_losses.py).

Log-probabilities are *sums* over an answer's tokens (the sequence's log-probability)
unless a loss says it normalises by length (SimPO, ORPO), as in each loss's paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PairLoss = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(per-pair loss, chosen reward, rejected reward)."""


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> PairLoss:
    """A reward model's loss: -log sigmoid(s_chosen - s_rejected) (Bradley-Terry).

    The probability that the chosen answer is preferred is the sigmoid of the score
    difference; the rewards are the scores themselves."""
    return -F.logsigmoid(chosen - rejected), chosen, rejected


def dpo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> PairLoss:
    """DPO's sigmoid loss (Rafailov et al. 2023), with conservative label smoothing.

    With the implicit reward r = beta * (log pi - log pi_ref) and z = r_chosen -
    r_rejected, the loss is -(1 - e) log sigmoid(z) - e log sigmoid(-z): ``e`` (the
    label smoothing) is the assumed share of pairs whose preference label is flipped
    (cDPO), which keeps the loss from pushing the margin to infinity."""
    chosen_reward = beta * (chosen - ref_chosen)
    rejected_reward = beta * (rejected - ref_rejected)
    z = chosen_reward - rejected_reward
    loss = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return loss, chosen_reward, rejected_reward


def ipo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> PairLoss:
    """IPO (Azar et al. 2023): (h - 1 / (2 beta))^2 with h the log-ratio margin
    (log pi/pi_ref of chosen minus that of rejected).

    A squared loss regresses the margin to a finite target instead of pushing it up
    forever, which is what keeps IPO from overfitting deterministic preferences. The
    rewards reported are DPO's, beta * (log pi - log pi_ref), so that the metrics read
    the same for both."""
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    loss = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return loss, beta * chosen_ratio, beta * rejected_ratio


def simpo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
    gamma: float,
) -> PairLoss:
    """SimPO (Meng et al. 2024): -log sigmoid(r_chosen - r_rejected - gamma), with the
    reference-free reward r = beta * (log pi) / |answer tokens|.

    The length normalisation stops the loss from preferring long answers; ``gamma`` is
    the target margin in reward units (the paper's gamma, not TRL's gamma/beta ratio)."""
    chosen_reward = beta * chosen / chosen_tokens
    rejected_reward = beta * rejected / rejected_tokens
    loss = -F.logsigmoid(chosen_reward - rejected_reward - gamma)
    return loss, chosen_reward, rejected_reward


def orpo(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
    beta: float,
) -> PairLoss:
    """ORPO (Hong et al. 2024): NLL(chosen) + beta * -log sigmoid(log odds ratio).

    With p the length-normalised probability exp(log pi / |tokens|) of an answer, the
    odds are p / (1 - p) and the ratio compares the chosen answer's odds to the
    rejected's. The NLL term is the mean per-token cross-entropy of the chosen answer
    (supervised fine-tuning on it), so no reference model is needed. ``beta`` is the
    paper's lambda. The rewards reported are each answer's log odds."""
    chosen_mean = chosen / chosen_tokens
    rejected_mean = rejected / rejected_tokens
    chosen_odds = log_odds(chosen_mean)
    rejected_odds = log_odds(rejected_mean)
    loss = -chosen_mean - beta * F.logsigmoid(chosen_odds - rejected_odds)
    return loss, chosen_odds, rejected_odds


def log_odds(logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) from log p (< 0), stable near both ends.

    log(1 - p) = log(-expm1(log p)) is exact where p is close to 1, log1p(-p) where p
    is small; log p is kept a hair below 0 so that a certain answer stays finite."""
    logp = logp.clamp(max=-1e-6)
    log_one_minus = torch.where(
        logp > -0.6931471805599453, torch.log(-torch.expm1(logp)), torch.log1p(-torch.exp(logp))
    )
    return logp - log_one_minus
