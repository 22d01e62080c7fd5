"""Exit codes and the termination message: how every ending is classified and written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from finetune_trainer import errors
from finetune_trainer.outcome import (
    MAX_TERMINATION_BYTES,
    Outcome,
    failed,
    redact,
    succeeded,
    termination_log_path,
    termination_message,
    write_termination_message,
)


class Preempted(errors.TrainerError):
    """Stands in for the SIGTERM class: classified by its attributes alone."""

    exit_code = 143
    reason = "Preempted"


def wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    """``outer`` raised ``from inner``, as a loader wrapping a failure would."""
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "code", "reason", "outcome"),
    [
        (errors.ConfigError("training.precision: fp16 needs a GPU"), 2, "InvalidConfig", "Failed"),
        (errors.DataError("dataset.train row 3: no messages"), 3, "InvalidData", "Failed"),
        (errors.ModelError("no model directory"), 4, "ModelLoadFailed", "Failed"),
        (errors.StorageError("s3://b/k: 403 AccessDenied"), 5, "StorageError", "Failed"),
        (errors.StorageUnavailable("s3: timed out"), 7, "StorageUnavailable", "Failed"),
        (errors.OutOfMemory("batch too big"), 6, "OutOfMemory", "Failed"),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            6,
            "OutOfMemory",
            "Failed",
        ),
        (MemoryError(), 6, "OutOfMemory", "Failed"),
        (
            RuntimeError("DefaultCPUAllocator: can't allocate memory: 9 GB"),
            6,
            "OutOfMemory",
            "Failed",
        ),
        (Preempted("SIGTERM; checkpoint at step 40 saved"), 143, "Preempted", "Preempted"),
        (KeyError("boom"), 1, "Unexpected", "Failed"),
        (RuntimeError("shape mismatch"), 1, "Unexpected", "Failed"),
        (errors.TrainerError("generic"), 1, "TrainerError", "Failed"),
    ],
    ids=lambda v: v if isinstance(v, str | int) else type(v).__name__,
)
def test_every_class_of_ending_has_its_code(
    exc: BaseException, code: int, reason: str, outcome: str
) -> None:
    result = failed(exc, last_step=7)
    assert (result.exit_code, result.reason, result.outcome) == (code, reason, outcome)
    assert result.last_step == 7
    assert result.artifact_uri is None


def test_out_of_memory_is_found_inside_a_wrapping_error() -> None:
    """The model loader turns RuntimeErrors into ModelError; an OOM beneath stays an OOM."""
    exc = wrapped(
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        errors.ModelError("cannot load the model from /models/x: CUDA out of memory"),
    )
    result = failed(exc)
    assert (result.exit_code, result.reason) == (6, "OutOfMemory")
    assert "Tried to allocate 20.00 MiB" in result.message
    assert "gradientCheckpointing" in result.message  # says what to change


def test_an_oom_raised_while_handling_another_error_counts() -> None:
    try:
        try:
            raise ValueError("first")
        except ValueError:
            raise MemoryError() from None
    except MemoryError as exc:
        assert failed(exc).exit_code == 6


def test_a_trainer_error_wrapping_an_ordinary_error_keeps_its_class() -> None:
    exc = wrapped(FileNotFoundError("x.jsonl"), errors.DataError("dataset.train: unreadable"))
    result = failed(exc)
    assert (result.exit_code, result.message) == (3, "dataset.train: unreadable")


def test_a_suppressed_context_is_not_followed() -> None:
    """`raise X from None` hides the context from tracebacks, and from classification."""
    try:
        try:
            raise MemoryError()
        except MemoryError:
            raise errors.DataError("bad row") from None
    except errors.DataError as exc:
        assert failed(exc).exit_code == 3


def test_unexpected_errors_name_their_type() -> None:
    assert failed(KeyError("column")).message == "KeyError: 'column'"
    assert failed(RuntimeError()).message == "RuntimeError"


def test_success_carries_the_artifact_uri_and_step() -> None:
    result = succeeded(12, "s3://bucket/jobs/a", "trained 12 steps")
    assert json.loads(termination_message(result)) == {
        "outcome": "Succeeded",
        "reason": "Succeeded",
        "message": "trained 12 steps",
        "exitCode": 0,
        "lastStep": 12,
        "artifactUri": "s3://bucket/jobs/a",
    }


def test_message_is_cut_to_the_kubernetes_limit() -> None:
    huge = failed(errors.DataError("é" * 3000 + "x" * 5000), last_step=3)
    text = termination_message(huge)
    assert MAX_TERMINATION_BYTES - 10 < len(text.encode()) <= MAX_TERMINATION_BYTES
    data = json.loads(text)
    assert data["message"].endswith("[truncated]")
    assert data["message"].startswith("éé")
    assert (data["reason"], data["lastStep"]) == ("InvalidData", 3)
    small = failed(errors.DataError("short"))
    assert json.loads(termination_message(small))["message"] == "short"


def test_redaction_masks_credentials_but_keeps_what_helps() -> None:
    environ = {"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "HOME": "/root"}
    text = (
        "fetch https://user:hunter2pass@hub.example.com/m failed; "
        "key wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY rejected; token=hf_abcdefgh12345; "
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload; "
        "model.credentialsSecret hf-creds in /root"
    )
    masked = redact(text, environ)
    for secret in ("hunter2pass", "wJalrXUtnFEMI", "hf_abcdefgh12345", "eyJhbGciOiJIUzI1NiJ9"):
        assert secret not in masked
    assert "https://***@hub.example.com/m" in masked
    assert "token=***" in masked
    # The secret's name, paths and ordinary words are what a user needs to act.
    assert "model.credentialsSecret hf-creds in /root" in masked


def test_failure_messages_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_live_0123456789abcdef")
    result = failed(errors.ModelError("401 for hf_live_0123456789abcdef"))
    assert "hf_live" not in result.message
    assert "hf_live" not in termination_message(result)


def test_the_default_path_is_written_only_where_the_kubelet_created_it(tmp_path: Path) -> None:
    outcome = Outcome(3, "Failed", "InvalidData", "bad row")
    absent = tmp_path / "termination-log"
    assert write_termination_message(outcome, absent, explicit=False) is None
    assert not absent.exists()
    absent.touch()
    write_termination_message(outcome, absent, explicit=False)
    assert json.loads(absent.read_text())["reason"] == "InvalidData"


def test_an_explicit_path_is_written_when_its_directory_exists(tmp_path: Path) -> None:
    outcome = Outcome(0, "Succeeded", "Succeeded", "", 5, "file:///out")
    target = tmp_path / "term.json"
    assert write_termination_message(outcome, target, explicit=True) is None
    assert json.loads(target.read_text())["lastStep"] == 5
    nowhere = tmp_path / "missing-dir" / "term.json"
    assert write_termination_message(outcome, nowhere, explicit=True) is None
    assert not nowhere.parent.exists()


def test_an_unwritable_path_is_a_warning_not_a_crash(tmp_path: Path) -> None:
    directory = tmp_path / "is-a-directory"
    directory.mkdir()
    warning = write_termination_message(
        Outcome(1, "Failed", "Unexpected", "x"), directory, explicit=True
    )
    assert warning is not None and "cannot write the termination message" in warning


def test_termination_log_path_prefers_the_option_then_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FINETUNE_TERMINATION_LOG", raising=False)
    assert termination_log_path(None) == (Path("/dev/termination-log"), False)
    monkeypatch.setenv("FINETUNE_TERMINATION_LOG", str(tmp_path / "env"))
    assert termination_log_path(None) == (tmp_path / "env", True)
    assert termination_log_path(tmp_path / "opt") == (tmp_path / "opt", True)


def _files(count: int) -> list[dict[str, object]]:
    return [
        {"path": f"model-{i:05d}-of-{count:05d}.safetensors", "size": 1000 + i, "sha256": "ab" * 32}
        for i in range(count)
    ]


RUN_METRICS = {
    "trainLoss": 0.81,
    "evalLoss": 0.92,
    "evalLossBefore": 1.74,
    "exactMatch": 0.625,
    "exactMatchBefore": 0.125,
    "tokensPerSecond": 5310.2,
    "steps": 12,
    "trainSeconds": 40.1,
    "exactMatchSamples": 8,  # not a headline: left to metrics.json
    "history": [{"step": 1, "loss": 2.0}],  # lists never go in
    "accuracy": None,  # a classification score the run did not have
}


def test_success_carries_the_published_files_and_headline_metrics() -> None:
    result = succeeded(12, "s3://bucket/jobs/a", "done", files=_files(3), metrics=RUN_METRICS)
    data = json.loads(termination_message(result))
    assert data["files"] == _files(3)
    assert data["metrics"] == {
        "trainLoss": 0.81,
        "evalLoss": 0.92,
        "evalLossBefore": 1.74,
        "exactMatch": 0.625,
        "exactMatchBefore": 0.125,
        "tokensPerSecond": 5310.2,
        "steps": 12,
        "trainSeconds": 40.1,
    }
    assert "filesOmitted" not in data


def test_manifest_entries_keep_only_path_size_and_sha256() -> None:
    entry = {**_files(1)[0], "extra": "dropped"}
    assert succeeded(1, "file:///o", files=[entry]).files == (_files(1)[0],)


def test_non_finite_metrics_are_left_out_json_has_no_nan() -> None:
    result = succeeded(1, "file:///o", metrics={"evalLoss": float("nan"), "trainLoss": 0.5})
    assert result.metrics == {"trainLoss": 0.5}
    assert "NaN" not in termination_message(result)


def test_too_many_files_are_dropped_whole_and_flagged() -> None:
    result = succeeded(12, "s3://b/o", "done", files=_files(60), metrics=RUN_METRICS)
    text = termination_message(result)
    assert len(text.encode()) <= MAX_TERMINATION_BYTES
    data = json.loads(text)
    assert "files" not in data
    assert data["filesOmitted"] is True
    assert data["metrics"]["evalLoss"] == 0.92  # the metrics survive
    assert data["message"] == "done"


def test_metrics_go_after_the_files_and_before_the_message() -> None:
    metrics = {"trainLoss": 1.0, "evalLoss": 1.0}  # 34 bytes as JSON
    bare_size = len(termination_message(succeeded(3, "s3://b/o", ""))) + len(',"filesOmitted":true')
    # A summary that fits beside neither files nor metrics, but alone it does.
    summary = "s" * (MAX_TERMINATION_BYTES - bare_size - 10)
    result = succeeded(3, "s3://b/o", summary, files=_files(5), metrics=metrics)
    text = termination_message(result)
    data = json.loads(text)
    assert "files" not in data and "metrics" not in data
    assert data["filesOmitted"] is True
    assert data["message"] == summary  # still whole: dropping the rest made room
    assert len(text) == MAX_TERMINATION_BYTES - 10

    longer = succeeded(3, "s3://b/o", "s" * 5000, files=_files(5), metrics=metrics)
    text = termination_message(longer)
    assert len(text.encode()) <= MAX_TERMINATION_BYTES
    cut = json.loads(text)
    assert cut["message"].endswith("[truncated]")
    assert (cut["artifactUri"], cut["lastStep"], cut["filesOmitted"]) == ("s3://b/o", 3, True)


def test_failures_carry_no_files_or_metrics_keys() -> None:
    data = json.loads(termination_message(failed(errors.DataError("bad"))))
    assert not {"files", "metrics", "filesOmitted"} & data.keys()
