"""The pure runtime resolver (finetune_operator.runtime): each precedence level, each
refusal, and no runtime at all; plus the contract's runtime models and examples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from finetune_api.manifests import validate_body
from finetune_api.runtime import ClusterFineTuneRuntime, FineTuneRuntime, RuntimeSpec
from finetune_operator.runtime import Refusal, Resolved, resolve
from finetune_operator.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = Settings(trainer_image="chart/trainer:1", trainer_env=(("AWS_ENDPOINT_URL", "x"),))


def rt(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "generation": 3}, "spec": spec}


def ok(result: Resolved | Refusal) -> Resolved:
    assert isinstance(result, Resolved), result
    return result


def refused(result: Resolved | Refusal) -> Refusal:
    assert isinstance(result, Refusal), result
    return result


def test_no_runtime_changes_nothing() -> None:
    spec = {"resources": {"gpus": 1}}
    result = ok(resolve(spec, [], [rt("plain")], SETTINGS))
    assert result.spec == spec and result.settings == SETTINGS and result.status is None


def test_namespace_default_fills_what_the_job_leaves_out() -> None:
    team = rt("team", default=True, defaults={"gpus": 2, "gpuType": "H100"}, queueName="q")
    result = ok(resolve({"resources": {"cpu": 4}}, [team], [], SETTINGS))
    assert result.spec["resources"] == {"cpu": 4, "gpus": 2, "gpuType": "H100"}
    assert result.spec["queueName"] == "q"
    assert result.status == {"kind": "FineTuneRuntime", "name": "team", "generation": 3}


def test_job_fields_win_and_scheduling_merges() -> None:
    team = rt(
        "team",
        default=True,
        defaults={"gpus": 2},
        nodeSelector={"a": "1", "b": "1"},
        tolerations=[{"key": "gpu", "operator": "Exists"}],
        priorityClassName="low",
        storage={"credentialsSecret": "s3", "endpoint": "http://minio:9000"},
        trainer={"image": "team/trainer:2", "imagePullSecrets": ["reg"]},
    )
    job = {
        "resources": {
            "gpus": 1,
            "nodeSelector": {"b": "2"},
            "tolerations": [{"key": "spot", "operator": "Exists"}],
            "priorityClassName": "high",
        },
        "output": {"uri": "s3://b/x", "credentialsSecret": "mine"},
    }
    result = ok(resolve(job, [team], [], SETTINGS))
    res = result.spec["resources"]
    assert res["gpus"] == 1 and res["priorityClassName"] == "high"
    assert res["nodeSelector"] == {"a": "1", "b": "2"}
    assert [t["key"] for t in res["tolerations"]] == ["gpu", "spot"]
    assert result.spec["output"]["credentialsSecret"] == "mine"
    assert result.settings.trainer_image == "team/trainer:2"
    assert result.settings.image_pull_secrets == ("reg",)
    assert dict(result.settings.trainer_env)["AWS_ENDPOINT_URL"] == "http://minio:9000"


def test_cluster_default_lies_beneath_the_namespaced_runtime() -> None:
    team = rt("team", trainer={"image": "team/t:1"}, limits={"maxGpus": 2})
    platform = rt("platform", default=True, trainer={"image": "p/t:1"}, priorityClassName="p")
    result = ok(resolve({"runtimeRef": {"name": "team"}}, [team], [platform], SETTINGS))
    assert result.settings.trainer_image == "team/t:1"
    assert result.spec["resources"]["priorityClassName"] == "p"
    assert result.status is not None and result.status["clusterDefault"] == "platform"
    alone = ok(resolve({}, [], [platform], SETTINGS))
    assert alone.status == {"kind": "ClusterFineTuneRuntime", "name": "platform", "generation": 3}


def test_a_named_cluster_runtime() -> None:
    gpu = rt("gpu", defaults={"gpus": 1})
    ref = {"runtimeRef": {"name": "gpu", "kind": "ClusterFineTuneRuntime"}}
    assert ok(resolve(ref, [], [gpu], SETTINGS)).spec["resources"]["gpus"] == 1


@pytest.mark.parametrize(
    ("resources", "limits", "words"),
    [
        (
            {"gpus": 8},
            {"maxGpus": 4},
            "spec.resources.gpus: 8 exceeds the FineTuneRuntime t's limits.maxGpus 4",
        ),
        ({"nodes": 3}, {"maxNodes": 2}, "spec.resources.nodes: 3"),
        ({"memory": "512Gi"}, {"maxMemory": "256Gi"}, "limits.maxMemory 256Gi"),
        ({"cpu": "64"}, {"maxCpu": 32}, "spec.resources.cpu: 64"),
        ({}, {"maxGpus": 1}, None),
    ],
)
def test_limits(resources: dict[str, Any], limits: dict[str, Any], words: str | None) -> None:
    team = rt("t", default=True, limits=limits)
    result = resolve({"resources": resources}, [team], [], SETTINGS)
    if words is None:
        ok(result)
    else:
        refusal = refused(result)
        assert refusal.reason == "RuntimeForbids" and words in refusal.message


def test_a_default_over_a_cluster_limit_is_refused() -> None:
    team = rt("team", default=True, defaults={"gpus": 8})
    platform = rt("platform", default=True, limits={"maxGpus": 4})
    refusal = refused(resolve({}, [team], [platform], SETTINGS))
    assert "ClusterFineTuneRuntime platform's limits.maxGpus 4" in refusal.message


def test_missing_ambiguous_and_invalid_runtimes() -> None:
    missing = refused(resolve({"runtimeRef": {"name": "x"}}, [], [], SETTINGS))
    assert missing.reason == "RuntimeNotFound" and missing.message.startswith("spec.runtimeRef")
    two = [rt("a", default=True), rt("b", default=True)]
    assert refused(resolve({}, two, [], SETTINGS)).reason == "RuntimeAmbiguous"
    bad = rt("bad", default=True, defaults={"gpus": "many"})
    invalid = refused(resolve({}, [bad], [], SETTINGS))
    assert invalid.reason == "RuntimeInvalid" and "spec.defaults.gpus" in invalid.message


def test_runtime_defaults_must_fit_its_limits() -> None:
    with pytest.raises(ValidationError, match=r"defaults\.gpus 8 exceeds limits\.maxGpus 4"):
        RuntimeSpec.model_validate({"defaults": {"gpus": 8}, "limits": {"maxGpus": 4}})


def test_examples_are_valid_runtimes() -> None:
    models = {"FineTuneRuntime": FineTuneRuntime, "ClusterFineTuneRuntime": ClusterFineTuneRuntime}
    for path in sorted((ROOT / "examples" / "runtimes").glob("*.yaml")):
        body = yaml.safe_load(path.read_text())
        models[body["kind"]].model_validate(body)


def test_validate_accepts_a_runtime_ref() -> None:
    body = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "x"},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "dataset": {"train": "s3://data-bucket/train.jsonl"},
            "output": {"uri": "s3://artifacts-bucket/out"},
            "runtimeRef": {"name": "team-a"},
        },
    }
    job, problems = validate_body(body, "cluster")
    assert job is not None, problems
    assert job.spec.runtime_ref is not None and job.spec.runtime_ref.kind == "FineTuneRuntime"
    body["spec"]["runtimeRef"] = {"name": "x", "kind": "Other"}
    assert validate_body(body, "cluster")[0] is None
