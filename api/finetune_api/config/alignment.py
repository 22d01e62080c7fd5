"""The ``preference`` and ``reinforcement`` sections: how task preference (the DPO
family) and task reinforcement (GRPO with rewards) train.

Each section belongs to its task (``finetune_api.rules`` refuses it on another); the
checks here are the section's own (an option of one loss set with another, a reward
missing what its type reads), each with its CEL twin so the API server refuses the
same object at ``kubectl apply``.
"""

from __future__ import annotations

import re
from typing import Final, Literal, Self

from pydantic import ConfigDict, Field, JsonValue, field_validator, model_validator

from finetune_api.config.base import CamelModel, ModelUri
from finetune_api.config.patterns import MAX_PATTERN_LENGTH, UnsafePattern, check_module_pattern
from finetune_api.tasks import STEP_METRICS

# --------------------------------------------------------------------------- preference

PreferenceLoss = Literal["dpo", "ipo", "simpo", "orpo"]

DEFAULT_GAMMA: Final = 0.5
"""SimPO's target reward margin when preference.gamma is left unset."""
_REFERENCE_LOSSES: Final = ("dpo", "ipo")
"""The losses that compare the policy with a reference policy (the others are
reference-free): only they have reference log-probs to precompute."""

_LOSS = "(has(self.loss) ? self.loss : 'dpo')"


class PreferenceSpec(CamelModel):
    """How task preference turns preference pairs into a loss."""

    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.labelSmoothing) || self.labelSmoothing == 0.0 || "
                    f"{_LOSS} == 'dpo'",
                    "message": "labelSmoothing is for loss dpo (conservative DPO)",
                },
                {
                    "rule": "!has(self.precomputeReference) || !self.precomputeReference || "
                    f"{_LOSS} in ['dpo', 'ipo']",
                    "message": "precomputeReference is for loss dpo or ipo: simpo and orpo "
                    "have no reference model",
                },
                {
                    "rule": f"!has(self.gamma) || self.gamma == {DEFAULT_GAMMA} || "
                    f"{_LOSS} == 'simpo'",
                    "message": "gamma is the target margin of loss simpo",
                },
            ]
        }
    )

    loss: PreferenceLoss = Field(
        default="dpo",
        description="dpo: the sigmoid loss of Direct Preference Optimization against the "
        "reference policy (the base model: the adapter switched off, or a frozen copy for "
        "full and freeze). ipo: its squared form (Identity Preference Optimization), which "
        "does not push the margin to infinity on separable pairs. simpo: reference-free, "
        "the length-normalised log-probabilities with a target margin (gamma). orpo: "
        "reference-free, the chosen answer's cross-entropy plus beta x the odds-ratio "
        "term.",
    )
    beta: float = Field(
        default=0.1,
        gt=0,
        le=1000,
        description="The loss's strength: for dpo and simpo the scale of the implicit "
        "reward (higher keeps the policy closer to the reference for dpo); for ipo the "
        "regularisation (the margin targeted is 1 / (2 beta)); for orpo the weight lambda "
        "of the odds-ratio term.",
    )
    label_smoothing: float = Field(
        default=0.0,
        ge=0,
        lt=0.5,
        description="Loss dpo only: the assumed share of pairs whose preference is flipped "
        "(conservative DPO); 0 trusts every pair.",
    )
    gamma: float = Field(
        default=DEFAULT_GAMMA,
        ge=0,
        le=1000,
        description="Loss simpo only: the target margin between the chosen and rejected "
        "answers' rewards (beta x mean token log-probability), in reward units; the loss is "
        "-log sigmoid(reward(chosen) - reward(rejected) - gamma).",
    )
    precompute_reference: bool = Field(
        default=False,
        description="Loss dpo or ipo only: compute the reference log-probabilities of the "
        "training pairs once, before training, so no step runs a reference forward pass "
        "(faster steps; the pass over the data is paid up front and again on resume).",
    )

    @model_validator(mode="after")
    def _options_fit_the_loss(self) -> Self:
        if self.label_smoothing != 0 and self.loss != "dpo":
            raise ValueError(
                f"labelSmoothing is for loss dpo (conservative DPO), not {self.loss}; remove "
                "labelSmoothing or set loss: dpo"
            )
        if self.precompute_reference and self.loss not in _REFERENCE_LOSSES:
            raise ValueError(
                f"precomputeReference is for loss dpo or ipo: {self.loss} has no reference "
                "model; remove precomputeReference"
            )
        if self.gamma != DEFAULT_GAMMA and self.loss != "simpo":
            raise ValueError(
                f"gamma is the target margin of loss simpo, not of {self.loss}; remove gamma "
                "or set loss: simpo"
            )
        return self

    @property
    def uses_reference(self) -> bool:
        """Whether the loss reads a reference policy's log-probabilities."""
        return self.loss in _REFERENCE_LOSSES


# --------------------------------------------------------------------------- rewards

RewardType = Literal["exactMatch", "regex", "json", "jsonSchema", "length", "model"]

MAX_REWARDS: Final = 16
_NAME = re.compile(r"^[a-z][a-zA-Z0-9]*$")
RESERVED_REWARD_NAMES: Final = frozenset(STEP_METRICS) | {"step", "epoch", "loss", "learningRate"}
"""What a reward may not be named: its series would overwrite one of the step's own in
the history and the progress line."""

_NEEDS: Final[dict[str, tuple[str, ...]]] = {
    "exactMatch": (),
    "regex": ("pattern",),
    "json": (),
    "jsonSchema": ("jsonSchema",),
    "length": (),
    "model": ("uri",),
}
"""The fields each reward type reads and must have (length needs one of its bounds)."""
_OWN: Final[dict[str, str]] = {
    "pattern": "regex",
    "jsonSchema": "jsonSchema",
    "minLength": "length",
    "maxLength": "length",
    "uri": "model",
    "revision": "model",
}
"""Each type-specific field and the one type that reads it."""


def _reward_cel() -> list[JsonValue]:
    """The CEL twins of :meth:`RewardSpec._fields_fit_the_type`."""
    entries: list[JsonValue] = []
    for reward_type, needed in _NEEDS.items():
        for field in needed:
            entries.append(
                {
                    "rule": f"self.type != '{reward_type}' || has(self.{field})",
                    "message": f"type {reward_type} needs {field}",
                }
            )
    entries.append(
        {
            "rule": "self.type != 'length' || has(self.minLength) || has(self.maxLength)",
            "message": "type length needs minLength, maxLength or both",
        }
    )
    for field, owner in _OWN.items():
        entries.append(
            {
                "rule": f"!has(self.{field}) || self.type == '{owner}'",
                "message": f"{field} is read by type {owner} only",
            }
        )
    reserved = ", ".join(f"'{n}'" for n in sorted(RESERVED_REWARD_NAMES))
    entries.append(
        {
            "rule": f"!has(self.name) || !(self.name in [{reserved}])",
            "message": "name is taken by a per-step metric ("
            + ", ".join(sorted(RESERVED_REWARD_NAMES))
            + ")",
        }
    )
    entries.append(
        {
            "rule": "!has(self.minLength) || !has(self.maxLength) || "
            "self.minLength <= self.maxLength",
            "message": "minLength must not exceed maxLength",
        }
    )
    return entries


class RewardSpec(CamelModel):
    """One reward of task reinforcement: a score of each sampled completion."""

    model_config = CamelModel.model_config | ConfigDict(
        json_schema_extra={"x-kubernetes-validations": _reward_cel()}
    )

    type: RewardType = Field(
        description="exactMatch: 1 when the completion equals the row's reference answer "
        "(dataset.columns.answer; surrounding whitespace stripped), else 0. regex: 1 when "
        "pattern matches somewhere in the completion (re.search). json: 1 when the "
        "completion parses as JSON. jsonSchema: 1 when it parses as JSON and validates "
        "against jsonSchema. length: 1 when the completion's token count is within "
        "minLength..maxLength, else 0. model: the score of a reward model (uri) on the "
        "prompt and completion."
    )
    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=_NAME.pattern,
        description="The name this reward is reported under in the per-step metrics "
        "(camelCase; not one of the step's own: reward, rewardStd, kl, completionLength, "
        "clipFraction, loss, learningRate, step, epoch). Default: its type, followed by its "
        "position when two rewards share a type (regex1, regex2).",
    )
    weight: float = Field(
        default=1.0,
        ge=-1000,
        le=1000,
        description="Its weight in the combined reward, sum(weight x reward); a negative "
        "weight makes it a penalty.",
    )
    pattern: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_PATTERN_LENGTH,
        description="Type regex: a Python regular expression the completion must contain "
        "(re.search). Refused when it could backtrack without bound (nested repetition, "
        "ambiguous alternation, lookarounds, backreferences).",
    )
    json_schema: dict[str, JsonValue] | None = Field(
        default=None,
        description="Type jsonSchema: the JSON Schema (draft 2020-12) the completion's JSON "
        "must satisfy, written inline as a mapping.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True, "type": "object"},
    )
    min_length: int | None = Field(
        default=None,
        ge=0,
        le=1_000_000,
        description="Type length: the fewest completion tokens that earn the reward.",
    )
    max_length: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="Type length: the most completion tokens that earn the reward.",
    )
    uri: ModelUri | None = Field(
        default=None,
        description="Type model: the reward model, the output of a task reward-model job "
        "(its published artifact set: hf://, s3://, pvc:// or file://) or a model directory "
        "whose AutoModelForSequenceClassification has one output.",
    )
    revision: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="Type model: branch, tag or commit of an hf:// reward model.",
    )

    @field_validator("pattern")
    @classmethod
    def _bounded_pattern(cls, pattern: str | None) -> str | None:
        if pattern is None:
            return None
        try:
            check_module_pattern(pattern)
        except UnsafePattern as exc:
            # The check's advice names module paths; a completion pattern gets its own.
            reason = str(exc).split(";")[0]
            raise ValueError(
                f"{reason}; write a pattern that matches in bounded time, e.g. "
                r"'^\d+$' or 'answer: (yes|no)'"
            ) from None
        return pattern

    @field_validator("name")
    @classmethod
    def _not_a_step_metric(cls, name: str | None) -> str | None:
        if name in RESERVED_REWARD_NAMES:
            raise ValueError(
                f"{name} is one of the per-step metrics ("
                f"{', '.join(sorted(RESERVED_REWARD_NAMES))}); give the reward another name"
            )
        return name

    @model_validator(mode="after")
    def _fields_fit_the_type(self) -> Self:
        given = {alias for alias in _OWN if getattr(self, _snake(alias)) is not None}
        for field in _NEEDS[self.type]:
            if field not in given:
                raise ValueError(f"type {self.type} needs {field}; set {field}")
        if self.type == "length" and not given & {"minLength", "maxLength"}:
            raise ValueError("type length needs minLength, maxLength or both")
        for field in sorted(given):
            if _OWN[field] != self.type:
                raise ValueError(
                    f"{field} is read by type {_OWN[field]}, not {self.type}; remove {field}"
                )
        if (
            self.min_length is not None
            and self.max_length is not None
            and self.min_length > self.max_length
        ):
            raise ValueError(
                f"minLength ({self.min_length}) exceeds maxLength ({self.max_length}): no "
                "completion could earn the reward"
            )
        return self


def _snake(alias: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), alias)


# --------------------------------------------------------------------------- reinforcement


class ReinforcementSpec(CamelModel):
    """How task reinforcement samples, scores and learns (GRPO)."""

    generations: int = Field(
        default=8,
        ge=2,
        le=64,
        description="Completions sampled for each prompt (the group G); advantages are "
        "each completion's reward against its group's mean and standard deviation, so at "
        "least 2.",
    )
    max_new_tokens: int = Field(
        default=64,
        ge=1,
        le=8192,
        description="The longest completion sampled, in tokens.",
    )
    temperature: float = Field(
        default=1.0,
        gt=0,
        le=10,
        description="Sampling temperature of the completions (higher: more varied groups).",
    )
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="Nucleus sampling: sample from the smallest set of tokens whose "
        "probability reaches topP (1: every token).",
    )
    beta: float = Field(
        default=0.04,
        ge=0,
        le=1000,
        description="Weight of the KL penalty to the reference policy (the base model); 0 "
        "turns it off and with it the reference forward pass.",
    )
    epsilon: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Clip range of the policy ratio (the clipped surrogate objective, as "
        "in PPO): ratios outside 1 +- epsilon earn no further gradient.",
    )
    rewards: list[RewardSpec] = Field(
        min_length=1,
        max_length=MAX_REWARDS,
        description="The rewards of each completion, combined as sum(weight x reward) "
        "(each also reported by name).",
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> Self:
        names = self.reward_names
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"two rewards are named {repeated[0]}; give each a name of its own")
        return self

    @property
    def reward_names(self) -> list[str]:
        """Each reward's name in the per-step metrics, in order (``RewardSpec.name``)."""
        types = [r.type for r in self.rewards]
        names = []
        for i, reward in enumerate(self.rewards):
            if reward.name is not None:
                names.append(reward.name)
            elif types.count(reward.type) > 1:
                names.append(f"{reward.type}{types[: i + 1].count(reward.type)}")
            else:
                names.append(reward.type)
        return names
