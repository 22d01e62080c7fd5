"""s3:// policy without a server: which errors are retried, how long, what a message
says, what a download is checked against, where credentials come from, and the cache's
all-or-nothing entries. The HTTP side is tested against moto in tests/integration."""

from __future__ import annotations

import base64
import hashlib
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from finetune_trainer.errors import StorageError, StorageUnavailable
from finetune_trainer.storage import cache, credentials
from finetune_trainer.storage.credentials import S3Settings, redact, s3_settings
from finetune_trainer.storage.s3 import S3Client, describe, is_transient, verify_download


def client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


def wrapped_upload_error(inner: Exception) -> Exception:
    """What boto3's upload_file raises: S3UploadFailedError with the ClientError as context."""
    try:
        raise inner
    except ClientError:
        try:
            raise S3UploadFailedError("Failed to upload a to b: ...")
        except S3UploadFailedError as outer:
            return outer


@pytest.mark.parametrize(
    "exc",
    [
        client_error("SlowDown", 503),
        client_error("ServiceUnavailable", 503),
        client_error("InternalError", 500),
        client_error("TooManyRequests", 429),
        client_error("SomethingNew", 502),
        client_error("RequestTimeout", 400),
        EndpointConnectionError(endpoint_url="http://x"),
        ReadTimeoutError(endpoint_url="http://x"),
        ConnectionResetError(),
        wrapped_upload_error(client_error("SlowDown", 503)),
        RetriesExceededError(EndpointConnectionError(endpoint_url="http://x")),
    ],
    ids=lambda e: describe(e),
)
def test_transient_errors_are_retried(exc: Exception) -> None:
    assert is_transient(exc)


@pytest.mark.parametrize(
    "exc",
    [
        client_error("NoSuchBucket", 404),
        client_error("NoSuchKey", 404),
        client_error("404", 404),
        client_error("AccessDenied", 403),
        client_error("InvalidAccessKeyId", 403),
        client_error("SignatureDoesNotMatch", 403),
        client_error("AuthorizationHeaderMalformed", 400),
        wrapped_upload_error(client_error("AccessDenied", 403)),
        NoCredentialsError(),
        FileNotFoundError(2, "No such file"),
    ],
    ids=lambda e: describe(e),
)
def test_permanent_errors_are_not(exc: Exception) -> None:
    assert not is_transient(exc)


def s3client(deadline: float) -> S3Client:
    return S3Client("bucket", S3Settings(endpoint_url="http://127.0.0.1:9"), deadline)


def test_transient_errors_are_retried_until_they_stop() -> None:
    attempts: list[float] = []

    def flaky() -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise client_error("SlowDown", 503)
        return "done"

    assert s3client(30).call("upload", "k", flaky) == "done"
    assert len(attempts) == 3


def test_a_permanent_error_is_raised_at_once_with_uri_and_cause() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise wrapped_upload_error(client_error("NoSuchBucket", 404))

    with pytest.raises(StorageError) as info:
        s3client(30).call("upload", "adapters/x", denied)
    assert calls == [1]
    assert str(info.value).startswith("s3://bucket/adapters/x: cannot upload: NoSuchBucket")
    assert "check the bucket name" in str(info.value)


def test_retrying_stops_at_the_deadline() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/k")

    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"retry deadline 1\.5s"):
        s3client(1.5).call("upload", "k", down)
    # Ends near the deadline (the slack is for a loaded CI machine), not after many more.
    assert time.monotonic() - started < 1.5 + 1.5
    assert len(calls) >= 2


def test_a_zero_deadline_tries_once() -> None:
    calls = []

    def down() -> None:
        calls.append(1)
        raise client_error("SlowDown", 503)

    with pytest.raises(StorageError, match="SlowDown"):
        s3client(0).call("upload", "k", down)
    assert calls == [1]


def test_errors_from_our_own_code_are_not_disguised() -> None:
    def bug() -> None:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        s3client(5).call("list", "", bug)


# --------------------------------------------------------------------------- downloads


def head_for(data: bytes, **extra: Any) -> dict[str, Any]:
    return {"ContentLength": len(data), **extra}


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        ({"ETag": '"' + hashlib.md5(b"hello").hexdigest() + '"'}, None),
        ({"ETag": '"' + hashlib.md5(b"hellO").hexdigest() + '"'}, "MD5 differs"),
        ({"ChecksumSHA256": base64.b64encode(hashlib.sha256(b"hello").digest()).decode()}, None),
        ({"ChecksumSHA256": base64.b64encode(b"x" * 32).decode()}, "SHA-256 differs"),
        (
            {"ChecksumCRC32": base64.b64encode(zlib.crc32(b"hello").to_bytes(4, "big")).decode()},
            None,
        ),
        ({"ChecksumCRC32": "AAAAAA=="}, "CRC32 differs"),
        # Multipart: the checksum is of the parts, the ETag no MD5; the size is all we have.
        ({"ChecksumCRC32": "AAAAAA==", "ETag": '"abc-3"'}, None),
        ({"ChecksumCRC32": "AAAAAA==", "ETag": '"abc-3"', "ChecksumType": "FULL_OBJECT"}, "CRC32"),
        # KMS-encrypted objects have ETags that are not the MD5 of the content.
        ({"ETag": '"' + "0" * 32 + '"', "ServerSideEncryption": "aws:kms"}, None),
        ({"ContentLength": 6}, "downloaded 5 bytes, the store lists 6"),
    ],
)
def test_downloads_are_checked_against_what_the_store_says(
    tmp_path: Path, head: dict[str, Any], problem: str | None
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"hello")
    found = verify_download(
        path, head_for(b"hello", **head) if "ContentLength" not in head else head
    )
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


# --------------------------------------------------------------------------- credentials


def mount(root: Path, name: str, values: dict[str, str]) -> None:
    (root / name).mkdir(parents=True)
    for key, value in values.items():
        (root / name / key).write_text(value + "\n")


def test_settings_come_from_the_mounted_secret(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(credentials.SECRETS_ROOT_ENV, str(tmp_path))
    monkeypatch.delenv(credentials.ADDRESSING_ENV, raising=False)
    mount(
        tmp_path,
        "minio",
        {
            "AWS_ACCESS_KEY_ID": "AKIA1",
            "AWS_SECRET_ACCESS_KEY": "very-secret",
            "AWS_ENDPOINT_URL": "http://minio:9000",
            "AWS_S3_ADDRESSING_STYLE": "path",
            "AWS_REGION": "eu-west-1",
            "UNRELATED": "ignored",
        },
    )
    settings = s3_settings("minio")
    assert (settings.endpoint_url, settings.region, settings.addressing_style) == (
        "http://minio:9000",
        "eu-west-1",
        "path",
    )
    assert (settings.access_key_id, settings.secret_access_key) == ("AKIA1", "very-secret")
    assert settings.source == "credentials Secret 'minio'"
    assert "very-secret" not in repr(settings)
    assert redact("x very-secret y", settings.secrets()) == "x *** y"


def test_without_a_secret_the_standard_chain_and_our_addressing_variable_apply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(credentials.SECRETS_ROOT_ENV, str(tmp_path))
    monkeypatch.setenv(credentials.ADDRESSING_ENV, "virtual")
    settings = s3_settings(None)
    assert settings.access_key_id is None and settings.endpoint_url is None
    assert settings.addressing_style == "virtual"
    assert settings.source == "the standard AWS credential chain"


def test_a_half_secret_and_a_bad_addressing_style_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(credentials.SECRETS_ROOT_ENV, str(tmp_path))
    mount(tmp_path, "half", {"AWS_SECRET_ACCESS_KEY": "s3cr3t"})
    with pytest.raises(StorageError, match="only one of AWS_ACCESS_KEY_ID") as info:
        s3_settings("half")
    assert "s3cr3t" not in str(info.value)
    monkeypatch.setenv(credentials.ADDRESSING_ENV, "sideways")
    with pytest.raises(StorageError, match="is not one of auto, path, virtual"):
        s3_settings(None)


# --------------------------------------------------------------------------- cache


def test_a_cache_entry_appears_only_when_complete(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(cache.CACHE_DIR_ENV, str(tmp_path))

    def half(directory: Path) -> None:
        (directory / "a").write_text("a")
        raise StorageError("connection lost")

    with pytest.raises(StorageError):
        cache.fill("s3://b/m", "s3", "v1", half)
    assert cache.cached("s3://b/m", "s3", "v1") is None
    assert cache.latest("s3://b/m", "s3") is None
    assert not list(tmp_path.rglob("a")), "the partial download is removed"

    def whole(directory: Path) -> None:
        (directory / "a").write_text("a")

    path = cache.fill("s3://b/m", "s3", "v1", whole)
    assert (path / "a").read_text() == "a"
    assert cache.fill("s3://b/m", "s3", "v1", half) == path, "a complete entry is reused"
    assert cache.latest("s3://b/m", "s3") == path
    assert cache.fill("s3://b/m", "s3", "v2", whole) != path
