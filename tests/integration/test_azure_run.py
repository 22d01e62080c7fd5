"""`finetune run` with the model, the dataset and the output all on az:// (Azurite).

The run reaches the account only through a mounted credentials Secret holding a
connection string (as the operator mounts ``credentialsSecret``), downloads the model
prefix and the data into the cache, trains the tiny Llama a few steps, checkpoints and
publishes into the container, manifest last; `finetune verify az://…` accepts the set,
and a rerun whose last checkpoint was cut short resumes from the one before.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from azurite_server import ACCOUNT_KEY, AzureEnv
from conftest import colour_rows, write_jsonl
from finetune_api.config import ColumnMapping
from finetune_cli.app import app
from finetune_trainer.data.stream import StreamSettings, open_stream
from finetune_trainer.storage.backends import Access
from finetune_trainer.storage.store import MANIFEST

SECRET = "azure-storage"
REPO = Path(__file__).resolve().parents[2]


def mount_secret(azure_env: AzureEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The connection string in a mounted Secret, and nowhere in the environment."""
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    mounted = tmp_path / "secrets" / SECRET
    mounted.mkdir(parents=True)
    (mounted / "AZURE_STORAGE_CONNECTION_STRING").write_text(
        azure_env.server.connection_string + "\n"
    )


def test_finetune_run_reads_and_publishes_through_azure(
    azure_env: AzureEnv,
    make_job: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    mount_secret(azure_env, tmp_path, monkeypatch)
    for path in sorted(tiny_model_dir.rglob("*")):
        if path.is_file():
            azure_env.upload(path, f"models/tiny/{path.relative_to(tiny_model_dir).as_posix()}")
    job = make_job(
        model={"uri": azure_env.uri("models/tiny"), "credentialsSecret": SECRET},
        dataset={"credentialsSecret": SECRET},
        output={
            "uri": azure_env.uri("adapters/tiny"),
            "retryDeadlineSeconds": 30,
            "credentialsSecret": SECRET,
        },
    )
    azure_env.upload(tmp_path / "train.jsonl", "sets/train.jsonl")
    azure_env.upload(tmp_path / "validation.jsonl", "sets/validation.jsonl")
    job.write_text(
        job.read_text()
        .replace(f"file://{tmp_path / 'train.jsonl'}", azure_env.uri("sets/train.jsonl"))
        .replace(f"file://{tmp_path / 'validation.jsonl'}", azure_env.uri("sets/validation.jsonl"))
    )
    assert "file://" not in job.read_text()

    result = CliRunner().invoke(app, ["run", str(job), "--max-steps", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    keys = azure_env.objects("adapters/tiny/")
    names = {k.removeprefix("adapters/tiny/") for k in keys}
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.json", MANIFEST} <= names
    manifest = json.loads(azure_env.read(f"adapters/tiny/{MANIFEST}"))
    assert manifest["baseModel"] == azure_env.uri("models/tiny")
    assert manifest["spec"]["dataset"]["train"] == azure_env.uri("sets/train.jsonl")
    listed = {f["path"] for f in manifest["files"]}
    assert listed == {n for n in names if not n.startswith("checkpoints/")} - {MANIFEST}
    assert ACCOUNT_KEY not in json.dumps(manifest) and ACCOUNT_KEY not in result.output

    # finetune verify on a workstation: the credentials from the environment.
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azure_env.server.connection_string)
    verified = CliRunner().invoke(app, ["verify", azure_env.uri("adapters/tiny")])
    assert verified.exit_code == 0, verified.output
    downloads = tmp_path / "cache" / "downloads" / "az"
    assert len(list(downloads.glob("*/*/config.json"))) == 1
    assert len(list(downloads.glob("*/*/train.jsonl"))) == 1


def test_a_missing_container_exits_with_the_storage_code_at_once(
    azure_env: AzureEnv, make_job: Any
) -> None:
    job = make_job(model={"uri": "az://no-such-models/smol"})
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 5, result.output
    assert "az://no-such-models/smol/: cannot list: ContainerNotFound" in result.output
    assert "Traceback" not in result.output


def test_a_run_resumes_from_its_checkpoint_in_azure(
    azure_env: AzureEnv, make_job: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rerun whose newest complete checkpoint is step 4 (step 6's manifest is gone, as
    when the pod died writing it) continues from step 4 and publishes the weights the
    uninterrupted run published."""
    from safetensors.torch import load_file

    prefix = "adapters/resumed"
    job = make_job(
        dataset={"deduplicate": False},  # 48 rows in batches of 8: an epoch ends at step 6
        method={"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1}},
        output={"uri": azure_env.uri(prefix), "checkpointEvery": 4, "keepCheckpoints": 3},
    )
    run = CliRunner().invoke(app, ["run", str(job), "--max-steps", "6"], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    first = tmp_path / "first.safetensors"
    first.write_bytes(azure_env.read(f"{prefix}/adapter_model.safetensors"))
    under = {k.split("/")[3] for k in azure_env.objects(f"{prefix}/checkpoints/")}
    assert {n for n in under if n.startswith("step-")} == {"step-4", "step-6"}

    azure_env.client.delete_blob(f"{prefix}/checkpoints/step-6/{MANIFEST}")
    azure_env.client.delete_blob(f"{prefix}/{MANIFEST}")

    with caplog.at_level("INFO", logger="finetune.trainer"):
        again = CliRunner().invoke(
            app, ["run", str(job), "--max-steps", "6"], catch_exceptions=False
        )
    assert again.exit_code == 0, again.output
    assert f"resuming from {azure_env.uri(prefix)}/checkpoints/step-4" in caplog.text
    second = tmp_path / "second.safetensors"
    second.write_bytes(azure_env.read(f"{prefix}/adapter_model.safetensors"))
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name


def test_streaming_from_azure_reads_the_blob_as_it_arrives(
    azure_env: AzureEnv, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    """dataset.streaming over az://: the blob is read through adlfs (open_stream), no copy
    lands in the download cache, and the examples are the local file's, across the end
    of the first pass."""
    local = write_jsonl(tmp_path / "train.jsonl", colour_rows(300))
    azure_env.upload(local, "data/train.jsonl")
    settings = StreamSettings("messages", ColumnMapping(), 64)
    remote = open_stream(
        azure_env.uri("data/train.jsonl"), Access(), tiny_tokenizer, settings, seed=0, buffer_size=1
    )
    from_file = open_stream(
        f"file://{local}", Access(), tiny_tokenizer, settings, seed=0, buffer_size=1
    )
    for _ in range(320):
        assert next(remote).input_ids == next(from_file).input_ids
    cache = Path(os.environ["FINETUNE_CACHE_DIR"])
    assert not [p for p in cache.rglob("*") if p.is_file()], "the blob was downloaded"


def test_the_azure_example_runs_with_its_mounted_secret(
    azure_env: AzureEnv, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/azure.yaml as a user runs it: its containers, its Secret (mounted as the
    operator would), only the model swapped for the tiny one and the run cut to one step."""
    example = yaml.safe_load((REPO / "examples" / "azure.yaml").read_text())
    spec = example["spec"]
    assert spec["dataset"]["credentialsSecret"] == spec["output"]["credentialsSecret"] == SECRET
    mount_secret(azure_env, tmp_path, monkeypatch)
    service = azure_env.server.service()
    data, _, _ = spec["dataset"]["train"].removeprefix("az://").partition("/")
    out, _, out_prefix = spec["output"]["uri"].removeprefix("az://").partition("/")
    for container in (data, out):
        if not service.get_container_client(container).exists():
            service.create_container(container)
    for uri in (spec["dataset"]["train"], spec["dataset"]["validation"]):
        key = uri.removeprefix(f"az://{data}/")
        with (REPO / "examples" / key).open("rb") as rows:
            service.get_container_client(data).upload_blob(key, rows, overwrite=True)
    spec["model"]["uri"] = f"file://{tiny_model_dir}"
    spec["training"]["maxSeqLength"] = 64
    spec["evaluation"] = {"exactMatchSamples": 2, "maxNewTokens": 4}
    job = tmp_path / "azure.yaml"
    job.write_text(yaml.safe_dump(example))

    result = CliRunner().invoke(app, ["run", str(job), "--max-steps", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = service.get_container_client(out).download_blob(f"{out_prefix}/{MANIFEST}")
    assert json.loads(manifest.readall())["jobName"] == "quickstart-azure"
    assert ACCOUNT_KEY not in result.output
