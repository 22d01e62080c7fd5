"""Every example manifest runs through `finetune run`.

The examples point at the real models in ./models; here each is rewritten to use the
tiny Llama (a language model, or with a score head for classification) and run for two
steps, so every method, task and data option an example shows is exercised end to end
on every test run. The slow tests and `make demo` run real models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from finetune_cli.app import app
from tiny_vit import build_tiny_vit

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(
    p
    for p in (REPO / "examples").rglob("*.yaml")
    if any(
        isinstance(d, dict) and d.get("kind") == "FineTuneJob"
        for d in yaml.safe_load_all(p.read_text())
    )
)


def reads_local_data(example: Path) -> bool:
    """Examples with data in object storage need a bucket: test_s3_run.py runs those."""
    dataset = yaml.safe_load(example.read_text())["spec"]["dataset"]
    uris = [dataset.get("train"), dataset.get("validation")]
    uris += [m["train"] for m in dataset.get("mixture") or []]
    return all(uri is None or uri.startswith("file://") for uri in uris)


def test_examples_cover_every_method_and_task() -> None:
    from finetune_api.config.job import JobSections
    from finetune_api.config.methods import MethodSpec

    specs = [yaml.safe_load(p.read_text())["spec"] for p in EXAMPLES]
    methods = {s.get("method", {}).get("type", "lora") for s in specs}
    tasks = {s.get("task", "causal-lm") for s in specs}
    method_types = MethodSpec.model_fields["type"].annotation
    assert methods == set(method_types.__args__)  # type: ignore[union-attr]
    assert tasks == set(JobSections.model_fields["task"].annotation.__args__)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "example",
    [p for p in EXAMPLES if reads_local_data(p)],
    ids=lambda p: str(p.relative_to(REPO / "examples")),
)
def test_example_runs(
    example: Path, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(REPO)  # the examples' file:// paths are relative to the repository
    manifest = yaml.safe_load(example.read_text())
    spec = manifest["spec"]
    spec["model"]["uri"] = f"file://{tiny_model_dir}"
    if spec.get("task") == "image-classification":  # a vision backbone, not the tiny Llama
        spec["model"]["uri"] = f"file://{build_tiny_vit(tmp_path / 'tiny-vit')}"
    spec.setdefault("evaluation", {}).update({"exactMatchSamples": 2, "maxNewTokens": 4})
    spec["evaluation"].pop("everySteps", None)
    spec["evaluation"].pop("gate", None)  # two steps of a tiny model pass no quality bar
    spec.setdefault("training", {}).pop("earlyStopping", None)
    spec["training"].pop("distillation", None)
    lora = spec.get("method", {}).get("lora") or {}
    if spec.get("task") == "sequence-classification" and lora.get("targetModules"):
        lora["targetModules"] = "all-linear"  # the example names BERT's modules
    steps = 2
    method = spec.get("method", {})
    if method.get("type") == "freeze":  # the tiny model has 2 blocks
        method["freeze"]["trainableLayers"] = min(method["freeze"]["trainableLayers"], 2)
    if method.get("type") == "progressive":  # the tiny model has 2 blocks
        for key in ("startBlocks", "maxBlocks"):
            method["progressive"][key] = min(method["progressive"].get(key, 0), 2)
    if method.get("type") == "adapter":  # AdapterDrop must leave one of the 2 blocks
        method["adapter"]["dropLayers"] = min(method["adapter"].get("dropLayers", 0), 1)
    if method.get("type") == "adalora":  # leave steps for the rank reallocation
        options = method["adalora"]
        steps = options.get("tinit", 0) + options.get("tfinal", 0) + 2
    job = tmp_path / example.name
    job.write_text(yaml.safe_dump(manifest))

    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["run", str(job), "--output", f"file://{out}", "--max-steps", str(steps)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == steps
    assert (out / "manifest.json").is_file()
