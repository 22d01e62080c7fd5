"""spec.tracking without a server: which trackers a run opens, what they are told, how a
failing one is switched off, and how their pages reach the job's status."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from finetune_api.config import TrainerConfig
from finetune_api.outcome import TerminationMessage
from finetune_operator import builders
from finetune_operator.observation import progress
from finetune_operator.settings import Settings
from finetune_trainer.telemetry import Telemetry
from finetune_trainer.tracking import Trackers, trackers_for
from finetune_trainer.tracking.base import RunIdentity, Tracker, params, scrub


def config(**sections: Any) -> TrainerConfig:
    body: dict[str, Any] = {
        "jobName": "tracked",
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "output": {"uri": "s3://artifacts/tracked"},
        **sections,
    }
    return TrainerConfig.model_validate(body)


def test_the_spec_names_the_trackers_and_the_environment_can_add_them() -> None:
    assert trackers_for(config(), env={}) == []
    named = trackers_for(config(tracking={"tensorboard": {}, "wandb": {"mode": "offline"}}), env={})
    assert [t.name for t in named] == ["tensorboard", "wandb"]
    # A platform that sets MLFLOW_TRACKING_URI on every trainer tracks every job.
    by_env = trackers_for(config(), env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"})
    assert [t.name for t in by_env] == ["mlflow"]


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://bot:hunter2@mlflow.example.com", "holds credentials"),
        ("ftp://mlflow.example.com", "http://, https:// or file://"),
        ("http://", "has no host"),
    ],
)
def test_tracking_server_urls_are_checked_where_the_spec_is(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        config(tracking={"mlflow": {"trackingUri": url}})
    assert "tracking.mlflow.trackingUri" in str(caught.value)


def test_the_run_key_is_stable_for_a_job_and_changes_with_what_shapes_training() -> None:
    base = RunIdentity.of(config())
    assert RunIdentity.of(config()).key == base.key
    # Where the run is tracked or how often it is evaluated does not make another run...
    assert RunIdentity.of(config(tracking={"tensorboard": {}})).key == base.key
    # ... another learning rate or output does.
    assert RunIdentity.of(config(training={"learningRate": 1e-3})).key != base.key
    assert RunIdentity.of(config(output={"uri": "s3://artifacts/other"})).key != base.key


def test_parameters_are_flat_spec_keys_without_tracking() -> None:
    flat = params(config(tracking={"tensorboard": {}}))
    assert flat["method.type"] == "lora"
    assert flat["training.learningRate"] == "0.0002"
    assert flat["model.uri"] == "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not any(k.startswith("tracking") or k == "apiVersion" for k in flat)


class Broken(Tracker):
    name = "broken"

    def secrets(self) -> list[str]:
        return ["tok-0123456789"]

    def start(self) -> None:
        raise ConnectionError("refused by http://user:pw@host with token tok-0123456789")


class Recording(Tracker):
    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []

    @property
    def url(self) -> str | None:
        return "http://tracker/run/1"

    def start(self) -> None:
        self.calls.append("start")

    def finish(self, ending: Any, metrics: Mapping[str, Any], artifact_uri: str | None) -> None:
        self.calls.append(f"finish {ending} {artifact_uri}")


def test_a_failing_tracker_is_switched_off_with_a_scrubbed_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = Recording()
    trackers = Trackers([Broken(), good])
    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        trackers.start()
    assert trackers.names == ["recording"]
    assert "tracker broken failed to start and is off for this run" in caplog.text
    assert "tok-0123456789" not in caplog.text and "user:pw" not in caplog.text
    trackers.finish("Succeeded", {}, "s3://artifacts/x")
    trackers.finish("Failed")  # the first ending is the one recorded
    assert good.calls == ["start", "finish Succeeded s3://artifacts/x"]
    assert trackers.urls() == {"recording": "http://tracker/run/1"}


def test_scrub_removes_userinfo_and_secret_values() -> None:
    text = scrub(
        "GET https://a:b@h/x and s3://K:S@bucket failed: token tok-0123456789", ["tok-0123456789"]
    )
    assert text == "GET https://***@h/x and s3://***@bucket failed: token ***"


def test_the_operator_reads_the_trainers_tracker_pages_from_its_metrics() -> None:
    telemetry = Telemetry(job_name="tracked")
    telemetry.on_trackers({"mlflow": "http://mlflow:5000/#/experiments/1/runs/ab"})
    telemetry.last_step = 1
    text = generate_latest(telemetry.registry).decode()
    text += "finetune_trainer_step 1.0\n"
    reading = progress.parse(text)
    assert reading is not None
    assert reading.trackers == {"mlflow": "http://mlflow:5000/#/experiments/1/runs/ab"}


def test_tracker_pages_ride_in_the_termination_message_and_go_before_the_message() -> None:
    message = TerminationMessage(
        outcome="Succeeded",
        message="trained",
        exit_code=0,
        trackers={"wandb": "https://wandb.ai/t/p/runs/1"},
    )
    parsed = TerminationMessage.parse(message.to_text())
    assert parsed is not None and parsed.trackers == {"wandb": "https://wandb.ai/t/p/runs/1"}
    long = message.model_copy(update={"message": "x" * 300, "trackers": {"w": "h" * 200}})
    tight = TerminationMessage.parse(long.to_text(limit=400))
    assert tight is not None and tight.trackers is None and tight.message.startswith("xxx")


def test_tracker_credentials_secrets_are_mounted_into_the_pod(tmp_path: Path) -> None:
    from finetune_api.render import render_trainer_config
    from finetune_api.resource import FineTuneJob

    job = FineTuneJob.model_validate(
        {
            "apiVersion": "finetune-operator.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "tracked", "namespace": "ml"},
            "spec": {
                "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
                "dataset": {"train": "s3://data/train.jsonl"},
                "output": {"uri": "s3://artifacts/tracked"},
                "tracking": {
                    "mlflow": {"trackingUri": "http://mlflow:5000", "credentialsSecret": "mlf"},
                    "wandb": {"credentialsSecret": "wandb-key"},
                },
            },
        }
    )
    built = builders.build_children(job, render_trainer_config(job), "uid", Settings())
    (job_manifest,) = [c for c in built if c["kind"] == "Job"]
    pod = job_manifest["spec"]["template"]["spec"]
    mounted = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert mounted == {"mlf", "wandb-key"}


def test_validate_never_echoes_a_password_written_into_a_url() -> None:
    from typer.testing import CliRunner

    from finetune_cli.app import app

    manifest = Path(__file__).parents[1] / "manifests/invalid/tracking-uri-with-credentials.yaml"
    result = CliRunner().invoke(app, ["validate", str(manifest)])
    assert result.exit_code != 0
    assert "spec.tracking.mlflow.trackingUri" in result.output
    assert "hunter2" not in result.output and "https://***@mlflow.example.com" in result.output


def test_wandb_online_without_a_key_says_where_the_key_goes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    trackers = Trackers(trackers_for(config(tracking={"wandb": {"project": "p"}}), env={}))
    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        trackers.start()
    assert not trackers
    assert "tracking.wandb.credentialsSecret" in caplog.text
    assert "mode: offline" in caplog.text
