"""Task reinforcement's rewards: each verifiable one, their weighted combination with
each reported by name, and a reward model (a tiny sequence classifier, one output)
loaded from a model directory and from a published set."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_api.config.alignment import ReinforcementSpec
from finetune_trainer.alignment.rewards import (
    Completion,
    RewardModel,
    build_rewards,
    exact_match,
    json_schema_reward,
    length_reward,
    regex_reward,
    valid_json,
)
from finetune_trainer.errors import ConfigError, ModelError
from finetune_trainer.recipe.setup import load_reward_model


def no_model(uri: str, revision: str | None) -> RewardModel:
    raise AssertionError("no model reward here")


def done(text: str, reference: str | None = None, tokens: int | None = None) -> Completion:
    return Completion("<prompt>", text, text, len(text) if tokens is None else tokens, reference)


def test_exact_match_strips_whitespace_and_needs_a_reference() -> None:
    assert exact_match(done(" Paris\n", "Paris")) == 1.0
    assert exact_match(done("paris", "Paris")) == 0.0
    assert exact_match(done("Paris", None)) == 0.0


def test_regex_searches_anywhere() -> None:
    score = regex_reward(r"\d{4}-\d{2}-\d{2}")
    assert score(done("It is 2021-03-05.")) == 1.0
    assert score(done("March 5")) == 0.0


def test_json_and_json_schema() -> None:
    assert valid_json(done(' {"a": 1} ')) == 1.0
    assert valid_json(done("{a: 1}")) == 0.0
    assert valid_json(done("[" * 100_000)) == 0.0  # deep nesting is no crash
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
    }
    score = json_schema_reward(schema)
    assert score(done('{"answer": 4}')) == 1.0
    assert score(done('{"answer": "4"}')) == 0.0
    assert score(done("not json")) == 0.0
    with pytest.raises(ConfigError, match="not a valid JSON Schema"):
        json_schema_reward({"type": 12})


def test_length_bounds_are_inclusive_and_open_when_missing() -> None:
    assert [length_reward(2, 3)(done("", tokens=n)) for n in (1, 2, 3, 4)] == [0, 1, 1, 0]
    assert length_reward(None, 2)(done("", tokens=0)) == 1.0
    assert length_reward(5, None)(done("", tokens=500)) == 1.0


def spec(*rewards: dict[str, Any]) -> ReinforcementSpec:
    return ReinforcementSpec.model_validate({"rewards": list(rewards)})


def test_combined_reward_is_the_weighted_sum_and_each_is_reported_by_name() -> None:
    config = spec(
        {"type": "exactMatch", "weight": 2.0},
        {"type": "regex", "pattern": "^P"},
        {"type": "regex", "pattern": "s$", "weight": -0.5},
        {"type": "length", "maxLength": 5, "name": "short"},
    )
    rewards = build_rewards(config.rewards, config.reward_names, no_model)
    assert rewards.names == ["exactMatch", "regex1", "regex2", "short"]
    scores = rewards.score([done("Paris", "Paris"), done("Pas", "Paris"), done("Lyons", "x")])
    assert scores.by_name == {
        "exactMatch": [1.0, 0.0, 0.0],
        "regex1": [1.0, 1.0, 0.0],
        "regex2": [1.0, 1.0, 1.0],
        "short": [1.0, 1.0, 1.0],
    }
    assert scores.total == [2 + 1 - 0.5 + 1, 0 + 1 - 0.5 + 1, 0 + 0 - 0.5 + 1]
    assert rewards.needs_reference


# --------------------------------------------------------------------------- reward model


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from conftest import build_tiny_model, build_tokenizer

    pad = build_tokenizer().eos_token_id
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny-rm"),
        "LlamaForSequenceClassification",
        num_labels=1,
        pad_token_id=pad,
    )


def test_reward_model_scores_prompt_and_completion(reward_model_dir: Path) -> None:
    """The score is the classifier's one output on prompt + raw completion, the same
    batched (right-padded) as one at a time."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = load_reward_model(f"file://{reward_model_dir}", None)
    completions = [done("red"), done("blue green yellow"), done("0123 March")]
    got = scorer(completions)
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    tok = AutoTokenizer.from_pretrained(reward_model_dir)
    for completion, score in zip(completions, got, strict=True):
        ids = tok(completion.prompt + completion.raw, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            expected = float(model(**ids).logits[0, 0])
        assert score == pytest.approx(expected, abs=1e-4)
    assert len(set(got)) == 3  # the scores depend on the text


def test_reward_model_from_a_spec_is_built_once(reward_model_dir: Path) -> None:
    config = spec({"type": "model", "uri": f"file://{reward_model_dir}", "weight": 0.5})
    rewards = build_rewards(config.rewards, config.reward_names, load_reward_model)
    (value,) = rewards.score([done("red")]).by_name["model"]
    assert rewards.score([done("red")]).total == [pytest.approx(0.5 * value)]


def test_a_classifier_with_several_outputs_is_no_reward_model(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    with pytest.raises(ModelError, match="num_labels 1"):
        RewardModel(model, tok, model.device)
