"""spec.tracking end to end: a tiny run reports to a real MLflow tracking server (started
here on 127.0.0.1), writes TensorBoard event files and an offline W&B run into the
published set, and each is read back with the tracker's own reader."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from finetune_cli.app import app
from finetune_trainer.publish import verify_manifest
from mlflow_server import free_port
from mlflow_server import mlflow_server as serve_mlflow

runner = CliRunner()

# Every tracker, with an evaluation every 4 of 8 steps.
TRAINING = {"maxSteps": 8}
EVALUATION = {"everySteps": 4}


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (sqlite store, proxied artifacts) on 127.0.0.1."""
    with serve_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def read_wandb_records(path: Path) -> list[Any]:
    """The records of a .wandb file: W&B's LevelDB-style log (32 KiB blocks of chunks
    with a 7-byte header: crc32, length, type) holding protobuf ``Record`` messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, records, partial = 32768, 7, [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            partial = chunk
        else:
            partial += chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(partial)
            records.append(record)
    return records


def _item_name(item: Any) -> str:
    return str(item.key or "/".join(item.nested_key))


def test_run_reports_to_mlflow_tensorboard_and_wandb(
    make_job: Any, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_job(
        name="tracked",
        training=TRAINING,
        evaluation=EVALUATION,
        tracking={
            "mlflow": {"trackingUri": mlflow_server, "experiment": "colours"},
            "tensorboard": {},
            "wandb": {"mode": "offline", "project": "colours"},
        },
    )
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = job.parent / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    losses = {row["step"]: row["loss"] for row in metrics["history"]}
    eval_losses = {row["step"]: row["evalLoss"] for row in metrics["evalHistory"]}
    assert sorted(losses) == list(range(1, 9)) and sorted(eval_losses) == [4, 8]
    # The trackers' files are part of the published, verifiable set.
    assert verify_manifest(out) == []
    listed = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert any(p.startswith("tensorboard/") for p in listed)
    assert any(p.startswith("wandb/offline-run-") and p.endswith(".wandb") for p in listed)
    # wandb's banners and console capture stay off the progress stream.
    assert "wandb:" not in result.stdout

    # MLflow: one finished run with the parameters, every step, the evaluations, the
    # final scores, the published files and the artifact's location.
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("colours")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "tracked"
    assert run.data.tags["finetune.job"] == "tracked"
    assert run.data.tags["finetune.artifactUri"] == f"file://{out}"
    assert run.data.params["method.type"] == "lora"
    assert float(run.data.params["training.learningRate"]) == pytest.approx(3e-2)
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert logged == pytest.approx(losses)
    logged_eval = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "evalLoss")}
    assert logged_eval[4] == pytest.approx(eval_losses[4])
    assert run.data.metrics["trainLoss"] == pytest.approx(metrics["trainLoss"])
    attached = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "README.md"} <= attached
    assert f"{mlflow_server}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}" in (
        result.output
    )

    # TensorBoard: the event files hold every step and evaluation.
    (logdir,) = {(out / p).parent for p in listed if p.startswith("tensorboard/")}
    events = EventAccumulator(str(logdir))
    events.Reload()
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(losses)
    assert {e.step: e.value for e in events.Scalars("eval/evalLoss")} == pytest.approx(eval_losses)

    # W&B offline: the run's file holds every step and the summary (`wandb sync` uploads it).
    (wandb_file,) = out.glob("wandb/offline-run-*/run-*.wandb")
    records = read_wandb_records(wandb_file)
    steps = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row = {_item_name(i): json.loads(i.value_json) for i in record.history.item}
            if "loss" in row:
                steps[row["_step"]] = row["loss"]
    assert steps == pytest.approx(losses)
    summary = {
        _item_name(i): json.loads(i.value_json)
        for record in records
        if record.WhichOneof("record_type") == "summary"
        for i in record.summary.update
    }
    assert summary["trainLoss"] == pytest.approx(metrics["trainLoss"])
    assert summary["artifactUri"] == f"file://{out}"


def test_a_restarted_run_continues_its_mlflow_run(
    make_job: Any, mlflow_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second attempt of the same job (a pod restarted, here a rerun that resumes from
    the final checkpoint) reopens the first attempt's run instead of starting another."""
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    job = make_job(
        name="again",
        training={"maxSteps": 4},
        tracking={"mlflow": {"trackingUri": mlflow_server, "experiment": "restarts"}},
    )
    for _ in range(2):
        result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("restarts")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"


def test_an_unreachable_tracker_is_a_warning_and_its_secret_is_never_shown(
    make_job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "mlflow-auth").mkdir(parents=True)
    (secrets / "mlflow-auth" / "MLFLOW_TRACKING_USERNAME").write_text("trainer")
    (secrets / "mlflow-auth" / "MLFLOW_TRACKING_PASSWORD").write_text("pa55-w0rd-xyz")
    monkeypatch.setenv("FINETUNE_SECRETS_ROOT", str(secrets))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    job = make_job(
        name="untracked",
        training={"maxSteps": 2},
        tracking={
            "mlflow": {
                "trackingUri": f"http://127.0.0.1:{free_port()}",
                "credentialsSecret": "mlflow-auth",
            }
        },
    )
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "tracker mlflow failed to start and is off for this run" in caplog.text
    assert "pa55-w0rd-xyz" not in caplog.text + result.output
    assert verify_manifest(job.parent / "out") == []
