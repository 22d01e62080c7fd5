"""Model presets (finetune_api.config.presets): the catalogue validates and ships with the
contract; each preset's targetModules are every Linear of a real block of its
architecture (a tiny random model built from a config dict) and a LoRA with its settings
applies through peft; `spec.model.preset` fills exactly the gaps the user left, at render
time; an unknown name is refused with the choices."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO
from finetune_api.config.job import ModelSource
from finetune_api.config.presets import (
    PRESET_NAMES,
    Catalogue,
    Preset,
    get_preset,
    load_catalogue,
)
from finetune_api.manifests import check_documents
from finetune_api.render import render_trainer_config, with_preset
from finetune_api.resource import FineTuneJob, FineTuneJobSpec

PRESETS = list(load_catalogue().values())


def job(spec: dict[str, Any]) -> FineTuneJob:
    return FineTuneJob.model_validate(
        {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "preset-job"},
            "spec": {
                "model": {"uri": "hf://org/model", "preset": "qwen2.5-7b-instruct"},
                "dataset": {"train": "s3://bucket/train.jsonl", "format": "messages"},
                **spec,
            },
        }
    )


# --------------------------------------------------------------------------- catalogue


def test_catalogue_covers_the_popular_bases() -> None:
    architectures = {p.architecture for p in PRESETS}
    assert {"llama", "qwen2", "mistral", "phi3", "gemma2"} <= architectures
    assert "smollm2-135m-instruct" in PRESET_NAMES
    for preset in PRESETS:
        assert all(m.startswith("hf://") for m in preset.models)
        assert preset.chat_template.strip()


def test_catalogue_ships_in_the_wheel() -> None:
    """setuptools only packages non-Python files it is told about."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "presets.yaml" in setuptools["package-data"]["finetune_api.config"]
    assert (REPO / "api/finetune_api/config/presets.yaml").is_file()


def test_catalogue_refuses_duplicates_and_section_target_modules() -> None:
    raw = yaml.safe_load((REPO / "api/finetune_api/config/presets.yaml").read_text())
    first = raw["presets"][0]
    with pytest.raises(ValueError, match="unique"):
        Catalogue.model_validate({"presets": [first, first]})
    with pytest.raises(ValueError, match=r"lora\.targetModules is set"):
        Preset.model_validate({**first, "lora": {**first["lora"], "targetModules": ["q_proj"]}})


def test_preset_names_are_an_enum_in_the_crd_schema() -> None:
    schema = ModelSource.model_json_schema()["properties"]["preset"]
    enums = [option.get("enum") for option in schema.get("anyOf", [schema])]
    assert list(PRESET_NAMES) in enums


# --------------------------------------------------------------------------- refusal


def test_an_unknown_preset_is_refused_naming_the_field_and_the_choices() -> None:
    manifest = yaml.safe_dump(
        {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "x"},
            "spec": {
                "model": {"uri": "hf://org/m", "preset": "llama-9"},
                "dataset": {"train": "file://./t.jsonl"},
            },
        }
    )
    [doc] = check_documents(manifest, "job.yaml")
    assert doc.job is None
    [problem] = doc.problems
    text = str(problem)
    assert "spec.model.preset" in text
    assert "unknown preset 'llama-9'" in text
    assert all(name in text for name in PRESET_NAMES)
    with pytest.raises(ValueError, match="use one of"):
        get_preset("llama-9")


def test_validate_cli_refuses_an_unknown_preset(tmp_path: Path) -> None:
    from finetune_cli.app import app

    path = tmp_path / "job.yaml"
    path.write_text(
        (REPO / "examples/presets.yaml")
        .read_text()
        .replace("preset: smollm2-135m-instruct", "preset: smollm3")
    )
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "spec.model.preset: unknown preset 'smollm3'" in result.output


# --------------------------------------------------------------------------- filling gaps


def test_a_job_without_a_preset_is_unchanged() -> None:
    spec = FineTuneJobSpec.model_validate(
        {"model": {"uri": "hf://org/m"}, "dataset": {"train": "s3://bucket/t.jsonl"}}
    )
    assert with_preset(spec) is spec


def test_the_preset_fills_lora_and_training_gaps_and_the_user_wins() -> None:
    preset = get_preset("qwen2.5-7b-instruct")
    config = render_trainer_config(
        job({"method": {"lora": {"r": 8}}, "training": {"maxSeqLength": 512}}),
        "s3://bucket/out",
    )
    lora = config.method.options()
    assert lora.r == 8  # the user's
    assert lora.alpha == preset.lora.alpha
    assert lora.dropout == preset.lora.dropout
    assert lora.target_modules == preset.target_modules
    assert config.training.max_seq_length == 512  # the user's
    assert config.training.learning_rate == preset.training.learning_rate
    assert config.model.preset == "qwen2.5-7b-instruct"  # recorded in the TrainerConfig


def test_the_users_target_modules_win() -> None:
    config = render_trainer_config(
        job({"method": {"lora": {"targetModules": "all-linear"}}}), "s3://bucket/out"
    )
    assert config.method.options().target_modules == "all-linear"


def test_the_preset_fills_qlora_with_options_under_either_section() -> None:
    preset = get_preset("qwen2.5-7b-instruct")
    config = render_trainer_config(
        job({"method": {"type": "qlora", "lora": {"alpha": 64}, "qlora": {"quantType": "fp4"}}}),
        "s3://bucket/out",
    )
    options = config.method.options()
    assert options.alpha == 64
    assert options.quant_type == "fp4"
    assert options.r == preset.qlora.r
    assert options.double_quant is preset.qlora.double_quant
    assert options.target_modules == preset.target_modules
    again = render_trainer_config(job({"method": {"type": "qlora"}}), "s3://bucket/out")
    assert again.method.options().quant_type == preset.qlora.quant_type


def test_a_method_without_preset_options_gets_only_training() -> None:
    preset = get_preset("qwen2.5-7b-instruct")
    config = render_trainer_config(job({"method": {"type": "ia3"}}), "s3://bucket/out")
    assert config.method.type == "ia3"
    assert config.training.learning_rate == preset.training.learning_rate


def test_the_filled_spec_is_validated_like_the_spec() -> None:
    """A rule broken by a preset value together with the user's is refused at render."""
    spec = job({"training": {"learningRate": 5e-5}}).spec
    filled = with_preset(spec)
    assert isinstance(filled, FineTuneJobSpec)
    assert filled.training.learning_rate == 5e-5
    modules = get_preset("qwen2.5-7b-instruct").target_modules
    assert filled.method.options().target_modules == modules


# --------------------------------------------------------------------------- tested modules

TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 128,
    "pad_token_id": 0,
}


def tiny_model(architecture: str) -> Any:
    import torch
    import transformers

    config = transformers.AutoConfig.for_model(architecture, **TINY_SHAPE)
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(config)


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_target_modules_are_every_linear_of_a_block_and_lora_applies(preset: Preset) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    model = tiny_model(preset.architecture)
    assert model.config.model_type == preset.architecture
    layers = model.config.num_hidden_layers
    block_linears = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    }
    assert block_linears == set(preset.target_modules)

    config = render_trainer_config(
        job({"model": {"uri": "hf://org/m", "preset": preset.name}}), "s3://bucket/out"
    )
    options = config.method.options()
    peft_model = get_peft_model(
        model,
        LoraConfig(
            r=options.r,
            lora_alpha=options.alpha,
            lora_dropout=options.dropout,
            target_modules=list(options.target_modules),
        ),
    )
    adapted = [n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and m.lora_A]
    assert len(adapted) == layers * len(preset.target_modules)
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


# --------------------------------------------------------------------------- finetune presets


def test_finetune_presets_lists_the_catalogue_and_shows_what_one_fills_in() -> None:
    from finetune_cli.app import app

    listed = CliRunner().invoke(app, ["presets"])
    assert listed.exit_code == 0, listed.output
    assert [line.split()[0] for line in listed.output.splitlines()] == list(PRESET_NAMES)
    shown = CliRunner().invoke(app, ["presets", "phi-4-mini-instruct"])
    assert shown.exit_code == 0, shown.output
    filled = yaml.safe_load(shown.output)
    assert filled["method"]["lora"]["targetModules"] == [
        "qkv_proj",
        "o_proj",
        "gate_up_proj",
        "down_proj",
    ]
    assert filled["training"] == get_preset("phi-4-mini-instruct").training_options()
    unknown = CliRunner().invoke(app, ["presets", "nope"])
    assert unknown.exit_code == 2
    assert "unknown preset 'nope'" in unknown.output
