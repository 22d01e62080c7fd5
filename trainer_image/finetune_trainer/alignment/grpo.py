"""GRPO (group relative policy optimisation) with verifiable rewards: the online loss.

For each prompt of a micro-batch the current policy samples G completions
(``reinforcement.generations``), the rewards score them, and each completion's
advantage is its reward relative to its own group: ``(r - mean_group) / (std_group +
1e-4)``. No value model: the group is the baseline (Shao et al. 2024, DeepSeekMath).

The per-token objective is PPO's clipped surrogate ``min(ratio * A, clip(ratio, 1 - eps,
1 + eps) * A)`` with ``ratio = exp(logp - logp_old)``, minus ``beta`` times the k3
estimate of KL(policy || reference), ``exp(ref - logp) - (ref - logp) - 1`` (unbiased,
always >= 0). A completion's loss is the mean over its tokens (up to and including its
end-of-sequence token), a prompt's loss the mean over its G completions, and the
micro-batch returns the sum over its prompts divided by the step's prompts (the loop's
``weight``), so micro-batches add up to the step's mean however they are cut.

One optimisation pass per generation: ``logp_old`` is the current policy's own
log-probability, detached, so the ratio is exactly 1 and its gradient is the plain
policy gradient ``A * grad logp``; the clip never binds and ``clipFraction`` reads 0.
The clip is kept (and measured) so the objective is the one the literature states and
the same code would serve several passes over one generation.

Sampling uses KV-cached ``model.generate`` in eval mode (dropout off) under no_grad,
drawing from torch's global generator: the loop checkpoints and restores that
generator, so a resumed run samples exactly the completions the uninterrupted run did.
vLLM is not used.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from finetune_trainer.alignment.reference import (
    FrozenCopy,
    Reference,
    evaluating,
    unwrapped,
)
from finetune_trainer.alignment.rewards import Completion, Rewards
from finetune_trainer.data.batching import collate_prompts
from finetune_trainer.data.tokenize import PromptExample, TokenizedExample
from finetune_trainer.errors import ModelError
from finetune_trainer.evaluation import EvalResult, Prediction

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "GRPOLoss",
    "MeanRewards",
    "RewardEvaluation",
    "Sampling",
    "clipped_surrogate",
    "completion_mask",
    "group_advantages",
    "k3_kl",
    "token_logps",
    "token_reference",
    "turn_end",
]

STD_EPSILON = 1e-4
"""Added to a group's reward std: a group whose rewards are all equal has advantages 0
(nothing to learn from it), not a division by zero."""


# --------------------------------------------------------------------------- the math


def group_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Each reward relative to its group of ``group_size`` consecutive completions:
    ``(r - mean) / (std + 1e-4)``, the std with Bessel's correction (a sample of the
    policy's completions, not the whole population)."""
    groups = rewards.view(-1, group_size)
    mean = groups.mean(dim=1, keepdim=True)
    std = groups.std(dim=1, keepdim=True)
    return ((groups - mean) / (std + STD_EPSILON)).view(-1)


def clipped_surrogate(
    logp: torch.Tensor, logp_old: torch.Tensor, advantages: torch.Tensor, epsilon: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped objective per token, as a loss to minimise, and where the clip binds.

    ``logp``/``logp_old``: ``[N, T]`` token log-probabilities; ``advantages``: ``[N]``
    (one per completion). Returns ``-min(ratio * A, clip(ratio) * A)`` ``[N, T]`` and a
    boolean ``[N, T]``, True where the clipped term is the smaller one (the ratio left
    ``[1 - eps, 1 + eps]`` in the direction the advantage rewards), whose gradient is 0.
    """
    ratio = torch.exp(logp - logp_old)
    a = advantages.unsqueeze(1)
    unclipped = ratio * a
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * a
    binds = clipped < unclipped
    return -torch.minimum(unclipped, clipped), binds


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimate of KL(policy || reference) per token sampled from the
    policy: ``exp(ref - logp) - (ref - logp) - 1``; unbiased, never negative, 0 where
    the two agree."""
    delta = ref_logp - logp
    return torch.exp(delta) - delta - 1


def completion_mask(completion: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """1 over each completion's tokens up to and including its first end-of-sequence
    token (the model chose to stop: that choice is trained too), 0 after it; a
    completion cut by maxNewTokens is all 1."""
    if eos_token_id is None:
        return torch.ones_like(completion, dtype=torch.long)
    is_eos = completion == eos_token_id
    # Tokens strictly after the first EOS: at least one EOS before them.
    after = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    return (~after).long()


def token_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_length: int,
) -> torch.Tensor:
    """Log-probability of each of the last ``completion_length`` tokens of every row,
    ``[N, completion_length]``. Only those positions' logits are computed
    (``logits_to_keep``); positions follow the attention mask, as generation placed them
    for left-padded prompts."""
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=completion_length + 1,
    ).logits[:, :-1]
    target = input_ids[:, -completion_length:]
    logits = logits.float()
    picked = torch.gather(logits, 2, target.unsqueeze(2)).squeeze(2)
    return picked - torch.logsumexp(logits, dim=2)


# --------------------------------------------------------------------------- the loss


@dataclass(frozen=True)
class Sampling:
    """How completions are drawn (``reinforcement``'s options)."""

    generations: int
    max_new_tokens: int
    temperature: float
    top_p: float
    beta: float
    epsilon: float


ReferenceLogps = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]
"""(policy, input_ids, attention_mask, completion length) -> the reference policy's token
log-probabilities, without gradient."""


@dataclass
class _Sums:
    """Per-step sums of what :meth:`GRPOLoss.step_metrics` reports."""

    completions: int = 0
    reward: float = 0.0
    reward_sq: float = 0.0
    kl: float = 0.0
    tokens: int = 0
    clipped: int = 0
    by_name: dict[str, float] = field(default_factory=dict)


class GRPOLoss:
    """The loop's loss for task ``reinforcement`` (a LossFn), with the step's extras.

    Built with the training prompts' reference answers (indexed by the examples'
    ``row``, which the collated batch carries as ``row_ids``), the tokenizer that decodes
    completions, the rewards, and the reference policy (None when ``beta`` is 0: no
    reference forward at all)."""

    def __init__(
        self,
        sampling: Sampling,
        tokenizer: PreTrainedTokenizerBase,
        rewards: Rewards,
        references: Sequence[str | None],
        reference: ReferenceLogps | None,
    ) -> None:
        self.sampling = sampling
        self.tokenizer = tokenizer
        self.rewards = rewards
        self.references = list(references)
        self.reference = reference if sampling.beta > 0 else None
        self.turn_end = turn_end(tokenizer)
        self._sums = _Sums()

    # -- sampling

    def sample(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """G completions per prompt, ``[B * G, P + T]`` (prompts repeated, each group's
        completions consecutive), from the current policy in eval mode."""
        s, inner = self.sampling, unwrapped(model)
        generate: Any = getattr(inner, "generate")  # noqa: B009 - transformers' own, untyped
        was_training = inner.training
        inner.eval()
        try:
            with torch.no_grad():
                sequences: torch.Tensor = generate(
                    input_ids=batch["input_ids"].repeat_interleave(s.generations, dim=0),
                    attention_mask=batch["attention_mask"].repeat_interleave(s.generations, dim=0),
                    do_sample=True,
                    temperature=s.temperature,
                    top_p=s.top_p,
                    top_k=0,
                    max_new_tokens=s.max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=self.tokenizer.eos_token_id,
                    use_cache=True,
                )
        finally:
            inner.train(was_training)
        return sequences

    def completions(
        self,
        prompts: torch.Tensor,
        prompt_mask: torch.Tensor,
        completion: torch.Tensor,
        mask: torch.Tensor,
        row_ids: torch.Tensor,
    ) -> list[Completion]:
        """The completions as the rewards read them (each with its prompt's reference)."""
        g, tok = self.sampling.generations, self.tokenizer
        prompt_texts = [
            _decode(tok, ids[keep.bool()].tolist())
            for ids, keep in zip(prompts, prompt_mask, strict=True)
        ]
        out = []
        for i in range(completion.size(0)):
            ids = completion[i][mask[i].bool()].tolist()
            row = int(row_ids[i // g])
            out.append(
                Completion(
                    prompt=prompt_texts[i // g],
                    text=_decode(tok, ids, skip_special=True),
                    raw=_decode(tok, ids, skip_special=True) + self.turn_end,
                    tokens=len(ids),
                    reference=self.references[row] if 0 <= row < len(self.references) else None,
                )
            )
        return out

    # -- the loss

    def __call__(
        self, model: torch.nn.Module, batch: dict[str, torch.Tensor], weight: int
    ) -> torch.Tensor:
        s = self.sampling
        prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        width = prompt_ids.size(1)
        sequences = self.sample(model, batch)
        completion = sequences[:, width:]
        mask = completion_mask(completion, self.tokenizer.eos_token_id)
        texts = self.completions(prompt_ids, prompt_mask, completion, mask, batch["row_ids"])
        scores = self.rewards.score(texts)
        rewards = torch.tensor(scores.total, dtype=torch.float32, device=sequences.device)
        advantages = group_advantages(rewards, s.generations)
        attention = torch.cat([prompt_mask.repeat_interleave(s.generations, dim=0), mask], dim=1)
        length = completion.size(1)
        logp = token_logps(model, sequences, attention, length)
        per_token, binds = clipped_surrogate(logp, logp.detach(), advantages, s.epsilon)
        kl = torch.zeros_like(logp)
        if self.reference is not None:
            with torch.no_grad():
                ref = self.reference(model, sequences, attention, length)
            kl = k3_kl(logp, ref)
            per_token = per_token + s.beta * kl
        maskf = mask.to(per_token.dtype)
        tokens = maskf.sum(dim=1).clamp(min=1)
        per_completion = (per_token * maskf).sum(dim=1) / tokens
        per_prompt = per_completion.view(-1, s.generations).mean(dim=1)
        self._record(scores.total, scores.by_name, kl, binds, maskf)
        return per_prompt.sum() / weight

    # -- the step's extras

    def _record(
        self,
        total: list[float],
        by_name: dict[str, list[float]],
        kl: torch.Tensor,
        binds: torch.Tensor,
        mask: torch.Tensor,
    ) -> None:
        sums = self._sums
        sums.completions += len(total)
        sums.reward += sum(total)
        sums.reward_sq += sum(r * r for r in total)
        sums.kl += float((kl.detach() * mask).sum())
        sums.tokens += int(mask.sum())
        sums.clipped += int((binds & mask.bool()).sum())
        for name, values in by_name.items():
            sums.by_name[name] = sums.by_name.get(name, 0.0) + sum(values)

    def step_metrics(self) -> dict[str, float]:
        """The step's means over its completions (the loop calls it once per step; it
        resets): reward, rewardStd, kl (per token), completionLength (tokens),
        clipFraction (share of tokens where the clip binds) and each reward by name."""
        sums, self._sums = self._sums, _Sums()
        n = sums.completions
        if n == 0:
            return {}
        mean = sums.reward / n
        variance = max(0.0, sums.reward_sq / n - mean * mean)
        tokens = max(1, sums.tokens)
        return {
            "reward": mean,
            "rewardStd": variance**0.5,
            "kl": sums.kl / tokens,
            "completionLength": sums.tokens / n,
            "clipFraction": sums.clipped / tokens,
            **{name: value / n for name, value in sums.by_name.items()},
        }


# --------------------------------------------------------------------------- reference


def token_reference(reference: Reference) -> ReferenceLogps:
    """The reference policy's token log-probabilities (no gradient, eval mode): the
    policy itself with its adapter switched off (no second copy of the weights), or the
    frozen copy of the base a full or freeze run keeps."""

    def logps(
        model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, length: int
    ) -> torch.Tensor:
        if isinstance(reference, FrozenCopy):
            with evaluating(reference.model):
                return token_logps(reference.model, ids, mask, length)
        inner = unwrapped(model)
        disable = getattr(inner, "disable_adapter", None)
        if disable is None:
            raise ModelError(
                "the reinforcement reference is the adapter switched off, but the model has "
                "no adapter; full and freeze runs keep a frozen copy of the base"
            )
        with evaluating(inner), disable():
            return token_logps(inner, ids, mask, length)

    return logps


# --------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class MeanRewards:
    """Mean rewards of greedy completions of held-out prompts (the Scores a run of task
    reinforcement reports; there is no loss to evaluate, so ``evalLoss`` stays unset)."""

    generations: ClassVar[bool] = False
    mean_reward: float
    by_name: dict[str, float]
    prompts: int

    @property
    def loss(self) -> float:
        return math.nan

    def as_metrics(self) -> dict[str, float]:
        return {"meanReward": self.mean_reward}


@dataclass(frozen=True)
class RewardEvaluation:
    """Task reinforcement's evaluation: each held-out prompt answered greedily (one
    completion, ``reinforcement.maxNewTokens`` at most, as in training) and scored by the
    run's rewards; ``meanReward`` is the mean combined reward, before and after."""

    rewards: Rewards
    max_new_tokens: int

    def scores(
        self,
        model: torch.nn.Module,
        validation: Sequence[TokenizedExample],
        batch_size: int,
        tokenizer: PreTrainedTokenizerBase,
    ) -> tuple[MeanRewards, list[Prediction]]:
        prompts = [e for e in validation if isinstance(e, PromptExample)]
        inner = unwrapped(model)
        device = next(inner.parameters()).device
        totals: list[float] = []
        by_name: dict[str, float] = {}
        predictions: list[Prediction] = []
        with evaluating(inner):
            for start in range(0, len(prompts), batch_size):
                chunk = prompts[start : start + batch_size]
                batch = collate_prompts(chunk, tokenizer.pad_token_id)
                ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                output = _greedy(inner, ids, mask, self.max_new_tokens, tokenizer)
                completion = output[:, ids.size(1) :]
                keep = completion_mask(completion, tokenizer.eos_token_id)
                done = _completions(tokenizer, ids, mask, completion, keep, chunk)
                scored = self.rewards.score(done)
                totals.extend(scored.total)
                for name, values in scored.by_name.items():
                    by_name[name] = by_name.get(name, 0.0) + sum(values)
                predictions.extend(Prediction(c.reference or "", c.text) for c in done)
        n = max(1, len(totals))
        mean = sum(totals) / n if totals else math.nan
        return MeanRewards(mean, {k: v / n for k, v in by_name.items()}, len(totals)), predictions

    def evaluate(
        self,
        model: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        validation: Sequence[TokenizedExample],
        samples: Sequence[Any],
        *,
        batch_size: int,
        max_new_tokens: int,
    ) -> EvalResult:
        """The full evaluation (the recipe's before and after); the predictions are the
        greedy completions beside each prompt's reference answer."""
        scores, predictions = self.scores(model, validation, batch_size, tokenizer)
        return EvalResult(scores, predictions=predictions)


def _greedy(
    model: Any, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, tokenizer: Any
) -> torch.Tensor:
    output: torch.Tensor = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return output


def _completions(
    tokenizer: Any,
    prompts: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion: torch.Tensor,
    mask: torch.Tensor,
    examples: Sequence[PromptExample],
) -> list[Completion]:
    """One completion per prompt (greedy), with each example's reference answer."""
    out = []
    for i, example in enumerate(examples):
        ids = completion[i][mask[i].bool()].tolist()
        out.append(
            Completion(
                prompt=_decode(tokenizer, prompts[i][prompt_mask[i].bool()].tolist()),
                text=_decode(tokenizer, ids, skip_special=True),
                raw=_decode(tokenizer, ids, skip_special=True) + turn_end(tokenizer),
                tokens=len(ids),
                reference=example.reference,
            )
        )
    return out


def _decode(tokenizer: Any, ids: list[int], *, skip_special: bool = False) -> str:
    """One sequence's text (``decode`` of one sequence is one string)."""
    return str(tokenizer.decode(ids, skip_special_tokens=skip_special))


def turn_end(tokenizer: Any) -> str:
    """What the chat template writes after an assistant answer (``<|im_end|>\n`` for
    ChatML): the text a reward model trained on rendered conversations saw last, where a
    decoder classifier reads its score. Derived by rendering a one-turn conversation; a
    tokenizer without a chat template ends an answer with its EOS token."""
    user = [{"role": "user", "content": "q"}]
    marker = "\x00answer\x00"
    try:
        opened = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        whole = tokenizer.apply_chat_template(
            [*user, {"role": "assistant", "content": marker}], tokenize=False
        )
    except (ValueError, TypeError, AttributeError):  # no template, or one that refuses
        return str(tokenizer.eos_token or "")
    if not (isinstance(opened, str) and isinstance(whole, str)) or marker not in whole:
        return str(tokenizer.eos_token or "")
    return whole.split(marker, 1)[1]
