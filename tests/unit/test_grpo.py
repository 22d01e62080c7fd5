"""GRPO's math with known numbers (group advantages, the clipped surrogate and its
gradient, the k3 KL estimator, the completion mask), and the loss on the tiny model."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_api.tasks import STEP_METRICS
from finetune_trainer.alignment.grpo import (
    STD_EPSILON,
    GRPOLoss,
    Sampling,
    clipped_surrogate,
    completion_mask,
    group_advantages,
    k3_kl,
    token_logps,
)
from finetune_trainer.alignment.rewards import NamedReward, Rewards, length_reward


def test_group_advantages_are_relative_to_their_own_group() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 3.0, 1.0])
    adv = group_advantages(rewards, 2)
    # Group (1, 0): mean 0.5, sample std sqrt(0.5) = 0.7071.
    std = math.sqrt(0.5)
    expected = [0.5 / (std + STD_EPSILON), -0.5 / (std + STD_EPSILON)]
    assert adv[:2].tolist() == pytest.approx(expected)
    assert adv[2:4].tolist() == pytest.approx([-expected[0], expected[0]])
    # Group (3, 1): mean 2, sample std sqrt(2).
    assert adv[4:].tolist() == pytest.approx(
        [1 / (math.sqrt(2) + 1e-4), -1 / (math.sqrt(2) + 1e-4)]
    )


def test_a_group_with_equal_rewards_has_zero_advantage() -> None:
    adv = group_advantages(torch.tensor([0.7, 0.7, 0.7, 0.7, 1.0, 0.0, 0.0, 0.0]), 4)
    assert adv[:4].tolist() == [0.0, 0.0, 0.0, 0.0]
    # Four completions, one right: mean 0.25, sample std 0.5.
    assert adv[4].item() == pytest.approx(0.75 / (0.5 + 1e-4))
    assert adv[5].item() == pytest.approx(-0.25 / (0.5 + 1e-4))


def test_clipping_with_ratio_1_5_and_epsilon_0_2() -> None:
    """ratio 1.5, eps 0.2: with A = +1 the clipped term 1.2 is the minimum (the clip
    binds, no gradient); with A = -1 the unclipped -1.5 is (no clip, full gradient)."""
    old = torch.zeros(2, 1)
    logp = torch.full((2, 1), math.log(1.5), requires_grad=True)
    adv = torch.tensor([1.0, -1.0])
    loss, binds = clipped_surrogate(logp, old, adv, epsilon=0.2)
    assert loss.squeeze(1).tolist() == pytest.approx([-1.2, 1.5])
    assert binds.squeeze(1).tolist() == [True, False]
    loss.sum().backward()
    assert logp.grad is not None
    # d/dlogp of -ratio * A = -ratio * A: 0 where clipped, +1.5 for A = -1.
    assert logp.grad.squeeze(1).tolist() == pytest.approx([0.0, 1.5])
    clip_fraction = binds.float().mean().item()
    assert clip_fraction == 0.5


def test_clipping_below_the_range_binds_for_negative_advantages() -> None:
    """ratio 0.5: with A = -1 the clipped -0.8 is the minimum (binds); with A = +1 the
    unclipped 0.5 is."""
    logp = torch.full((2, 1), math.log(0.5))
    loss, binds = clipped_surrogate(logp, torch.zeros(2, 1), torch.tensor([1.0, -1.0]), 0.2)
    assert loss.squeeze(1).tolist() == pytest.approx([-0.5, 0.8])
    assert binds.squeeze(1).tolist() == [False, True]


def test_ratio_one_gives_the_plain_policy_gradient_and_never_clips() -> None:
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    adv = torch.tensor([2.0, -3.0])
    loss, binds = clipped_surrogate(logp, logp.detach(), adv, epsilon=0.2)
    assert not binds.any()
    loss.sum().backward()
    assert logp.grad is not None
    assert logp.grad.tolist() == [[-2.0, -2.0], [3.0, 3.0]]


def test_k3_estimator() -> None:
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # exp(ref - logp) - (ref - logp) - 1 = 0.5 + log 2 - 1
    assert k3_kl(logp, ref).item() == pytest.approx(0.5 + math.log(2) - 1)
    assert k3_kl(ref, ref).item() == 0.0
    assert (k3_kl(torch.randn(100), torch.randn(100)) >= 0).all()


def test_k3_is_unbiased_for_the_kl_under_the_policy() -> None:
    """E_{x~p}[k3] = KL(p || ref): weighting k3 by p over every outcome gives the KL."""
    p = torch.tensor([0.6, 0.3, 0.1])
    ref = torch.tensor([0.2, 0.5, 0.3])
    expected = float((p * (p / ref).log()).sum())
    assert float((p * k3_kl(p.log(), ref.log())).sum()) == pytest.approx(expected)


def test_completion_mask_ends_with_the_first_eos() -> None:
    completion = torch.tensor([[5, 2, 7, 2], [5, 6, 7, 8], [2, 9, 9, 9]])
    assert completion_mask(completion, 2).tolist() == [
        [1, 1, 0, 0],
        [1, 1, 1, 1],
        [1, 0, 0, 0],
    ]
    assert completion_mask(completion, None).tolist() == [[1] * 4] * 3


# --------------------------------------------------------------------------- on a model


def _tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    return model, tok


def _prompts(tok: Any) -> dict[str, torch.Tensor]:
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        for q in ("What is colour 1?", "Convert March 5")
    ]
    batch = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {**batch, "row_ids": torch.tensor([0, 1])}


def test_token_logps_match_a_full_forward(tiny_model_dir: Path) -> None:
    model, tok = _tiny(tiny_model_dir)
    batch = _prompts(tok)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    got = token_logps(model, ids, mask, 3)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions).logits
    full = torch.log_softmax(logits.float(), -1)[:, :-1].gather(2, ids[:, 1:].unsqueeze(2))
    assert torch.allclose(got, full.squeeze(2)[:, -3:], atol=1e-5)


def test_grpo_loss_on_the_tiny_model(tiny_model_dir: Path) -> None:
    """Sampling is seeded by torch's generator (the same seed samples the same
    completions); the gradient is the policy gradient (finite, not zero when rewards
    differ: here the number of distinct characters); the step's extras are the means
    over its completions, then reset."""
    model, tok = _tiny(tiny_model_dir)
    rewards = Rewards(
        (NamedReward("rewardChars", "model", 1.0, lambda cs: [float(len(set(c.raw))) for c in cs]),)
    )
    sampling = Sampling(
        generations=4, max_new_tokens=6, temperature=1.0, top_p=1.0, beta=0.0, epsilon=0.2
    )
    loss_fn = GRPOLoss(sampling, tok, rewards, ["x", None], reference=None)
    batch = _prompts(tok)
    torch.manual_seed(3)
    first = loss_fn.sample(model, batch)
    torch.manual_seed(3)
    assert torch.equal(loss_fn.sample(model, batch), first)
    assert not model.training  # sampling restored the mode it found (from_pretrained: eval)
    model.train()
    torch.manual_seed(3)
    loss = loss_fn(model, batch, 2)
    assert model.training
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    extras = loss_fn.step_metrics()
    # The contract's list of the step's metrics (documented, refused as reward names),
    # and each reward by name.
    assert set(extras) == {*STEP_METRICS, "rewardChars"}
    assert extras["reward"] == extras["rewardChars"] > 0
    assert extras["clipFraction"] == 0.0 and extras["kl"] == 0.0
    assert loss_fn.step_metrics() == {}


def test_grpo_kl_with_a_reference(tiny_model_dir: Path) -> None:
    """With beta > 0 the k3 KL to the reference is added and reported; against the
    policy itself it is 0."""
    model, tok = _tiny(tiny_model_dir)
    rewards = Rewards((NamedReward("rewardLength", "length", 1.0, lambda cs: [0.0] * len(cs)),))
    sampling = Sampling(4, 4, 1.0, 1.0, beta=0.5, epsilon=0.2)
    reference, _ = _tiny(tiny_model_dir)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))

    def ref_logps(_: Any, ids: torch.Tensor, mask: torch.Tensor, n: int) -> torch.Tensor:
        return token_logps(reference, ids, mask, n)

    loss_fn = GRPOLoss(sampling, tok, rewards, [None, None], reference=ref_logps)
    torch.manual_seed(0)
    loss = loss_fn(model, _prompts(tok), 2)
    extras = loss_fn.step_metrics()
    assert extras["kl"] > 0
    # All rewards equal: advantages 0, so the loss is beta x the mean KL (per completion
    # mean, then per prompt), positive.
    assert loss.item() > 0
    same = GRPOLoss(
        sampling,
        tok,
        rewards,
        [None, None],
        reference=lambda m, i, a, n: token_logps(model, i, a, n),
    )
    torch.manual_seed(0)
    assert same(model, _prompts(tok), 2).item() == pytest.approx(0.0, abs=1e-6)
    assert same.step_metrics()["kl"] == pytest.approx(0.0, abs=1e-6)


def test_length_reward_reads_tokens() -> None:
    from finetune_trainer.alignment.rewards import Completion

    score = length_reward(2, 3)
    assert [score(Completion("", "", "", n)) for n in (1, 2, 3, 4)] == [0.0, 1.0, 1.0, 0.0]


def test_turn_end_is_what_the_template_writes_after_an_answer(tiny_model_dir: Path) -> None:
    """A reward model scores prompt + answer + this: the text its training pairs ended
    with (ChatML: <|im_end|> and a newline); without a template, the EOS token."""
    from transformers import AutoTokenizer

    from finetune_trainer.alignment.grpo import turn_end

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert turn_end(tok) == "<|im_end|>\n"
    tok.chat_template = None
    assert turn_end(tok) == "<|im_end|>"


def test_the_reference_is_the_adapter_switched_off_or_a_frozen_copy(
    tiny_model_dir: Path,
) -> None:
    """With a peft model the KL reference is the base (the adapter disabled: no copy),
    whatever the adapter learned; for full and freeze it is the frozen copy taken before
    training; a model with neither is an error, not a silent KL of 0."""
    from peft import LoraConfig, get_peft_model

    from finetune_trainer.alignment.grpo import token_reference
    from finetune_trainer.alignment.reference import AdapterOff, FrozenCopy
    from finetune_trainer.errors import ModelError

    base, tok = _tiny(tiny_model_dir)
    batch = _prompts(tok)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    expected = token_logps(base, ids, mask, 3).detach()
    policy = get_peft_model(
        base, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False)
    )
    policy.train()
    assert not torch.allclose(token_logps(policy, ids, mask, 3), expected, atol=1e-4)
    got = token_reference(AdapterOff())(policy, ids, mask, 3)
    assert torch.allclose(got, expected, atol=1e-5) and not got.requires_grad
    assert policy.training  # its mode is given back

    full, _ = _tiny(tiny_model_dir)
    frozen = FrozenCopy(_tiny(tiny_model_dir)[0])
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.1)
    assert torch.allclose(token_reference(frozen)(full, ids, mask, 3), expected, atol=1e-5)
    with pytest.raises(ModelError, match="no adapter"):
        token_reference(AdapterOff())(full, ids, mask, 3)
