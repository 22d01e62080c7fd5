"""The redaction layer (finetune_api.redaction) and the output paths that go through it:
no credential is shown by `finetune validate`/`run`, a log line (ours or a library's), a
retry warning, the termination message, or the operator's conditions and Events."""

from __future__ import annotations

import base64
import json
import logging
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from finetune_api import redaction
from finetune_api.redaction import (
    MASK,
    MIN_SECRET_LENGTH,
    Redactor,
    environment_secrets,
    is_secret_name,
    redact_data,
    redact_record,
)
from finetune_api.uri import Role, UriError, parse_uri
from finetune_cli.app import app
from finetune_trainer import errors
from finetune_trainer.outcome import failed, succeeded, termination_message
from finetune_trainer.storage import credentials
from finetune_trainer.storage.credentials import s3_settings
from finetune_trainer.storage.s3 import S3Backend
from finetune_trainer.storage.store import Access

from .test_status import _failed_job, conditions, ftj, pod, run, terminated, trainer_message

SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
TOKEN = "FQoGZXIvYXdzEJr//////////wEaDN\nSESSIONPART2xyzABCDEFGHIJ"


@pytest.fixture
def layer() -> Redactor:
    """A registry of its own: what a test registers does not mask other tests' text."""
    return Redactor()


def shown_forms(value: str) -> dict[str, str]:
    """The encodings a message may carry ``value`` in, computed here independently of
    the module under test."""
    return {
        "as-is": value,
        "json": json.dumps(value)[1:-1],
        "url": quote(value, safe=""),
        "base64": base64.b64encode(value.encode()).decode(),
    }


# --------------------------------------------------------------------------- the layer


@pytest.mark.parametrize("encoding", ["as-is", "json", "url", "base64"])
def test_a_registered_secret_is_masked_in_every_encoding(layer: Redactor, encoding: str) -> None:
    layer.register(SECRET)
    shown = shown_forms(SECRET)[encoding]
    out = layer.redact(f"request failed: header={shown}; retrying")
    assert out == f"request failed: header={MASK}; retrying"


def test_a_secret_inside_a_longer_base64_text_is_masked_at_every_alignment(
    layer: Redactor,
) -> None:
    """A Secret manifest's data, a basic-auth header: the secret's bytes sit at any
    offset of a longer base64 text, where its own base64 never appears as such."""
    layer.register(SECRET)
    for offset in range(3):
        blob = base64.b64encode(b"u" * offset + b"user:" + SECRET.encode() + b"!").decode()
        out = layer.redact(f"Authorization: {blob}")
        assert MASK in out, offset
        # What is left of the blob around the mask is a few characters, not the secret.
        assert len(out.replace(MASK, "")) < len(f"Authorization: {blob}") - len(SECRET), offset


def test_each_line_of_a_multi_line_value_is_masked_alone(layer: Redactor) -> None:
    layer.register(TOKEN)
    first, second = TOKEN.splitlines()
    out = layer.redact(f"invalid token {first!r} (first line); then {second}")
    assert first not in out and second not in out
    # http.client shows the header's bytes: the line break as a backslash escape.
    out = layer.redact(f"Invalid header value {TOKEN.encode()!r}")
    assert out == f"Invalid header value b'{MASK}'"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("s3://AKIAEXAMPLE:SECRETVALUE@bucket/x", "s3://***@bucket/x"),
        # An AWS secret key may hold '/': everything up to the last '@' is the userinfo.
        ("s3://AKIAEXAMPLE:abc/def+ghi@bucket/x y", "s3://***@bucket/x y"),
        (
            'URL: "http://minio:hunter2@10.0.0.1:9000/b?list-type=2"',
            'URL: "http://***@10.0.0.1:9000/b?list-type=2"',
        ),
        ("https://hf_user@huggingface.co/org/m", "https://***@huggingface.co/org/m"),
        (
            "GET /k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=0a1b2c3d&X-Amz-Date=1",
            "GET /k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=***&X-Amz-Date=1",
        ),
        ('{"password": "pw1", "api_key":"k2"}', '{"password": "***", "api_key":"***"}'),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.x", "Authorization: Bearer ***"),
        ("key AKIAIOSFODNN7EXAMPLE rejected", "key *** rejected"),
    ],
)
def test_credential_shapes_are_masked_without_being_registered(
    layer: Redactor, text: str, expected: str
) -> None:
    assert layer.redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "https://huggingface.co/org/model and http://mlflow:5000/#/experiments/1",
        "file://./runs@2024/x.jsonl is missing; see user@example.com",
        "tokenizer has no pad token; using eos_token=</s> (pad_token: </s>)",
        "max_new_tokens=64 tokens/s=5310.2 loss=0.91",
        "model.credentialsSecret hf-creds in /var/run/secrets/finetune",
    ],
)
def test_ordinary_text_is_left_alone(layer: Redactor, text: str) -> None:
    layer.register(SECRET, TOKEN)
    assert layer.redact(text) == text


def test_values_shorter_than_the_minimum_are_not_registered(layer: Redactor) -> None:
    """A 4-character password would mask every "test" and "1234" of every message."""
    layer.register("test", "1234", "x" * (MIN_SECRET_LENGTH - 1), None, "")
    text = "test 1234 run: loss 0.1234 (xxxxxxx)"
    assert layer.redact(text) == text
    # ... while the same short password written into a URL is still masked, by shape.
    assert layer.redact("http://admin:test@minio:9000") == "http://***@minio:9000"


def test_overlapping_secrets_leave_no_part_of_either(layer: Redactor) -> None:
    first, second = "abcdefgh12345", "12345zyxwvuts"
    layer.register(first, second)
    out = layer.redact(f"[abcdefgh12345zyxwvuts] [{second}{first}]")
    assert out == f"[{MASK}] [{MASK}]"


def test_a_mask_never_joins_the_rest_into_a_secret(layer: Redactor) -> None:
    """Masking one occurrence may bring two halves of another together: masked again."""
    secret = "xy***zwvu"
    layer.register(secret)
    assert layer.redact(f"xy{secret}zwvu") == MASK


def test_explicit_values_are_masked_without_being_registered(layer: Redactor) -> None:
    assert layer.redact(f"refused {SECRET}", [SECRET, None]) == f"refused {MASK}"
    assert layer.redact(f"refused {SECRET}") == f"refused {SECRET}"


def test_redact_data_reaches_every_string_of_a_json_value(layer: Redactor) -> None:
    redaction.register(SECRET)
    try:
        data = {"a": [SECRET, 1, {"b": f"s3://K:{SECRET}@bucket/x"}], SECRET: None, "n": 2.5}
        assert redact_data(data) == {
            "a": [MASK, 1, {"b": "s3://***@bucket/x"}],
            MASK: None,
            "n": 2.5,
        }
    finally:
        redaction.REDACTOR.clear()


def test_what_the_environment_holds_secret() -> None:
    environ = {
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "HF_TOKEN": "hf_abcdefghijklmnopqrstuvwxyz0123456",
        "AWS_ENDPOINT_URL": "http://minio:minio-password@minio:9000",
        "FINETUNE_SECRETS_ROOT": "/var/run/secrets/finetune",
        "AWS_SHARED_CREDENTIALS_FILE": "/root/.aws/credentials",
        "HOME": "/root",
    }
    found = environment_secrets(environ)
    assert SECRET in found and "hf_abcdefghijklmnopqrstuvwxyz0123456" in found
    assert "minio-password" in found
    assert "/var/run/secrets/finetune" not in found  # a place, named like a secret
    assert "/root/.aws/credentials" not in found
    assert not is_secret_name("FINETUNE_SECRETS_ROOT") and is_secret_name("WANDB_API_KEY")
    assert not is_secret_name("GIT_AUTHOR_EMAIL") and is_secret_name("MLFLOW_TRACKING_AUTH")


@settings(max_examples=200, deadline=1000)
@given(
    secret=st.text(min_size=MIN_SECRET_LENGTH, max_size=40),
    encoding=st.sampled_from(["as-is", "json", "url", "base64"]),
    before=st.text(max_size=20),
    after=st.text(max_size=20),
)
def test_a_registered_secret_never_survives_in_any_encoding(
    secret: str, encoding: str, before: str, after: str
) -> None:
    """Any text (line breaks, quotes, '*', non-ASCII) registered, then embedded in any
    encoding between any other text: the output holds it in none of the encodings."""
    layer = Redactor()
    layer.register(secret)
    out = layer.redact(before + shown_forms(secret)[encoding] + after)
    for name, form in shown_forms(secret).items():
        assert form not in out, (name, out)


# --------------------------------------------------------------------------- logging


def test_a_library_log_record_is_redacted_before_any_handler_sees_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """boto's, tenacity's or kopf's records, to whatever handler (here pytest's)."""
    previous = logging.getLogRecordFactory()
    redaction.register(SECRET)
    try:
        redaction._factory_installed = False
        redaction.install_logging()
        redaction.install_logging()  # once is enough: not wrapped twice
        with caplog.at_level(logging.WARNING, logger="botocore.endpoint"):
            logging.getLogger("botocore.endpoint").warning(
                "retrying %s with key %r", "http://u:pw-123456@minio:9000/b", SECRET
            )
            try:
                raise ValueError(f"refused {SECRET}")
            except ValueError:
                logging.getLogger("tenacity").exception("gave up")
    finally:
        logging.setLogRecordFactory(previous)
        redaction._factory_installed = False
        redaction.REDACTOR.clear()
    assert "retrying http://***@minio:9000/b with key '***'" in caplog.text
    assert "pw-123456" not in caplog.text and SECRET not in caplog.text
    assert "ValueError: refused ***" in caplog.text


def test_the_handler_filter_redacts_a_record_made_elsewhere() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "to %s", ("s3://K:S@b/x",), None)
    redact_record(record)
    assert record.getMessage() == "to s3://***@b/x"


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    ("uri", "role"),
    [
        ("s3://AKIAEXAMPLE:SECRETVALUE@bucket/x.jsonl", Role.DATASET),
        ("s3://AKIAEXAMPLE:abc/def@bucket/out", Role.OUTPUT),
        ("s3://AKIAEXAMPLE%3ASECRETVALUE%40bucket/x.jsonl", Role.DATASET),
        ("hf://user:hf_SECRETVALUE@org/model", Role.MODEL),
        ("pvc://user:SECRETVALUE@claim/x", Role.OUTPUT),
        ("file://user:SECRETVALUE@host/x.jsonl", Role.DATASET),
        ("AKIAEXAMPLE:SECRETVALUE@bucket/x", Role.OUTPUT),
    ],
)
def test_a_uri_with_credentials_is_refused_without_echoing_them(uri: str, role: Role) -> None:
    with pytest.raises(UriError) as caught:
        parse_uri(uri, role)
    message = str(caught.value)
    assert "SECRETVALUE" not in message and "AKIAEXAMPLE" not in message
    assert "abc/def" not in message


def test_a_file_path_may_hold_an_at_sign() -> None:
    assert parse_uri("file://./runs@2024/x.jsonl", Role.DATASET).location == "./runs@2024/x.jsonl"


JOB_WITH_CREDENTIALS = """\
apiVersion: finetune-operator.io/v1alpha1
kind: FineTuneJob
metadata:
  name: leaky
spec:
  model: {uri: hf://org/model}
  dataset: {train: "s3://AKIAEXAMPLE:SECRETVALUE@bucket/x.jsonl"}
  output: {uri: "s3://AKIAEXAMPLE:SECRETVALUE@bucket/out"}
"""


@pytest.mark.parametrize("command", ["validate", "run"])
def test_the_cli_refuses_credentials_in_a_uri_and_prints_neither_part(
    tmp_path: Path, command: str
) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(JOB_WITH_CREDENTIALS)
    result = CliRunner().invoke(app, [command, str(path)])
    assert result.exit_code == 2, result.output
    assert "AKIAEXAMPLE" not in result.output and "SECRETVALUE" not in result.output
    assert "spec.dataset.train: holds credentials" in result.output
    assert "spec.output.uri: holds credentials" in result.output
    assert "credentialsSecret" in result.output


# --------------------------------------------------------------------------- the trainer


def mount(root: Path, name: str, values: dict[str, str]) -> None:
    (root / name).mkdir(parents=True)
    for key, value in values.items():
        (root / name / key).write_text(value + "\n")


@pytest.fixture
def secrets_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv(credentials.SECRETS_ROOT_ENV, str(tmp_path))
    for name in ("AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv(credentials.CONNECT_TIMEOUT_ENV, "1")
    yield tmp_path
    redaction.REDACTOR.clear()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_retry_warning_never_shows_the_endpoint_password(
    secrets_root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mount(
        secrets_root,
        "minio",
        {
            "AWS_ACCESS_KEY_ID": "minio-user-0001",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_ENDPOINT_URL": f"http://minio:endpoint-pw-42@127.0.0.1:{closed_port()}",
            "AWS_S3_ADDRESSING_STYLE": "path",
            "AWS_REGION": "us-east-1",
        },
    )
    s3 = S3Backend().client("bucket", Access("minio", deadline_seconds=1))
    with (
        caplog.at_level(logging.WARNING, logger="finetune_trainer.storage.s3"),
        pytest.raises(errors.StorageUnavailable) as caught,
    ):
        s3.call("list", "", lambda: s3.objects(""))
    retries = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()]
    assert retries, caplog.text
    assert all("http://***@127.0.0.1" in line for line in retries), retries
    for text in (caplog.text, str(caught.value), termination_message(failed(caught.value))):
        assert "endpoint-pw-42" not in text and SECRET not in text


@pytest.mark.parametrize("source", ["secret", "environment"])
def test_a_session_token_with_a_line_break_is_refused_at_once_and_not_shown(
    secrets_root: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """No request can carry it; botocore would report every attempt as a transient
    connection error and retry it until the deadline, printing it each time."""
    keys = {"AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE", "AWS_SECRET_ACCESS_KEY": SECRET}
    if source == "secret":
        mount(secrets_root, "s3-creds", {**keys, "AWS_SESSION_TOKEN": TOKEN})
        name: str | None = "s3-creds"
    else:
        for key, value in {**keys, "AWS_SESSION_TOKEN": TOKEN}.items():
            monkeypatch.setenv(key, value)
        name = None
    started = time.monotonic()
    with pytest.raises(errors.StorageError) as caught:
        S3Backend().client("bucket", Access(name, deadline_seconds=300))
    assert time.monotonic() - started < 5  # no retries until the 300 s deadline
    ending = failed(caught.value)
    assert ending.exit_code == 5  # StorageError: fix the credentials; never retried
    where = {
        "secret": "key AWS_SESSION_TOKEN of credentials Secret 's3-creds'",
        "environment": "environment variable AWS_SESSION_TOKEN",
    }[source]
    assert ending.message.startswith(f"the {where} holds a line break"), ending.message
    text = termination_message(ending) + ending.message
    for line in TOKEN.splitlines():
        assert line not in text


def test_a_value_read_from_a_secret_is_masked_wherever_it_is_quoted_later(
    secrets_root: Path,
) -> None:
    mount(
        secrets_root,
        "s3-creds",
        {"AWS_ACCESS_KEY_ID": "AKIA1-0123456", "AWS_SECRET_ACCESS_KEY": SECRET},
    )
    s3_settings("s3-creds")
    assert redaction.redact(f"boto said: {SECRET!r}") == f"boto said: '{MASK}'"
    assert redaction.redact(quote(SECRET, safe="")) == MASK


def test_the_termination_message_never_holds_a_registered_secret(secrets_root: Path) -> None:
    redaction.register(SECRET)
    # Long enough to be cut: redacted before the cut, so no half secret is left.
    message = "x" * 4050 + f" key {SECRET} refused"
    text = termination_message(failed(errors.StorageError(message)))
    assert len(text.encode()) <= 4096
    for form in shown_forms(SECRET).values():
        assert form not in text
    assert SECRET[:20] not in text
    ok = succeeded(
        3,
        "s3://bucket/out",
        f"published with {SECRET}",
        trackers={"mlflow": "http://user:tracker-pw-1@mlflow:5000/#/runs/1"},
    )
    data = json.loads(termination_message(ok))
    assert SECRET not in data["message"]
    assert data["trackers"]["mlflow"] == "http://***@mlflow:5000/#/runs/1"


# --------------------------------------------------------------------------- the operator


def test_the_operators_condition_and_event_do_not_repeat_a_secret() -> None:
    """The trainer's termination message is input: a trainer of another version, or a
    message it quoted from a library, may carry a credential."""
    message = trainer_message(
        reason="StorageError",
        exitCode=5,
        message=f"cannot read http://minio:{SECRET}@minio:9000/b: token={SECRET}",
        artifactUri="s3://K:S3CRET-VALUE@bucket/out",
    )
    update = run(ftj(), _failed_job(), [pod(phase="Failed", ended=terminated(5, message))])
    failed_condition = conditions(update)["Failed"]
    assert "http://***@minio:9000/b" in failed_condition["message"]
    assert update.event is not None
    shown = json.dumps(update.patch) + update.event.message
    assert SECRET not in shown and "S3CRET-VALUE" not in shown
    assert "cannot read http://***@minio:9000/b" in update.event.message


def test_a_secret_at_the_cut_of_a_long_message_is_masked_before_it_is_cut() -> None:
    long = "x" * 32700 + f" http://u:{SECRET}@h/x"
    message = trainer_message(reason="StorageError", exitCode=5, message=long)
    update = run(ftj(), _failed_job(), [pod(phase="Failed", ended=terminated(5, message))])
    assert update.event is not None
    for text in (conditions(update)["Failed"]["message"], update.event.message):
        assert SECRET[:8] not in text


def test_the_operator_refuses_credentials_in_a_uri_without_showing_them() -> None:
    """What `finetune validate` refuses, the operator refuses, in the same words: the
    InvalidSpec condition and Event name the field, not the key or the secret."""
    import yaml

    from finetune_operator.reconcile import admit
    from finetune_operator.status import invalid_spec

    body = yaml.safe_load(JOB_WITH_CREDENTIALS)
    body["metadata"].update(namespace="ml", uid="ftj-uid", generation=1)
    job, problem = admit(body)
    assert job is None
    update = invalid_spec(body, problem, datetime.now(UTC))
    assert update.event is not None
    shown = json.dumps(update.patch) + update.event.message
    assert "AKIAEXAMPLE" not in shown and "SECRETVALUE" not in shown
    assert "spec.output.uri: holds credentials" in conditions(update)["Validated"]["message"]
