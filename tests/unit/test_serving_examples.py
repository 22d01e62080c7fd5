"""examples/serving/: the vLLM and KServe manifests that serve what examples/s3.yaml
publishes, and the check that vLLM would load the adapter (finetune_api.serving).

The core objects (Deployment, Service, ServiceAccount) validate strictly against the
Kubernetes OpenAPI schemas (kubernetes-validate). An InferenceService is a CRD that
kubernetes-validate has no schema for: its required fields are checked here by name, and
its predictor's pod fields and model container strictly as the core PodSpec and
Container they extend (KServe's own fields taken out first). Each manifest agrees with
the job it serves: the same bucket and prefix, the same credentials Secret, the same
base model, a --max-lora-rank vLLM accepts and the adapter fits.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest
import yaml
from safetensors import safe_open

from finetune_api.config.gate import GateCondition
from finetune_api.config.job import JobSections, OutputOptions
from finetune_api.gate import judge
from finetune_api.resource import FineTuneJob
from finetune_api.serving import (
    VLLM_LORA_MODULES,
    VLLM_MAX_LORA_RANKS,
    adapter_config_for,
    job_vllm_compatibility,
    module_names_from_weights,
    smallest_max_lora_rank,
    vllm_compatibility,
)
from hub_server import SMOLLM2_CONFIG

ROOT = Path(__file__).resolve().parents[2]
SERVING = ROOT / "examples" / "serving"
MANIFESTS = sorted(SERVING.glob("*.yaml"))
K8S_VERSIONS = ["1.29", kv.latest_version()]
CORE_KINDS = {"Deployment", "Service", "ServiceAccount"}
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# KServe's additions to a core Container (ModelSpec) and to a PodSpec (PredictorSpec's
# ComponentExtensionSpec and model slot), removed before validating the rest as core.
KSERVE_MODEL_FIELDS = {"modelFormat", "storageUri", "runtime", "protocolVersion", "runtimeVersion"}
KSERVE_PREDICTOR_FIELDS = {
    "model",
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "deploymentStrategy",
}


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def by_kind(path: Path, kind: str) -> list[dict[str, Any]]:
    return [d for d in documents(path) if d["kind"] == kind]


def only(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = by_kind(path, kind)
    return doc


@pytest.fixture(scope="module")
def job() -> FineTuneJob:
    """The job whose published set every manifest serves."""
    body = yaml.safe_load((ROOT / "examples" / "s3.yaml").read_text(encoding="utf-8"))
    return FineTuneJob.model_validate(body)


def flags(args: list[str]) -> dict[str, str]:
    """``--name=value`` and ``--name value`` both, as vLLM's and KServe's parsers read
    them; a flag with no value maps to ''."""
    found: dict[str, str] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, sep, value = arg.partition("=")
            if not sep and i + 1 < len(args) and not args[i + 1].startswith("--"):
                value = args[i + 1]
                i += 1
            found[name] = value
        i += 1
    return found


def hub_id(job: FineTuneJob) -> str:
    uri = job.spec.model.uri
    assert uri.startswith("hf://"), uri
    return uri.removeprefix("hf://")


def container(deployment: dict[str, Any], name: str, init: bool = False) -> dict[str, Any]:
    pod = deployment["spec"]["template"]["spec"]
    key = "initContainers" if init else "containers"
    (found,) = [c for c in pod[key] if c["name"] == name]
    return found


def env_value(c: dict[str, Any], name: str) -> str:
    (value,) = [e["value"] for e in c.get("env", []) if e["name"] == name]
    return str(value)


def mount_path(c: dict[str, Any], volume: str) -> str:
    (path,) = [m["mountPath"] for m in c["volumeMounts"] if m["name"] == volume]
    return str(path)


# --------------------------------------------------------------------------- the files


def test_the_folder_holds_the_four_manifests_and_a_readme() -> None:
    assert {p.name for p in MANIFESTS} == {
        "vllm-adapter.yaml",
        "vllm-merged.yaml",
        "kserve-adapter.yaml",
        "kserve-merged.yaml",
    }
    assert (SERVING / "README.md").is_file()


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_core_objects_are_valid_kubernetes(path: Path, k8s_version: str) -> None:
    core = [d for d in documents(path) if d["kind"] in CORE_KINDS]
    assert core, f"{path.name} has no core object"
    for doc in core:
        try:
            kv.validate(doc, k8s_version, strict=True)
        except kv.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{path.name} {doc['kind']} at {where}: {exc.message}")


def test_core_validation_catches_a_misspelt_field() -> None:
    """The strict validation the test above relies on refuses what kubectl would."""
    deployment = copy.deepcopy(only(SERVING / "vllm-adapter.yaml", "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, kv.latest_version(), strict=True)


@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
@pytest.mark.parametrize("path", sorted(SERVING.glob("kserve-*.yaml")), ids=lambda p: p.name)
def test_inference_service_has_kserves_required_fields_and_core_parts(
    path: Path, k8s_version: str
) -> None:
    isvc = only(path, "InferenceService")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert DNS_LABEL.match(isvc["metadata"]["name"])
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"]["name"] == "huggingface"
    assert model["storageUri"].startswith("s3://")
    assert set(model) - KSERVE_MODEL_FIELDS <= {
        "args",
        "env",
        "resources",
        "securityContext",
        "name",
    }, "the model holds a field this test does not validate"
    as_container = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
    pod_spec = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": isvc["metadata"]["name"]},
        "spec": {**pod_spec, "containers": [{"name": "kserve-container", **as_container}]},
    }
    try:
        kv.validate(pod, k8s_version, strict=True)
    except kv.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{path.name} predictor at {where}: {exc.message}")


# --------------------------------------------------------------------------- the same bucket


def test_every_manifest_reads_the_jobs_bucket_with_the_jobs_secret(job: FineTuneJob) -> None:
    output = job.spec.output
    assert output is not None and output.credentials_secret
    published = output.uri.rstrip("/")

    adapter = only(SERVING / "vllm-adapter.yaml", "Deployment")
    fetch = container(adapter, "fetch-adapter", init=True)
    assert env_value(fetch, "ADAPTER_URI").rstrip("/") == published
    assert fetch["envFrom"] == [{"secretRef": {"name": output.credentials_secret}}]

    merged = only(SERVING / "vllm-merged.yaml", "Deployment")
    fetch = container(merged, "fetch-model", init=True)
    assert env_value(fetch, "ARTIFACTS_URI").rstrip("/") == published
    assert fetch["envFrom"] == [{"secretRef": {"name": output.credentials_secret}}]

    for name, prefix in (("kserve-adapter.yaml", ""), ("kserve-merged.yaml", "/merged")):
        isvc = only(SERVING / name, "InferenceService")
        assert isvc["spec"]["predictor"]["model"]["storageUri"] == published + prefix
        account = only(SERVING / name, "ServiceAccount")
        assert isvc["spec"]["predictor"]["serviceAccountName"] == account["metadata"]["name"]
        assert {"name": output.credentials_secret} in account["secrets"]


def test_the_merged_variants_read_merged_under_the_set() -> None:
    """Where output.merge publishes the merged model (its description says merged/)."""
    assert "under merged/" in (OutputOptions.model_fields["merge"].description or "")
    merged = only(SERVING / "vllm-merged.yaml", "Deployment")
    serve = container(merged, "vllm")
    fetch = container(merged, "fetch-model", init=True)
    assert "--include 'merged/*'" in fetch["args"][0]
    assert serve["args"][0] == env_value(fetch, "MODEL_DIR") + "/merged"
    assert env_value(fetch, "MODEL_DIR").startswith(mount_path(serve, "models") + "/")


def test_the_adapter_is_served_on_the_jobs_base_model(job: FineTuneJob) -> None:
    deployment = only(SERVING / "vllm-adapter.yaml", "Deployment")
    serve = container(deployment, "vllm")
    fetch = container(deployment, "fetch-adapter", init=True)
    assert serve["args"][0] == hub_id(job)
    name, _, path = flags(serve["args"])["--lora-modules"].partition("=")
    assert name == job.metadata.name
    # vLLM reads the adapter where the init container put it.
    assert path == env_value(fetch, "ADAPTER_DIR")
    assert path.startswith(mount_path(serve, "adapters") + "/")
    assert mount_path(fetch, "adapters") == mount_path(serve, "adapters")

    isvc = only(SERVING / "kserve-adapter.yaml", "InferenceService")
    args = flags(isvc["spec"]["predictor"]["model"]["args"])
    assert args["--model_id"] == hub_id(job)
    assert args["--lora-modules"] == f"{job.metadata.name}=/mnt/models"  # storageUri lands there


@pytest.mark.parametrize(
    ("path", "args_of"),
    [
        (
            SERVING / "vllm-adapter.yaml",
            lambda p: container(only(p, "Deployment"), "vllm")["args"],
        ),
        (
            SERVING / "kserve-adapter.yaml",
            lambda p: only(p, "InferenceService")["spec"]["predictor"]["model"]["args"],
        ),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else "",
)
def test_lora_flags_fit_the_jobs_adapter(path: Path, args_of: Any, job: FineTuneJob) -> None:
    args = flags(args_of(path))
    assert "--enable-lora" in args
    rank = int(args["--max-lora-rank"])
    assert rank in VLLM_MAX_LORA_RANKS
    options = job.spec.method.options()
    assert rank >= options.r  # type: ignore[union-attr]
    assert job_vllm_compatibility(job.spec, SMOLLM2_CONFIG, rank) == []


# --------------------------------------------------------------------------- locked down


def deployments() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, only(p, "Deployment")) for p in MANIFESTS if by_kind(p, "Deployment")]


@pytest.mark.parametrize(("name", "deployment"), deployments(), ids=lambda v: str(v)[:20])
def test_vllm_pods_are_non_root_pinned_probed_and_get_a_gpu(
    name: str, deployment: dict[str, Any]
) -> None:
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"] + pod["initContainers"]:
        image = c["image"]
        assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", image), f"{name}: {image} is not pinned"
        context = c["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
    serve = container(deployment, "vllm")
    assert serve["image"].startswith("vllm/vllm-openai:v")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert serve[probe]["httpGet"]["path"] == "/health"
        assert serve[probe]["httpGet"]["port"] in ("http", 8000)
    assert serve["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert flags(serve["args"])["--port"] == "8000"


# --------------------------------------------------------------------------- the init scripts

FAKE_AWS = """#!/bin/sh
# `aws s3 sync SRC DST ...` copies the local stand-in of the bucket prefix.
[ "$1 $2" = "s3 sync" ] || exit 2
mkdir -p "$4" && cp -R "$FAKE_PREFIX"/. "$4"/
"""


def gate_manifest(exact_match: float) -> dict[str, Any]:
    """A manifest.json with the gate verdict the trainer records (exactMatch >= 0.9)."""
    condition = GateCondition.model_validate({"metric": "exactMatch", "min": 0.9})
    verdict = judge([condition], {"exactMatch": exact_match})
    return {"kind": "ArtifactManifest", "files": [], "gate": verdict.as_manifest()}


def run_init(
    path: Path, name: str, prefix: Path, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    """The init container's script, run by sh with a stand-in `aws` and its target
    directory under ``tmp_path``."""
    fetch = container(only(path, "Deployment"), name, init=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "aws").write_text(FAKE_AWS)
    (bin_dir / "aws").chmod(0o755)
    env = {e["name"]: str(e["value"]) for e in fetch["env"]}
    target = next(k for k in env if k.endswith("_DIR"))
    env[target] = str(tmp_path / "target")
    env |= {"PATH": f"{bin_dir}:/usr/bin:/bin", "FAKE_PREFIX": str(prefix)}
    assert fetch["command"] == ["/bin/sh", "-c"]
    return subprocess.run(
        ["/bin/sh", "-c", fetch["args"][0]], env=env, capture_output=True, text=True, timeout=30
    )


def published(tmp_path: Path, manifest: dict[str, Any] | None, merged: bool = False) -> Path:
    prefix = tmp_path / "bucket"
    prefix.mkdir()
    (prefix / "adapter_config.json").write_text("{}")
    if merged:
        (prefix / "merged").mkdir()
        (prefix / "merged" / "config.json").write_text("{}")
    if manifest is not None:  # as publish writes it: json.dumps(indent=2)
        (prefix / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return prefix


@pytest.mark.parametrize(
    ("file", "init"),
    [("vllm-adapter.yaml", "fetch-adapter"), ("vllm-merged.yaml", "fetch-model")],
)
@pytest.mark.parametrize(
    ("manifest", "refusal"),
    [
        ({"kind": "ArtifactManifest", "files": []}, None),  # no gate in the spec
        (gate_manifest(0.95), None),
        (gate_manifest(0.5), "failed its evaluation gate"),
        (None, "has no manifest.json"),
    ],
    ids=["no-gate", "gate-passed", "gate-failed", "incomplete"],
)
def test_the_init_container_serves_only_a_complete_set_that_passed_its_gate(
    file: str, init: str, manifest: dict[str, Any] | None, refusal: str | None, tmp_path: Path
) -> None:
    prefix = published(tmp_path, manifest, merged=True)
    result = run_init(SERVING / file, init, prefix, tmp_path)
    if refusal is None:
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "target" / "manifest.json").is_file()
    else:
        assert result.returncode == 1
        assert refusal in result.stderr


def test_the_merged_init_container_refuses_a_set_without_merged(tmp_path: Path) -> None:
    prefix = published(tmp_path, gate_manifest(0.95), merged=False)
    result = run_init(SERVING / "vllm-merged.yaml", "fetch-model", prefix, tmp_path)
    assert result.returncode == 1
    assert "publish with output.merge: true" in result.stderr


def test_no_manifest_carries_a_credential() -> None:
    for path in MANIFESTS:
        text = path.read_text(encoding="utf-8")
        assert "AWS_SECRET_ACCESS_KEY:" not in text
        assert not [d for d in documents(path) if d["kind"] == "Secret"], path.name


# --------------------------------------------------------------------------- the check


LORA = {
    "peft_type": "LORA",
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "v_proj"],
    "bias": "none",
    "use_dora": False,
    "modules_to_save": None,
}


def test_a_plain_lora_adapter_loads() -> None:
    assert vllm_compatibility(LORA, 16) == []
    assert vllm_compatibility({**LORA, "target_modules": sorted(VLLM_LORA_MODULES)}, 64) == []
    # Llama-style models in vLLM declare embed_tokens and lm_head as LoRA embedding modules.
    assert vllm_compatibility({**LORA, "target_modules": ["q_proj", "lm_head"]}, 16) == []


@pytest.mark.parametrize(
    ("change", "max_rank", "expected"),
    [
        ({"r": 32}, 16, "start vLLM with --max-lora-rank 32"),
        ({"r": 600}, 512, "retrain with r <= 512"),
        ({}, 24, "--max-lora-rank 24 is not a value vLLM accepts"),
        ({"use_dora": True}, 16, "does not support DoRA: set method.lora.useDora: false"),
        ({"modules_to_save": ["lm_head"]}, 16, "drop method.lora.modulesToSave"),
        ({"bias": "lora_only"}, 16, "does not support adapter biases"),
        ({"peft_type": "ADALORA"}, 16, "peft_type is ADALORA"),
        ({"target_modules": ["q_proj", "c_attn"]}, 16, "adapts c_attn"),
        ({"rank_pattern": {"q_proj": 8}}, 16, "rank_pattern gives some layers"),
        ({"r": 0}, 16, "vLLM needs a positive integer rank"),
    ],
)
def test_what_vllm_refuses_is_named_with_its_fix(
    change: dict[str, Any], max_rank: int, expected: str
) -> None:
    problems = vllm_compatibility({**LORA, **change}, max_rank)
    assert len(problems) == 1, problems
    assert expected in problems[0]


def test_smallest_max_lora_rank() -> None:
    assert [smallest_max_lora_rank(r) for r in (1, 2, 8, 9, 300, 512, 513)] == [
        1,
        8,
        8,
        16,
        320,
        512,
        None,
    ]


def test_weight_names_decide_over_a_target_pattern() -> None:
    weights = [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight",
        "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight",
        "base_model.model.model.norm.weight",  # not an adapter tensor
    ]
    assert module_names_from_weights(weights) == {"q_proj", "c_attn"}
    config = {**LORA, "target_modules": r".*\.(q_proj|c_attn)"}
    assert vllm_compatibility(config, 16) == []  # a pattern alone cannot be checked
    (problem,) = vllm_compatibility(config, 16, weight_names=weights)
    assert "adapts c_attn" in problem


def job_with(method: dict[str, Any]) -> JobSections:
    return JobSections.model_validate(
        {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "dataset": {"train": "file:///data/train.jsonl"},
            "method": method,
        }
    )


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ({"type": "lora"}, []),
        ({"type": "qlora"}, []),
        ({"type": "lora", "lora": {"targetModules": ["q_proj", "v_proj"]}}, []),
        ({"type": "lora", "lora": {"r": 64}}, ["start vLLM with --max-lora-rank 64"]),
        # PiSSA and OLoRA publish rank 2r so that the adapter applies to the original base.
        ({"type": "lora", "lora": {"init": "pissa"}}, ["r=32 is above --max-lora-rank 16"]),
        ({"type": "lora", "lora": {"useDora": True}}, ["does not support DoRA"]),
        ({"type": "lora", "lora": {"modulesToSave": ["lm_head"]}}, ["modules_to_save"]),
        ({"type": "adalora"}, ["peft_type is ADALORA"]),
        ({"type": "ia3"}, ["peft_type is IA3"]),
        ({"type": "prompt"}, ["peft_type is PROMPT_TUNING"]),
        ({"type": "full"}, []),  # a whole model: served as a base model
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_a_jobs_adapter_is_judged_before_training(
    method: dict[str, Any], expected: list[str]
) -> None:
    problems = job_vllm_compatibility(job_with(method), SMOLLM2_CONFIG, 16)
    assert len(problems) == len(expected), problems
    for problem, fragment in zip(problems, expected, strict=True):
        assert fragment in problem


def test_all_linear_resolves_to_the_layers_vllm_adapts() -> None:
    config = adapter_config_for(job_with({"type": "lora"}), SMOLLM2_CONFIG)
    assert set(config["target_modules"]) == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert set(config["target_modules"]) <= VLLM_LORA_MODULES


# --------------------------------------------------------------------------- a real adapter


def test_a_published_adapter_passes_and_matches_the_prediction(
    make_job: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A tiny `finetune run` publishes an adapter; its adapter_config.json and tensor
    names pass the check, and agree with what adapter_config_for predicted from the spec."""
    from typer.testing import CliRunner

    from finetune_cli.app import app

    path = make_job(
        training={"maxSteps": 2, "epochs": 1},
        evaluation={"exactMatchSamples": 0},
        output={"merge": True},
    )
    result = CliRunner().invoke(app, ["run", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    # Both vLLM init containers take this real set: complete, no gate, merged/ present.
    for file, init in (("vllm-adapter.yaml", "fetch-adapter"), ("vllm-merged.yaml", "fetch-model")):
        fetched = run_init(SERVING / file, init, out, tmp_path / init)
        assert fetched.returncode == 0, fetched.stderr
    published = json.loads((out / "adapter_config.json").read_text())
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert vllm_compatibility(published, 8, weight_names=names) == []

    body = yaml.safe_load(path.read_text())
    spec = FineTuneJob.model_validate(body).spec
    model_config = json.loads((tiny_model_dir / "config.json").read_text())
    predicted = adapter_config_for(spec, model_config)
    assert published["r"] == predicted["r"]
    assert published["lora_alpha"] == predicted["lora_alpha"]
    assert module_names_from_weights(names) == set(predicted["target_modules"])
    # Too small a --max-lora-rank for that same adapter is caught.
    (problem,) = vllm_compatibility(published, 1, weight_names=names)
    assert "--max-lora-rank 8" in problem


def test_a_run_that_failed_its_gate_is_published_but_not_served(
    make_job: Any, tmp_path: Path
) -> None:
    """A real failed gate: the set is published (for inspection), the job fails, and the
    vLLM init containers refuse to serve it."""
    from typer.testing import CliRunner

    from finetune_cli.app import app

    path = make_job(
        training={"maxSteps": 2, "epochs": 1},
        evaluation={"exactMatchSamples": 0, "gate": [{"metric": "evalLoss", "max": 0.001}]},
    )
    result = CliRunner().invoke(app, ["run", str(path)], catch_exceptions=False)
    assert result.exit_code != 0
    out = tmp_path / "out"
    assert json.loads((out / "manifest.json").read_text())["gate"]["passed"] is False
    fetched = run_init(SERVING / "vllm-adapter.yaml", "fetch-adapter", out, tmp_path / "init")
    assert fetched.returncode == 1
    assert "failed its evaluation gate" in fetched.stderr
