"""Rewards for reinforcement tuning: what a sampled completion is worth.

Each ``reinforcement.rewards[i]`` becomes one :class:`NamedReward`: a function from a
batch of completions to one number each, with its weight. The verifiable ones
(``exactMatch``, ``regex``, ``json``, ``jsonSchema``, ``length``) are 0 or 1, so a
combination reads as "how many of the wanted properties hold"; ``model`` is a reward
model's scalar score (the output of a ``reward-model`` job, or any sequence
classifier with one output). The run maximises ``sum_i weight_i * reward_i``
(:meth:`Rewards.score`), and reports each reward by name as well, so a run whose total
rises because only the easy property improved is visible in the history.

Rewards see text, not token ids: the completion decoded without special tokens for the
verifiable checks, the prompt and completion as generated (chat markup kept) for a
reward model, which re-tokenizes it with its own tokenizer (it need not share the
policy's vocabulary).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from finetune_trainer.errors import ConfigError, ModelError

if TYPE_CHECKING:
    import torch

__all__ = [
    "Completion",
    "NamedReward",
    "RewardOptions",
    "RewardScores",
    "Rewards",
    "build_rewards",
    "exact_match",
    "json_schema_reward",
    "length_reward",
    "regex_reward",
    "valid_json",
]


@dataclass(frozen=True)
class Completion:
    """One sampled completion, as the rewards read it."""

    prompt: str
    """The prompt as the policy saw it (chat template and generation prompt applied)."""
    text: str
    """The completion decoded without special tokens (what the verifiable checks read)."""
    raw: str
    """The answer turn as the chat template closes it (the completion's text followed by
    the template's end of turn, e.g. ``<|im_end|>\n``): a reward model scores ``prompt +
    raw``, the very text of the conversations it was trained on."""
    tokens: int
    """The completion's length in tokens, its end-of-sequence token included."""
    reference: str | None = None
    """The prompt's reference answer (the dataset's ``answer`` column), if any."""


RewardFn = Callable[[Sequence[Completion]], list[float]]
"""Scores a batch of completions, one number each."""


class RewardOptions(Protocol):
    """What a reward is built from: the contract's ``RewardSpec`` has these fields."""

    @property
    def type(self) -> str: ...
    @property
    def weight(self) -> float: ...
    @property
    def pattern(self) -> str | None: ...
    @property
    def json_schema(self) -> dict[str, Any] | None: ...
    @property
    def min_length(self) -> int | None: ...
    @property
    def max_length(self) -> int | None: ...
    @property
    def uri(self) -> Any: ...
    @property
    def revision(self) -> str | None: ...


# --------------------------------------------------------------------------- verifiable


def exact_match(completion: Completion) -> float:
    """1 when the completion is the reference answer, surrounding whitespace aside; 0
    otherwise, and for a prompt without a reference."""
    if completion.reference is None:
        return 0.0
    return float(completion.text.strip() == completion.reference.strip())


def regex_reward(pattern: str) -> Callable[[Completion], float]:
    """1 when ``pattern`` is found in the completion (``re.search``), else 0."""
    compiled = re.compile(pattern)
    return lambda completion: float(compiled.search(completion.text) is not None)


def _parsed_json(text: str) -> tuple[bool, Any]:
    """(True, value) when ``text`` (whitespace aside) is one JSON document."""
    try:
        return True, json.loads(text.strip())
    except ValueError:  # JSONDecodeError, and RecursionError's kin are not ValueErrors
        return False, None
    except RecursionError:
        return False, None


def valid_json(completion: Completion) -> float:
    """1 when the whole completion parses as JSON, else 0."""
    return float(_parsed_json(completion.text)[0])


def json_schema_reward(schema: dict[str, Any]) -> Callable[[Completion], float]:
    """1 when the completion parses as JSON and the value is valid under ``schema``.

    The schema itself is checked here, once, so a malformed one fails the run at setup
    naming the field, not every completion silently scoring 0."""
    try:
        import jsonschema  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the trainer extra installs it
        raise ConfigError(
            "reinforcement.rewards: type jsonSchema needs the jsonschema package; install "
            "the trainer extra (pip install 'finetune-operator[trainer]') or use type json"
        ) from exc
    validator_class = jsonschema.validators.validator_for(schema)
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(
            f"reinforcement.rewards: jsonSchema is not a valid JSON Schema: {exc.message}"
        ) from None
    validator = validator_class(schema)

    def score(completion: Completion) -> float:
        ok, value = _parsed_json(completion.text)
        return float(ok and validator.is_valid(value))

    return score


def length_reward(min_length: int | None, max_length: int | None) -> Callable[[Completion], float]:
    """1 when the completion's token count is within [min_length, max_length] (a missing
    bound is open), else 0."""
    low = 0 if min_length is None else min_length
    high = max_length

    def score(completion: Completion) -> float:
        inside = completion.tokens >= low and (high is None or completion.tokens <= high)
        return float(inside)

    return score


def _each(score: Callable[[Completion], float]) -> RewardFn:
    return lambda completions: [score(c) for c in completions]


# --------------------------------------------------------------------------- reward model


class RewardModel:
    """A reward model's score of ``prompt + completion``: a sequence classifier with one
    output (a published ``reward-model`` set, base and adapter with its score head, or
    a model directory saved with ``save_pretrained``)."""

    def __init__(self, model: Any, tokenizer: Any, device: torch.device, batch_size: int = 8):
        outputs = int(getattr(model.config, "num_labels", 0))
        if outputs != 1:
            raise ModelError(
                f"reinforcement.rewards: a reward model has one output (num_labels 1); this "
                f"model has {outputs}: train it with task reward-model"
            )
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.device = device
        self.batch_size = batch_size

    def __call__(self, completions: Sequence[Completion]) -> list[float]:
        import torch

        scores: list[float] = []
        # Right padding: a decoder classifier reads each row's last real token.
        self.tokenizer.padding_side = "right"
        for start in range(0, len(completions), self.batch_size):
            chunk = completions[start : start + self.batch_size]
            texts = [c.prompt + c.raw for c in chunk]
            inputs = self.tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.device)
            with torch.no_grad():
                logits = self.model(**inputs).logits
            scores.extend(float(v) for v in logits[:, 0].float().cpu())
        return scores


# --------------------------------------------------------------------------- combined


@dataclass(frozen=True)
class NamedReward:
    """One configured reward: its report name, its weight, its function."""

    name: str
    kind: str
    """The reward's ``type``."""
    weight: float
    score: RewardFn


@dataclass(frozen=True)
class RewardScores:
    """A batch's rewards: the weighted total per completion and each reward's values."""

    total: list[float]
    by_name: dict[str, list[float]]


@dataclass(frozen=True)
class Rewards:
    """The run's rewards, combined as ``sum_i weight_i * reward_i``."""

    rewards: tuple[NamedReward, ...]

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rewards]

    @property
    def needs_reference(self) -> bool:
        return any(r.kind == "exactMatch" for r in self.rewards)

    def score(self, completions: Sequence[Completion]) -> RewardScores:
        by_name = {r.name: r.score(completions) for r in self.rewards}
        total = [
            sum(r.weight * by_name[r.name][i] for r in self.rewards)
            for i in range(len(completions))
        ]
        return RewardScores(total, by_name)


def _function(
    options: RewardOptions, where: str, load_model: Callable[[str, str | None], RewardModel]
) -> RewardFn:
    """The reward function ``options`` describe (the contract checked the fields each
    type needs; the messages here guard a config that bypassed it)."""
    kind = options.type
    if kind == "exactMatch":
        return _each(exact_match)
    if kind == "json":
        return _each(valid_json)
    if kind == "regex":
        if options.pattern is None:
            raise ConfigError(f"{where}.pattern: type regex needs pattern")
        return _each(regex_reward(options.pattern))
    if kind == "jsonSchema":
        if options.json_schema is None:
            raise ConfigError(f"{where}.jsonSchema: type jsonSchema needs jsonSchema")
        return _each(json_schema_reward(options.json_schema))
    if kind == "length":
        return _each(length_reward(options.min_length, options.max_length))
    if kind == "model":
        if options.uri is None:
            raise ConfigError(f"{where}.uri: type model needs uri (a reward-model output)")
        return load_model(str(options.uri), options.revision)
    raise ConfigError(f"{where}.type: unknown reward type {kind!r}")


def build_rewards(
    specs: Sequence[RewardOptions],
    names: Sequence[str],
    load_model: Callable[[str, str | None], RewardModel],
) -> Rewards:
    """The configured rewards under their report names (``ReinforcementSpec.reward_names``,
    which the contract keeps apart from the step's own metrics),
    each built once (patterns compiled, schemas checked, reward models loaded by
    ``load_model(uri, revision)``: the recipe's, which reads published sets) before the
    first step."""
    built = [
        NamedReward(
            name, spec.type, spec.weight, _function(spec, f"reinforcement.rewards[{i}]", load_model)
        )
        for i, (name, spec) in enumerate(zip(names, specs, strict=True))
    ]
    return Rewards(tuple(built))
