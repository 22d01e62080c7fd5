"""The preference losses against hand-derived values and gradients on tiny tensors.

Every expected number is computed here from the paper's formula written out with the
``math`` module (scalars, no torch), and every gradient from its derivative derived
by hand; torch.autograd must agree with both.
"""

from __future__ import annotations

import math

import pytest
import torch

from finetune_trainer.alignment import losses


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def _grad(loss: torch.Tensor, *wrt: torch.Tensor) -> list[float]:
    grads = torch.autograd.grad(loss.sum(), wrt)
    return [g[0].item() for g in grads]


def test_bradley_terry_value_and_gradient() -> None:
    chosen, rejected = _t(1.0), _t(0.5)
    loss, r_c, r_r = losses.bradley_terry(chosen, rejected)
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-0.5)))
    assert r_c[0].item() == 1.0 and r_r[0].item() == 0.5
    g_c, g_r = _grad(loss, chosen, rejected)
    assert g_c == pytest.approx(-(1 - _sigmoid(0.5)))  # -sigma(-(s_c - s_r))
    assert g_r == pytest.approx(1 - _sigmoid(0.5))
    assert loss[0].item() == pytest.approx(0.474077, abs=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_dpo_value_rewards_and_gradient(smoothing: float) -> None:
    beta = 0.1
    chosen, rejected = _t(-10.0), _t(-12.0)
    ref_c, ref_r = torch.tensor([-11.0], dtype=torch.float64), torch.tensor([-11.0]).double()
    loss, r_c, r_r = losses.dpo(chosen, rejected, ref_c, ref_r, beta, smoothing)
    z = beta * ((-10 + 11) - (-12 + 11))  # 0.2
    expected = -(1 - smoothing) * math.log(_sigmoid(z)) - smoothing * math.log(_sigmoid(-z))
    assert loss[0].item() == pytest.approx(expected)
    assert r_c[0].item() == pytest.approx(0.1) and r_r[0].item() == pytest.approx(-0.1)
    g_c, g_r = _grad(loss, chosen, rejected)
    d_z = -(1 - smoothing) * _sigmoid(-z) + smoothing * _sigmoid(z)  # dloss/dz
    assert g_c == pytest.approx(beta * d_z)
    assert g_r == pytest.approx(-beta * d_z)


def test_dpo_known_number() -> None:
    loss, _, _ = losses.dpo(_t(-10.0), _t(-12.0), _t(-11.0), _t(-11.0), 0.1)
    assert loss[0].item() == pytest.approx(0.598139, abs=1e-6)  # log(1 + e^-0.2)


def test_ipo_value_and_gradient() -> None:
    beta = 0.1
    chosen, rejected = _t(-10.0), _t(-12.0)
    ref = torch.tensor([-11.0], dtype=torch.float64)
    loss, r_c, r_r = losses.ipo(chosen, rejected, ref, ref, beta)
    # h = (1) - (-1) = 2; target 1 / (2 * 0.1) = 5; (2 - 5)^2 = 9
    assert loss[0].item() == pytest.approx(9.0)
    assert r_c[0].item() == pytest.approx(0.1) and r_r[0].item() == pytest.approx(-0.1)
    g_c, g_r = _grad(loss, chosen, rejected)
    assert g_c == pytest.approx(2 * (2 - 5))  # -6
    assert g_r == pytest.approx(-2 * (2 - 5))


def test_simpo_value_and_gradient() -> None:
    beta, gamma = 2.0, 0.5
    chosen, rejected = _t(-6.0), _t(-12.0)
    n_c, n_r = torch.tensor([3.0]).double(), torch.tensor([4.0]).double()
    loss, r_c, r_r = losses.simpo(chosen, rejected, n_c, n_r, beta, gamma)
    # rewards: 2 * -6/3 = -4 and 2 * -12/4 = -6; argument -4 + 6 - 0.5 = 1.5
    assert r_c[0].item() == pytest.approx(-4.0) and r_r[0].item() == pytest.approx(-6.0)
    assert loss[0].item() == pytest.approx(math.log(1 + math.exp(-1.5)))
    g_c, g_r = _grad(loss, chosen, rejected)
    assert g_c == pytest.approx(-_sigmoid(-1.5) * beta / 3)
    assert g_r == pytest.approx(_sigmoid(-1.5) * beta / 4)


def test_simpo_margin_gamma_raises_the_loss() -> None:
    args = (_t(-6.0), _t(-12.0), _t(3.0), _t(4.0), 2.0)
    without, _, _ = losses.simpo(*args, 0.0)
    with_margin, _, _ = losses.simpo(*args, 1.0)
    assert with_margin[0].item() > without[0].item()


def test_orpo_value_and_gradient() -> None:
    beta = 0.1
    chosen, rejected = _t(-2.0), _t(-6.0)
    n_c, n_r = torch.tensor([4.0]).double(), torch.tensor([3.0]).double()
    loss, odds_c, odds_r = losses.orpo(chosen, rejected, n_c, n_r, beta)
    m_c, m_r = -0.5, -2.0  # mean log-probability per token

    def log_odds(m: float) -> float:
        return m - math.log(1 - math.exp(m))

    diff = log_odds(m_c) - log_odds(m_r)
    assert odds_c[0].item() == pytest.approx(log_odds(m_c))
    assert odds_r[0].item() == pytest.approx(log_odds(m_r))
    assert loss[0].item() == pytest.approx(-m_c - beta * math.log(_sigmoid(diff)))
    g_c, g_r = _grad(loss, chosen, rejected)
    # d log_odds / dm = 1 / (1 - e^m); dm / d(sum) = 1 / tokens
    assert g_c == pytest.approx((-1 - beta * _sigmoid(-diff) / (1 - math.exp(m_c))) / 4)
    assert g_r == pytest.approx((beta * _sigmoid(-diff) / (1 - math.exp(m_r))) / 3)


def test_log_odds_is_finite_at_both_ends() -> None:
    values = losses.log_odds(torch.tensor([0.0, -1e-9, -50.0, -1e-3], dtype=torch.float64))
    assert torch.isfinite(values).all()
    assert values[2].item() == pytest.approx(-50.0, abs=1e-9)  # log p - log(1 - p) ~ log p
    assert values[3].item() == pytest.approx(-1e-3 - math.log(1 - math.exp(-1e-3)))


def test_losses_are_per_pair() -> None:
    chosen, rejected = _t(-1.0, -2.0, -3.0), _t(-2.0, -2.0, -1.0)
    ref = torch.zeros(3, dtype=torch.float64)
    loss, _, _ = losses.dpo(chosen, rejected, ref, ref, 1.0)
    assert loss.shape == (3,)
    assert loss[0].item() < loss[1].item() < loss[2].item()  # margins 1, 0, -2


def test_pair_losses_read_chosen_rows_first_then_rejected() -> None:
    """A collated batch of B pairs holds the chosen rows, then the rejected ones."""
    from finetune_api.config.alignment import PreferenceSpec
    from finetune_trainer.alignment.preference import pair_losses

    logps = torch.tensor([-1.0, -2.0, -3.0, -1.5], dtype=torch.float64)  # c1 c2 r1 r2
    counts = torch.tensor([2, 4, 3, 1])
    ref = torch.tensor([-1.5, -2.0, -2.0, -2.0], dtype=torch.float64)
    loss, r_c, r_r = pair_losses(PreferenceSpec(loss="dpo", beta=0.5), logps, counts, ref)
    expected, _, _ = losses.dpo(logps[:2], logps[2:], ref[:2], ref[2:], 0.5)
    assert torch.allclose(loss, expected)
    assert r_c.tolist() == pytest.approx([0.25, 0.0]) and r_r.tolist() == pytest.approx(
        [-0.5, 0.25]
    )
    simpo, _, _ = pair_losses(
        PreferenceSpec(loss="simpo", beta=2.0, gamma=0.5), logps, counts, None
    )
    n = counts.double()
    expected, _, _ = losses.simpo(logps[:2], logps[2:], n[:2], n[2:], 2.0, 0.5)
    assert torch.allclose(simpo, expected)


def test_dpo_without_reference_numbers_is_refused() -> None:
    from finetune_api.config.alignment import PreferenceSpec
    from finetune_trainer.alignment.preference import PreferenceLoss, pair_losses

    with pytest.raises(ValueError, match="reference"):
        pair_losses(PreferenceSpec(loss="ipo"), torch.zeros(2), torch.ones(2), None)
    with pytest.raises(ValueError, match="reference policy"):
        PreferenceLoss(PreferenceSpec(loss="dpo"), None)
