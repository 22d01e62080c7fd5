"""The `method` section: every type has its own options section, the wire names of the
sections, the forms targetModules takes, and each method's option checks, with
messages that name the field and the fix."""

from __future__ import annotations

import typing
from typing import Any

import pytest
import yaml

from finetune_api.config import (
    AdaLoraSpec,
    FreezeSpec,
    FullSpec,
    IA3Spec,
    LoraSpec,
    MethodSpec,
    MethodType,
    PrefixSpec,
    PromptSpec,
    PTuningSpec,
    QLoraSpec,
    TrainerConfig,
)
from finetune_api.config.methods.adapter import AdapterSpec
from finetune_api.config.methods.lora_fa import LoraFaSpec
from finetune_api.config.methods.progressive import ProgressiveSpec
from finetune_api.config.methods.vera import VeraSpec
from finetune_api.manifests import check_documents

SPEC_CLASSES = {
    "lora": LoraSpec,
    "qlora": QLoraSpec,
    "adalora": AdaLoraSpec,
    "ia3": IA3Spec,
    "full": FullSpec,
    "freeze": FreezeSpec,
    "prefix": PrefixSpec,
    "prompt": PromptSpec,
    "p-tuning": PTuningSpec,
    "vera": VeraSpec,
    "lora-fa": LoraFaSpec,
    "adapter": AdapterSpec,
    "progressive": ProgressiveSpec,
}


def problems(method: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) of each problem `finetune validate` reports for ``method``."""
    body = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "job"},
        "spec": {
            "model": {"uri": "hf://org/model"},
            "dataset": {"train": "file://train.jsonl"},
            "method": method,
        },
    }
    (doc,) = check_documents(yaml.safe_dump(body), "test.yaml")
    return [(p.path, p.message) for p in doc.problems]


def only_problem(method: dict[str, Any]) -> tuple[str, str]:
    found = problems(method)
    assert len(found) == 1, found
    return found[0]


# --------------------------------------------------------------------------- types and sections


def test_every_type_has_its_options_class_and_a_registered_method() -> None:
    from finetune_trainer.methods import REGISTRY, get_method

    types = list(typing.get_args(MethodType))
    assert types == list(SPEC_CLASSES)
    get_method("lora")  # imports every method module
    assert set(REGISTRY) == set(types)
    for method_type, spec_class in SPEC_CLASSES.items():
        options = MethodSpec(type=method_type).options()  # type: ignore[arg-type]
        assert type(options) is spec_class, method_type
        assert REGISTRY[method_type].name == method_type
    whole = ("full", "freeze", "progressive")
    assert {REGISTRY[t].artifact for t in whole} == {"model"}
    assert {REGISTRY[t].artifact for t in types if t not in whole} == {"adapter"}


def test_p_tuning_options_live_under_ptuning_on_the_wire() -> None:
    spec = MethodSpec.model_validate({"type": "p-tuning", "pTuning": {"encoder": "lstm"}})
    options = spec.options()
    assert isinstance(options, PTuningSpec)
    assert options.encoder == "lstm"
    assert spec.model_dump(exclude_none=True) == {
        "type": "p-tuning",
        "pTuning": {"numVirtualTokens": 20, "encoder": "lstm", "encoderDropout": 0.0},
    }


def test_p_tuning_survives_rendering_to_the_trainer_config() -> None:
    config = TrainerConfig.model_validate(
        {
            "jobName": "job",
            "model": {"uri": "hf://org/model"},
            "dataset": {"train": "file://train.jsonl"},
            "method": {"type": "p-tuning", "pTuning": {"numVirtualTokens": 7}},
            "output": {"uri": "file://out"},
        }
    )
    again = TrainerConfig.from_json(config.to_json())
    assert '"pTuning"' in config.to_json()
    assert again.method.options() == PTuningSpec(num_virtual_tokens=7)


@pytest.mark.parametrize(
    ("method", "path", "fragments"),
    [
        (
            {"type": "lora", "pTuning": {}},
            "spec.method",
            ["section 'pTuning' is set but type is 'lora'", "set type: p-tuning"],
        ),
        (
            {"type": "p-tuning", "prompt": {}},
            "spec.method",
            ["section 'prompt' is set but type is 'p-tuning'", "move the options under 'pTuning:'"],
        ),
        (
            {"adalora": {}},  # type defaults to lora
            "spec.method",
            ["section 'adalora' is set but type is 'lora'", "set type: adalora"],
        ),
    ],
)
def test_a_section_must_match_the_type(
    method: dict[str, Any], path: str, fragments: list[str]
) -> None:
    where, message = only_problem(method)
    assert where == path
    for fragment in fragments:
        assert fragment in message


def test_the_matching_section_of_each_type_is_accepted() -> None:
    from finetune_api.config.methods import METHODS

    for method_type in SPEC_CLASSES:
        wire = METHODS[method_type].section  # p-tuning: pTuning, lora-fa: loraFa
        assert problems({"type": method_type, wire: {}}) == [], method_type


# --------------------------------------------------------------------------- targetModules


@pytest.mark.parametrize(
    "value",
    [
        "all-linear",
        ["q_proj", "v_proj"],
        ["self_attn.q_proj"],
        r".*\.(q|v)_proj",
        "lm_head|.*o_proj",
    ],
)
def test_target_modules_forms(value: Any) -> None:
    assert LoraSpec.model_validate({"targetModules": value}).target_modules == value


@pytest.mark.parametrize(
    ("value", "fragments"),
    [
        ("q_proj", ["so 'q_proj' alone matches no layer", "([q_proj])", r"'.*\.q_proj'"]),
        ("(q_proj", ["'(q_proj' is not a valid regular expression", "a valid regular expression"]),
        (7, ["must be all-linear, a regular expression, or a non-empty list", "[q_proj, v_proj]"]),
        ([], ["must be all-linear, a regular expression, or a non-empty list"]),
        ([""], ["must be all-linear, a regular expression, or a non-empty list"]),
    ],
)
def test_target_modules_mistakes(value: Any, fragments: list[str]) -> None:
    for method_type in ("lora", "qlora", "adalora"):
        where, message = only_problem({"type": method_type, method_type: {"targetModules": value}})
        assert where == f"spec.method.{method_type}.targetModules"
        for fragment in fragments:
            assert fragment in message


# --------------------------------------------------------------------------- per-method checks


@pytest.mark.parametrize(
    ("method", "path", "fragments"),
    [
        (
            {"lora": {"init": "pissa", "useDora": True}},
            "spec.method.lora",
            ["init pissa cannot be combined with useDora", "set useDora: false or init: default"],
        ),
        (
            {"lora": {"loraPlusRatio": 0.5}},
            "spec.method.lora.loraPlusRatio",
            ["greater than or equal to 1"],
        ),
        (
            {"lora": {"init": "svd"}},
            "spec.method.lora.init",
            ["'default', 'gaussian', 'pissa' or 'olora'"],
        ),
        (
            {"type": "qlora", "qlora": {"init": "olora"}},
            "spec.method.qlora",
            ["init olora rewrites the base weights", "type: lora for init olora"],
        ),
        (
            {"type": "adalora", "adalora": {"initR": 8, "targetR": 8}},
            "spec.method.adalora",
            ["targetR (8) must be below initR (8)", "lower targetR or raise initR"],
        ),
        (
            {"type": "adalora", "adalora": {"beta1": 1}},
            "spec.method.adalora.beta1",
            ["less than 1"],
        ),
        (
            {"type": "ia3", "ia3": {"feedforwardModules": ["down_proj"]}},
            "spec.method.ia3",
            ["feedforwardModules is set but targetModules is not", "set targetModules too"],
        ),
        (
            {
                "type": "ia3",
                "ia3": {"targetModules": ["k_proj"], "feedforwardModules": ["up_proj"]},
            },
            "spec.method.ia3",
            ["feedforwardModules ['up_proj'] are not in targetModules ['k_proj']", "add them"],
        ),
        (
            {"type": "full", "full": {"learningRate": 1}},
            "spec.method.full.learningRate",
            ["unknown field; this section takes no fields; leave it empty ({}) or remove it"],
        ),
        (
            {"type": "freeze", "freeze": {"headLrMultiplier": 0}},
            "spec.method.freeze.headLrMultiplier",
            ["greater than 0"],
        ),
        (
            {"type": "prefix", "prefix": {"encoderHiddenSize": 128}},
            "spec.method.prefix",
            ["encoderHiddenSize is only used with projection: true", "set projection: true"],
        ),
        (
            {"type": "prefix", "prefix": {"numVirtualTokens": 0}},
            "spec.method.prefix.numVirtualTokens",
            ["greater than or equal to 1"],
        ),
        (
            {"type": "prompt", "prompt": {"initText": "Answer briefly"}},
            "spec.method.prompt",
            ["initText is only used with init: text", "set init: text or remove initText"],
        ),
        (
            {"type": "prompt", "prompt": {"init": "text", "initText": ""}},
            "spec.method.prompt.initText",
            ["at least 1 character"],
        ),
        (
            {"type": "p-tuning", "pTuning": {"encoderNumLayers": 3}},
            "spec.method.pTuning",
            ["encoderNumLayers is only used with encoder: lstm", "set encoder: lstm"],
        ),
        (
            {"type": "p-tuning", "pTuning": {"encoder": "gru"}},
            "spec.method.pTuning.encoder",
            ["'mlp' or 'lstm'"],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_options_name_the_field_and_the_fix(
    method: dict[str, Any], path: str, fragments: list[str]
) -> None:
    where, message = only_problem(method)
    assert where == path
    for fragment in fragments:
        assert fragment in message


@pytest.mark.parametrize(
    "method",
    [
        {"type": "qlora", "qlora": {"useDora": True, "init": "gaussian", "loraPlusRatio": 16}},
        {"lora": {"init": "olora", "useRslora": True, "modulesToSave": ["lm_head"]}},
        {"type": "adalora", "adalora": {"initR": 12, "targetR": 4, "tinit": 10, "tfinal": 20}},
        {
            "type": "ia3",
            "ia3": {"targetModules": ["k_proj", "down_proj"], "feedforwardModules": ["down_proj"]},
        },
        {"type": "ia3", "ia3": {"targetModules": "all-linear", "feedforwardModules": ".*mlp.*"}},
        {"type": "freeze", "freeze": {"trainableLayers": 0, "trainBiasOnly": True}},
        {"type": "prefix", "prefix": {"projection": True, "encoderHiddenSize": 256}},
        {"type": "prompt", "prompt": {"init": "text", "initText": "Answer with a date"}},
        {"type": "p-tuning", "pTuning": {"encoder": "lstm", "encoderNumLayers": 1}},
    ],
)
def test_good_combinations_are_accepted(method: dict[str, Any]) -> None:
    assert problems(method) == []


# --------------------------------------------------------------------------- peft task type


def test_peft_task_type_follows_the_job_task(tmp_path: Any) -> None:
    import torch
    from peft import TaskType

    from finetune_trainer.errors import ConfigError
    from finetune_trainer.methods import MethodContext
    from finetune_trainer.methods.common import peft_task_type
    from finetune_trainer.modeling import resolve_compute

    def context(task: str) -> MethodContext:
        return MethodContext(resolve_compute("fp32", torch.device("cpu")), 1, task, tmp_path, None)

    assert peft_task_type(context("causal-lm")) == TaskType.CAUSAL_LM
    assert peft_task_type(context("sequence-classification")) == TaskType.SEQ_CLS
    with pytest.raises(ConfigError, match="task: translation has no PEFT task type"):
        peft_task_type(context("translation"))


# --------------------------------------------------------------------------- qlora builds on lora


def test_qlora_takes_its_lora_options_under_lora() -> None:
    method = {
        "type": "qlora",
        "lora": {"r": 4, "alpha": 8, "targetModules": ["q_proj", "v_proj"], "useDora": True},
        "qlora": {"quantType": "fp4", "doubleQuant": False},
    }
    assert problems(method) == []
    options = MethodSpec.model_validate(method).options()
    assert type(options) is QLoraSpec
    assert (options.r, options.alpha, options.target_modules) == (4, 8, ["q_proj", "v_proj"])
    assert (options.use_dora, options.quant_type, options.double_quant) == (True, "fp4", False)
    assert options.compute_dtype == "auto"  # defaults for what neither section gives
    # the lora section alone is enough; the older form keeps working
    assert MethodSpec.model_validate({"type": "qlora", "lora": {"r": 4}}).options().r == 4
    assert MethodSpec.model_validate({"type": "qlora", "qlora": {"r": 4}}).options().r == 4


def test_the_two_sections_can_share_out_the_lora_options() -> None:
    spec = MethodSpec.model_validate(
        {"type": "qlora", "lora": {"r": 4}, "qlora": {"alpha": 8, "quantType": "fp4"}}
    )
    options = spec.options()
    assert (options.r, options.alpha, options.quant_type) == (4, 8, "fp4")


@pytest.mark.parametrize(
    ("method", "path", "fragments"),
    [
        (
            {"type": "qlora", "lora": {"r": 8}, "qlora": {"r": 16, "quantType": "nf4"}},
            "spec.method",
            [
                "lora.r and qlora.r are both set",
                "give each lora option once, under lora:",
                "keep only quantType, doubleQuant and computeDtype under qlora:",
            ],
        ),
        (
            {"type": "qlora", "lora": {"alpha": 8, "init": "gaussian"}, "qlora": {"alpha": 8}},
            "spec.method",
            ["lora.alpha and qlora.alpha are both set"],  # even with the same value
        ),
        (
            {"type": "qlora", "lora": {"init": "pissa"}},
            "spec.method.lora",
            ["init pissa rewrites the base weights", "type: lora for init pissa"],
        ),
        (
            {"type": "qlora", "lora": {"init": "olora"}, "qlora": {"quantType": "fp4"}},
            "spec.method.lora",
            ["init olora rewrites the base weights", "type: lora for init olora"],
        ),
        (
            {"type": "qlora", "lora": {"r": 8}, "qlora": {"init": "pissa"}},
            "spec.method.qlora",
            ["init pissa rewrites the base weights"],
        ),
        (
            {"type": "adalora", "lora": {"r": 8}},
            "spec.method",
            [
                "section 'lora' is set but type is 'adalora'",
                "set type: lora or qlora, or move the options under 'adalora:'",
            ],
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_qlora_sections_mistakes(method: dict[str, Any], path: str, fragments: list[str]) -> None:
    where, message = only_problem(method)
    assert where == path
    for fragment in fragments:
        assert fragment in message


def test_pissa_stays_a_lora_option() -> None:
    # the qlora check on the lora section applies to type qlora only
    assert problems({"type": "lora", "lora": {"init": "pissa"}}) == []


def test_a_dump_writes_each_option_in_its_section_and_reads_back() -> None:
    """Dumps fill in defaults, so a lora section dumped in full beside a qlora section
    dumped in full would read back as every option given twice."""
    spec = MethodSpec.model_validate(
        {"type": "qlora", "lora": {"r": 4}, "qlora": {"alpha": 8, "quantType": "fp4"}}
    )
    dumped = spec.model_dump(exclude_none=True)
    assert dumped["lora"]["r"] == 4
    assert dumped["lora"]["alpha"] == 8  # moved to where it belongs
    assert dumped["qlora"] == {"quantType": "fp4", "doubleQuant": True, "computeDtype": "auto"}
    assert spec.model_dump(exclude_unset=True) == {
        "type": "qlora",
        "lora": {"r": 4, "alpha": 8},
        "qlora": {"quantType": "fp4"},
    }
    assert spec.model_dump(by_alias=False, exclude_none=True)["qlora"]["quant_type"] == "fp4"
    again = MethodSpec.model_validate(dumped)
    assert again.options() == spec.options()
    assert again.model_dump(exclude_none=True) == dumped
    assert MethodSpec.model_validate_json(spec.model_dump_json()).options() == spec.options()
    # the older form is written as it was
    legacy = MethodSpec.model_validate({"type": "qlora", "qlora": {"r": 4}})
    assert set(legacy.model_dump(exclude_none=True)) == {"type", "qlora"}
