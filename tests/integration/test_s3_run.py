"""`finetune run` with s3:// (moto's server) beyond what the store contract runs for every
store (tests/integration/test_store_contract.py: a run reading and publishing through
the store): examples/s3.yaml with its mounted Secret, a missing bucket's exit code and
message, and a run resumed from its checkpoint in the bucket.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from finetune_cli.app import app
from finetune_trainer.storage.store import MANIFEST
from s3_server import TEST_KEY_ID, TEST_SECRET, S3Env

REPO = Path(__file__).resolve().parents[2]


def upload(s3_env: S3Env, path: Path, key: str) -> None:
    s3_env.client.upload_file(str(path), s3_env.bucket, key)


def test_the_s3_example_runs_with_its_mounted_secret(
    s3_env: S3Env, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/s3.yaml as a user runs it: its buckets, its Secret (mounted as the operator
    would), only the model swapped for the tiny one and the run cut to one step."""
    example = yaml.safe_load((REPO / "examples" / "s3.yaml").read_text())
    spec = example["spec"]
    secret = spec["output"]["credentialsSecret"]
    assert spec["dataset"]["credentialsSecret"] == secret
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)  # only the Secret can make this work
    mounted = tmp_path / "secrets" / secret
    mounted.mkdir(parents=True)
    for key, value in {
        "AWS_ACCESS_KEY_ID": TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
        "AWS_ENDPOINT_URL": s3_env.server.endpoint,
        "AWS_S3_ADDRESSING_STYLE": "path",
    }.items():
        (mounted / key).write_text(value)
    data_bucket, _, _ = spec["dataset"]["train"].removeprefix("s3://").partition("/")
    out_bucket, _, out_prefix = spec["output"]["uri"].removeprefix("s3://").partition("/")
    for bucket in (data_bucket, out_bucket):
        with contextlib.suppress(s3_env.client.exceptions.BucketAlreadyOwnedByYou):
            s3_env.client.create_bucket(Bucket=bucket)
    for uri in (spec["dataset"]["train"], spec["dataset"]["validation"]):
        key = uri.removeprefix(f"s3://{data_bucket}/")
        s3_env.client.upload_file(str(REPO / "examples" / key), data_bucket, key)
    spec["model"]["uri"] = f"file://{tiny_model_dir}"
    spec["training"]["maxSeqLength"] = 64
    spec["evaluation"] = {"exactMatchSamples": 2, "maxNewTokens": 4}
    job = tmp_path / "s3.yaml"
    job.write_text(yaml.safe_dump(example))

    result = CliRunner().invoke(app, ["run", str(job), "--max-steps", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = s3_env.client.get_object(Bucket=out_bucket, Key=f"{out_prefix}/{MANIFEST}")
    assert json.loads(manifest["Body"].read())["jobName"] == "quickstart-s3"
    assert TEST_SECRET not in result.output


def test_a_missing_bucket_exits_with_the_storage_code_at_once(s3_env: S3Env, make_job: Any) -> None:
    job = make_job(model={"uri": "s3://no-such-models-bucket/smol"})
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 5, result.output
    assert "s3://no-such-models-bucket/smol/: cannot list: NoSuchBucket" in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 10, "a permanent error must not wait for the deadline"


def test_a_run_resumes_from_its_checkpoint_in_s3(
    s3_env: S3Env, make_job: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Checkpoints live beside the artifacts in the bucket; a rerun whose newest complete
    checkpoint is step 8 (step 12's never completed: its manifest is gone) continues from
    step 8 and ends with the weights the uninterrupted run published."""
    from safetensors.torch import load_file

    prefix = "adapters/resumed"
    job = make_job(
        dataset={"deduplicate": False},  # 48 rows in batches of 8: epochs end at steps 6, 12
        method={"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1}},
        output={"uri": s3_env.uri(prefix), "checkpointEvery": 4, "keepCheckpoints": 3},
    )
    run = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert run.exit_code == 0, run.output
    first = tmp_path / "first.safetensors"
    s3_env.client.download_file(s3_env.bucket, f"{prefix}/adapter_model.safetensors", str(first))
    listed = s3_env.objects(f"{prefix}/checkpoints/step-")  # not data-cache/, the tokens
    steps = {k.split("/")[3] for k in listed}
    # Every 4 steps and at each epoch's end (4, 6, 8, 12); keepCheckpoints: 3.
    assert steps == {"step-6", "step-8", "step-12"}

    # The pod died while step 12's checkpoint was being written, and before publishing.
    s3_env.client.delete_object(
        Bucket=s3_env.bucket, Key=f"{prefix}/checkpoints/step-12/{MANIFEST}"
    )
    s3_env.client.delete_object(Bucket=s3_env.bucket, Key=f"{prefix}/{MANIFEST}")

    with caplog.at_level("INFO", logger="finetune.trainer"):
        again = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert f"resuming from {s3_env.uri(prefix)}/checkpoints/step-8" in caplog.text
    second = tmp_path / "second.safetensors"
    s3_env.client.download_file(s3_env.bucket, f"{prefix}/adapter_model.safetensors", str(second))
    a, b = load_file(first), load_file(second)
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max() < 1e-5, name
    metrics = json.loads(
        s3_env.client.get_object(Bucket=s3_env.bucket, Key=f"{prefix}/metrics.json")["Body"].read()
    )
    assert metrics["steps"] == 12 and len(metrics["history"]) == 12
