"""FineTuneJob -> TrainerConfig, and the TrainerConfig JSON the training pod reads.

Both `finetune run` and the operator go through `render_trainer_config`; what it copies,
what it drops and what it refuses decides whether a job behaves the same in both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.config import TRAINER_CONFIG_VERSION, JobSections, TrainerConfig
from finetune_api.render import RenderError, local_output_uri, render_trainer_config
from finetune_api.resource import FineTuneJob


def job(**spec_overrides: Any) -> FineTuneJob:
    spec: dict[str, Any] = {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"},
        "dataset": {
            "train": "s3://data-bucket/sets/train.jsonl",
            "validationSplit": 0.2,
            "format": "instruction",
            "columns": {"instruction": "question", "output": "answer"},
        },
        "method": {"type": "qlora", "qlora": {"r": 8, "targetModules": ["q_proj", "v_proj"]}},
        "training": {"learningRate": 1e-4, "maxSteps": 50, "batchSize": 2},
        "evaluation": {"exactMatchSamples": 0},
        "output": {"uri": "s3://artifacts-bucket/adapters/demo"},
        "resources": {"gpus": 1, "cpu": "4", "memory": "16Gi"},
    }
    spec.update(spec_overrides)
    return FineTuneJob.model_validate(
        {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "demo", "namespace": "ml", "uid": "1234"},
            "spec": spec,
        }
    )


def test_sections_are_copied() -> None:
    source = job()
    config = render_trainer_config(source)
    for section in ("task", "model", "dataset", "method", "training", "evaluation"):
        assert getattr(config, section) == getattr(source.spec, section), section
    assert config.training.learning_rate == 1e-4
    assert config.method.type == "qlora"
    assert config.method.options().r == 8
    assert config.method.options().target_modules == ["q_proj", "v_proj"]
    assert config.dataset.columns.instruction == "question"
    assert config.dataset.effective_validation_split == 0.2


def test_job_name_and_version() -> None:
    config = render_trainer_config(job())
    assert config.job_name == "demo"
    assert config.api_version == TRAINER_CONFIG_VERSION == "trainer.finetune-operator.io/v1alpha1"


def test_kubernetes_only_fields_stay_behind() -> None:
    dumped = render_trainer_config(job()).model_dump(by_alias=True)
    assert "resources" not in dumped
    # every section the spec shares with the TrainerConfig (task, model, dataset, ...,
    # the task-owned preference and reinforcement sections), and the config's own
    shared = {field.alias or name for name, field in JobSections.model_fields.items()}
    assert {"task", "model", "dataset", "preference", "reinforcement"} <= shared
    assert set(dumped) == shared | {"apiVersion", "jobName", "output", "distributed"}


def test_tracking_reaches_the_trainer() -> None:
    tracked = job(tracking={"mlflow": {"trackingUri": "http://mlflow:5000"}, "tensorboard": {}})
    config = render_trainer_config(tracked)
    assert config.tracking.mlflow is not None
    assert config.tracking.mlflow.tracking_uri == "http://mlflow:5000"
    assert config.tracking.tensorboard is not None and config.tracking.wandb is None


def test_distributed_comes_from_resources_in_the_cluster_and_is_one_process_locally() -> None:
    # lora: fsdp cannot shard qlora's 4-bit weights (finetune_api.rules)
    many = job(method={"type": "lora"}, resources={"gpus": 4, "nodes": 2, "strategy": "fsdp"})
    cluster = render_trainer_config(many).distributed
    assert (cluster.nodes, cluster.processes_per_node, cluster.strategy) == (2, 4, "fsdp")
    assert cluster.world_size == 8
    assert render_trainer_config(many, local=True).distributed.world_size == 1
    cpu_only = render_trainer_config(job(resources={"nodes": 3})).distributed
    assert (cpu_only.processes_per_node, cpu_only.world_size) == (1, 3)


def test_fsdp_without_gpus_is_refused() -> None:
    with pytest.raises(ValidationError, match="strategy fsdp shards the model across GPUs"):
        job(resources={"strategy": "fsdp"})


def test_output_options_reach_the_trainer() -> None:
    output = {
        "uri": "s3://artifacts-bucket/x",
        "checkpointEvery": 25,
        "keepCheckpoints": 3,
        "credentialsSecret": "minio-creds",
        "retryDeadlineSeconds": 60,
    }
    config = render_trainer_config(job(output=output)).output
    assert (config.checkpoint_every, config.keep_checkpoints) == (25, 3)
    assert (config.credentials_secret, config.retry_deadline_seconds) == ("minio-creds", 60)


def test_spec_output_is_used() -> None:
    assert render_trainer_config(job()).output.uri == "s3://artifacts-bucket/adapters/demo"


def test_output_override_wins() -> None:
    config = render_trainer_config(job(), output_uri="file://./elsewhere")
    assert config.output.uri == "file://./elsewhere"


def test_missing_output_names_the_field() -> None:
    with pytest.raises(RenderError) as info:
        render_trainer_config(job(output={}))
    assert "spec.output.uri" in str(info.value)
    assert "demo" in str(info.value)  # the suggested URI carries the job's name


def test_missing_output_with_override_is_fine() -> None:
    config = render_trainer_config(job(output={}), output_uri=local_output_uri("demo"))
    assert config.output.uri == "file://./artifacts/demo"


def test_override_is_validated_like_the_spec() -> None:
    with pytest.raises(ValidationError, match="path segments are not allowed"):
        render_trainer_config(job(), output_uri="s3://artifacts-bucket/%2e%2e/x")
    with pytest.raises(ValidationError, match="not supported for an output"):
        render_trainer_config(job(), output_uri="ftp://host/adapter")


def test_defaults_are_rendered_explicitly() -> None:
    minimal = job(method={}, training={}, evaluation={})
    config = render_trainer_config(minimal)
    assert config.method.type == "lora"
    assert config.method.lora is None
    assert config.method.options().r == 16  # defaults filled in for an absent section
    assert config.training.learning_rate == 2e-4
    assert config.model.trust_remote_code is False


# --------------------------------------------------------------------------- JSON contract


def test_json_round_trip() -> None:
    config = render_trainer_config(job())
    text = config.to_json()
    assert TrainerConfig.from_json(text) == config
    assert TrainerConfig.from_json(text.encode()) == config


def test_json_is_camel_case_and_omits_nulls() -> None:
    data = json.loads(render_trainer_config(job()).to_json())
    assert data["apiVersion"] == "trainer.finetune-operator.io/v1alpha1"
    assert data["jobName"] == "demo"
    assert data["training"]["learningRate"] == 0.0001
    assert data["dataset"]["validationSplit"] == 0.2
    assert data["method"]["qlora"]["targetModules"] == ["q_proj", "v_proj"]
    assert "lora" not in data["method"]  # None is omitted, not written as null
    assert "maxSteps" in data["training"]
    assert "validation" not in data["dataset"]


def test_snake_case_names_are_accepted_too() -> None:
    config = render_trainer_config(job())
    data = config.model_dump(by_alias=False)
    assert TrainerConfig.model_validate(data) == config


def test_config_rejects_unknown_keys_and_wrong_version() -> None:
    data = json.loads(render_trainer_config(job()).to_json())
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        TrainerConfig.model_validate({**data, "resources": {}})
    with pytest.raises(ValidationError, match="apiVersion"):
        TrainerConfig.model_validate({**data, "apiVersion": "trainer.finetune-operator.io/v2"})


def test_redacted_is_json_ready() -> None:
    config = render_trainer_config(job())
    redacted = config.redacted()
    assert json.loads(json.dumps(redacted)) == redacted
    assert redacted["jobName"] == "demo"


def test_config_is_frozen() -> None:
    config = render_trainer_config(job())
    with pytest.raises(ValidationError):
        config.job_name = "other"  # type: ignore[misc]


def test_qlora_with_lora_options_under_lora_renders_where_the_trainer_reads_them() -> None:
    from finetune_api.config import QLoraSpec

    source = job(
        method={
            "type": "qlora",
            "lora": {"r": 4, "targetModules": ["q_proj"]},
            "qlora": {"quantType": "fp4"},
        }
    )
    config = render_trainer_config(source)
    options = config.method.options()  # what the trainer's qlora method is given
    assert isinstance(options, QLoraSpec)
    assert (options.r, options.target_modules, options.quant_type) == (4, ["q_proj"], "fp4")
    assert options.alpha == 32
    assert options == source.spec.method.options()
    method = json.loads(config.to_json())["method"]
    assert method["lora"]["r"] == 4
    assert "quantType" not in method["lora"]
    assert method["qlora"] == {"quantType": "fp4", "doubleQuant": True, "computeDtype": "auto"}
    again = TrainerConfig.from_json(config.to_json())
    assert again == config
    assert again.method.options() == options


def test_a_max_steps_override_is_validated_like_the_spec() -> None:
    adalora = {"type": "adalora", "adalora": {"tinit": 4, "tfinal": 2}}
    assert render_trainer_config(job(method=adalora), max_steps=7).training.max_steps == 7
    with pytest.raises(ValidationError, match=r"tinit \(4\) \+ tfinal \(2\) leave no step"):
        render_trainer_config(job(method=adalora), max_steps=6)


def test_finetune_run_refuses_a_max_steps_that_breaks_a_rule_before_loading_anything(
    tmp_path: Path,
) -> None:
    import yaml
    from typer.testing import CliRunner

    from finetune_cli.app import EXIT_INVALID, app

    manifest = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "ada"},
        "spec": {
            "model": {"uri": f"file://{tmp_path / 'no-such-model'}"},
            "dataset": {"train": f"file://{tmp_path / 'train.jsonl'}"},
            "method": {"type": "adalora", "adalora": {"tinit": 4, "tfinal": 2}},
        },
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = CliRunner().invoke(app, ["run", str(path), "--max-steps", "6"])
    assert result.exit_code == EXIT_INVALID == 2, result.output
    assert "method.adalora: tinit (4) + tfinal (2) leave no step of training.maxSteps (6)" in (
        result.output
    )
    assert "Traceback" not in result.output
