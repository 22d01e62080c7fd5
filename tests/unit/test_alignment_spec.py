"""The contract of issue 14's tasks: the task table's one source, the preference and
reinforcement sections, their own rules and the CEL twins the API server runs."""

from __future__ import annotations

import typing
from typing import Any

import celpy
import pytest
from pydantic import BaseModel, ValidationError

from finetune_api.config import TrainerConfig
from finetune_api.config.alignment import PreferenceSpec, ReinforcementSpec, RewardSpec
from finetune_api.config.data import ColumnMapping, DatasetFormat
from finetune_api.config.methods import METHODS
from finetune_api.rules import _FORMAT_COLUMNS
from finetune_api.tasks import METRICS, TASKS, EvalMetric, TaskName

ALIGNMENT_TASKS = ("reward-model", "preference", "reinforcement")


# --------------------------------------------------------------------------- the task table


def test_every_task_reads_known_formats_and_every_format_has_a_reader() -> None:
    formats = set(typing.get_args(DatasetFormat))
    assert set(_FORMAT_COLUMNS) == formats
    read = {f for info in TASKS.values() for f in info.formats}
    assert read == formats
    assert TASKS["reward-model"].formats == TASKS["preference"].formats == ("preference",)
    assert TASKS["reinforcement"].formats == ("prompts",)


def test_the_new_tasks_train_with_weight_methods_only() -> None:
    for name in ALIGNMENT_TASKS:
        allowed = TASKS[name].methods
        assert allowed is not None and allowed <= set(METHODS)
        assert {"lora", "qlora", "full", "freeze"} <= allowed
        assert not allowed & {"prefix", "prompt", "p-tuning"}
    assert TASKS["causal-lm"].methods is None


def test_the_new_tasks_report_their_metrics_from_the_one_table() -> None:
    periodic = set(typing.get_args(EvalMetric))
    for name in ALIGNMENT_TASKS:
        info = TASKS[name]
        assert info.loss_over == "examples" and not info.packs and not info.distillation
        assert set(info.metrics) <= periodic
        for metric in info.metrics:
            assert name in METRICS[metric].tasks
    assert TASKS["reward-model"].auto_class == "AutoModelForSequenceClassification"
    assert TASKS["preference"].auto_class == "AutoModelForCausalLM"
    assert METRICS["chosenLogps"].bounds == (-float("inf"), 0.0)
    # the implicit reward equals the policy's before training: no <name>Before
    assert not METRICS["rewardAccuracy"].before and not METRICS["rewardMargin"].before
    assert METRICS["preferenceAccuracy"].before


def test_the_task_description_lists_every_task() -> None:
    from finetune_api.config import JobSections

    description = JobSections.model_fields["task"].description or ""
    for name in typing.get_args(TaskName):
        assert f"{name}:" in description


def test_columns_of_the_new_formats_have_defaults() -> None:
    columns = ColumnMapping()
    assert (columns.prompt, columns.chosen, columns.rejected, columns.answer) == (
        "prompt",
        "chosen",
        "rejected",
        "answer",
    )


# --------------------------------------------------------------------------- the sections


def refusal(model: type[BaseModel], data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as info:
        model.model_validate(data)
    return str(info.value)


def test_preference_defaults_and_loss_options() -> None:
    spec = PreferenceSpec()
    assert (spec.loss, spec.beta, spec.label_smoothing, spec.gamma) == ("dpo", 0.1, 0.0, 0.5)
    assert spec.uses_reference and not PreferenceSpec(loss="orpo").uses_reference
    assert "labelSmoothing is for loss dpo" in refusal(
        PreferenceSpec, {"loss": "simpo", "labelSmoothing": 0.1}
    )
    assert "precomputeReference is for loss dpo or ipo" in refusal(
        PreferenceSpec, {"loss": "simpo", "precomputeReference": True}
    )
    assert "gamma is the target margin of loss simpo" in refusal(
        PreferenceSpec, {"loss": "dpo", "gamma": 1.0}
    )
    assert "labelSmoothing" in refusal(PreferenceSpec, {"labelSmoothing": 0.5})
    assert "beta" in refusal(PreferenceSpec, {"beta": 0})
    PreferenceSpec(loss="ipo", precompute_reference=True)
    PreferenceSpec(loss="simpo", gamma=2.0)


@pytest.mark.parametrize(
    ("reward", "said"),
    [
        ({"type": "regex"}, "type regex needs pattern"),
        ({"type": "jsonSchema"}, "type jsonSchema needs jsonSchema"),
        ({"type": "model"}, "type model needs uri"),
        ({"type": "length"}, "type length needs minLength, maxLength or both"),
        ({"type": "exactMatch", "uri": "hf://org/rm"}, "uri is read by type model"),
        ({"type": "length", "minLength": 5, "maxLength": 2}, "minLength (5) exceeds"),
        ({"type": "regex", "pattern": "(a|ab)*c"}, "matches in bounded time"),
        ({"type": "json", "name": "reward"}, "reward is one of the per-step metrics"),
    ],
)
def test_a_reward_missing_or_misusing_a_field_is_refused(reward: dict[str, Any], said: str) -> None:
    assert said in refusal(RewardSpec, reward)


def test_reward_names_default_to_the_type_and_must_be_unique() -> None:
    spec = ReinforcementSpec.model_validate(
        {
            "rewards": [
                {"type": "regex", "pattern": "a"},
                {"type": "exactMatch"},
                {"type": "regex", "pattern": "b"},
                {"type": "length", "maxLength": 8, "name": "short"},
            ]
        }
    )
    assert spec.reward_names == ["regex1", "exactMatch", "regex2", "short"]
    assert "two rewards are named json" in refusal(
        ReinforcementSpec, {"rewards": [{"type": "json"}, {"type": "exactMatch", "name": "json"}]}
    )
    assert "rewards" in refusal(ReinforcementSpec, {"rewards": []})
    assert "generations" in refusal(
        ReinforcementSpec, {"generations": 1, "rewards": [{"type": "json"}]}
    )


def test_a_rendered_trainer_config_keeps_the_sections() -> None:
    """The operator dumps every default (gamma 0.5, labelSmoothing 0) into the
    TrainerConfig; the trainer must accept what it is given, for every loss."""
    from finetune_api.render import render_trainer_config
    from finetune_api.resource import FineTuneJob

    for loss in ("dpo", "ipo", "simpo", "orpo"):
        job = FineTuneJob.model_validate(
            {
                "apiVersion": "finetune-operator.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "p"},
                "spec": {
                    "task": "preference",
                    "model": {"uri": "hf://org/m"},
                    "dataset": {"train": "s3://data-bucket/pairs.jsonl", "format": "preference"},
                    "preference": {"loss": loss},
                },
            }
        )
        config = render_trainer_config(job, "s3://out-bucket/out")
        assert config.preference_options.loss == loss
        assert TrainerConfig.from_json(config.to_json()) == config
    assert job.spec.reinforcement is None


# --------------------------------------------------------------------------- CEL twins

_CEL = celpy.Environment()


def cel_accepts(model: type[BaseModel], data: dict[str, Any]) -> bool:
    from finetune_api.crd import openapi_schema

    rules = openapi_schema(model).get("x-kubernetes-validations", [])
    target = celpy.json_to_cel(data)
    return all(
        bool(_CEL.program(_CEL.compile(rule["rule"])).evaluate({"self": target})) for rule in rules
    )


def pydantic_accepts(model: type[BaseModel], data: dict[str, Any]) -> bool:
    try:
        model.model_validate(data)
    except ValidationError:
        return False
    return True


SECTION_CASES: list[tuple[type[BaseModel], dict[str, Any]]] = [
    (PreferenceSpec, {}),
    (PreferenceSpec, {"loss": "dpo", "labelSmoothing": 0.2}),
    (PreferenceSpec, {"loss": "ipo", "labelSmoothing": 0.2}),
    (PreferenceSpec, {"loss": "ipo", "labelSmoothing": 0.0}),
    (PreferenceSpec, {"labelSmoothing": 0.1}),
    (PreferenceSpec, {"loss": "ipo", "precomputeReference": True}),
    (PreferenceSpec, {"loss": "orpo", "precomputeReference": True}),
    (PreferenceSpec, {"loss": "orpo", "precomputeReference": False}),
    (PreferenceSpec, {"loss": "simpo", "gamma": 2.0}),
    (PreferenceSpec, {"gamma": 2.0}),
    (PreferenceSpec, {"gamma": 0.5}),
    (RewardSpec, {"type": "exactMatch"}),
    (RewardSpec, {"type": "regex"}),
    (RewardSpec, {"type": "regex", "pattern": "x"}),
    (RewardSpec, {"type": "json", "pattern": "x"}),
    (RewardSpec, {"type": "jsonSchema"}),
    (RewardSpec, {"type": "jsonSchema", "jsonSchema": {"type": "object"}}),
    (RewardSpec, {"type": "length"}),
    (RewardSpec, {"type": "length", "minLength": 3}),
    (RewardSpec, {"type": "length", "minLength": 3, "maxLength": 2}),
    (RewardSpec, {"type": "length", "maxLength": 2, "uri": "hf://org/rm"}),
    (RewardSpec, {"type": "model"}),
    (RewardSpec, {"type": "model", "uri": "hf://org/rm", "revision": "main"}),
    (RewardSpec, {"type": "exactMatch", "revision": "main"}),
    (RewardSpec, {"type": "exactMatch", "name": "kl"}),
    (RewardSpec, {"type": "exactMatch", "name": "correct"}),
]


@pytest.mark.parametrize(("model", "data"), SECTION_CASES)
def test_the_cel_twins_agree_with_the_sections(
    model: type[BaseModel], data: dict[str, Any]
) -> None:
    assert cel_accepts(model, data) == pydantic_accepts(model, data)


def test_the_section_twins_are_in_the_crd() -> None:
    from finetune_api.crd import build_crd

    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = schema["properties"]["spec"]["properties"]
    assert spec["preference"]["x-kubernetes-validations"]
    reward = spec["reinforcement"]["properties"]["rewards"]["items"]
    assert reward["x-kubernetes-validations"]
    assert reward["properties"]["jsonSchema"]["x-kubernetes-preserve-unknown-fields"]
    assert spec["reinforcement"]["properties"]["rewards"]["maxItems"] == 16


def test_the_output_must_be_apart_from_a_reward_model() -> None:
    """A reward model is an input like the base model: publishing over it is refused."""
    from finetune_api.resource import FineTuneJob

    body = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "g"},
        "spec": {
            "task": "reinforcement",
            "model": {"uri": "hf://org/m"},
            "dataset": {"train": "s3://data-bucket/prompts.jsonl", "format": "prompts"},
            "reinforcement": {
                "rewards": [{"type": "json"}, {"type": "model", "uri": "s3://rm-bucket/rm"}]
            },
            "output": {"uri": "s3://rm-bucket/rm/grpo"},
        },
    }
    said = refusal(FineTuneJob, body)
    assert "is inside reinforcement.rewards[1].uri (s3://rm-bucket/rm)" in said
    body["spec"]["output"] = {"uri": "s3://rm-bucket/grpo"}  # type: ignore[index]
    FineTuneJob.model_validate(body)


def test_reinforcement_is_not_sharded_with_fsdp() -> None:
    """GRPO samples with model.generate, which an FSDP-sharded model does not run as one:
    the operator and `finetune validate` refuse it on resources.strategy (ddp is taken)."""
    from finetune_api.resource import FineTuneJob

    body: dict[str, Any] = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "g"},
        "spec": {
            "task": "reinforcement",
            "model": {"uri": "hf://org/m"},
            "dataset": {"train": "s3://data-bucket/prompts.jsonl", "format": "prompts"},
            "reinforcement": {"rewards": [{"type": "json"}]},
            "resources": {"gpus": 2, "strategy": "fsdp"},
            "output": {"uri": "s3://out-bucket/grpo"},
        },
    }
    said = refusal(FineTuneJob, body)
    assert "strategy fsdp is not for task reinforcement" in said
    assert "use strategy ddp" in said
    body["spec"]["resources"]["strategy"] = "ddp"
    FineTuneJob.model_validate(body)
