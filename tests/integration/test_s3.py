"""s3:// storage against a real S3 HTTP endpoint (moto's server, tests/s3_server.py).

Everything goes through boto3 over HTTP as it would to MinIO. What every object store
guarantees alike (checksummed downloads, outages, leases, unsafe keys, the model cache)
is asserted once for all of them in tests/integration/test_store_contract.py; here is
what is S3's own: multipart publishing, its error codes, wrong keys under IAM
enforcement, a mounted credentials Secret, workload identity, keys in a listing that try
to leave the model prefix, and datasets cached by ETag.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
from test_store_contract import stage, verify, write_secret

from finetune_api.uri import Role
from finetune_trainer.errors import ModelError, StorageError
from finetune_trainer.storage import s3 as s3_module
from finetune_trainer.storage.backends import Access, fetch_file, fetch_model_dir, open_store
from finetune_trainer.storage.store import MANIFEST, delete_set, publish_dir
from s3_server import S3Env

# --------------------------------------------------------------------------- publish


def test_publish_multipart_and_verify_by_checksums(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", 5 * 2**20)
    monkeypatch.setattr(s3_module, "MULTIPART_CHUNKSIZE", 5 * 2**20)
    staging = stage(tmp_path / "staging", big=11 * 2**20)
    uri = s3_env.uri("adapters/job")
    store = open_store(uri)

    publish_dir(staging, store)

    assert s3_env.objects() == [
        f"adapters/job/{k}"
        for k in sorted(
            [
                "README.md",
                "adapter_config.json",
                "adapter_model.safetensors",
                "big.bin",
                MANIFEST,
                "sub/tokenizer.json",
            ]
        )
    ]
    head = s3_env.client.head_object(Bucket=s3_env.bucket, Key="adapters/job/big.bin")
    assert head["ETag"].strip('"').endswith("-3"), "11 MiB in 5 MiB parts: a multipart upload"
    result = verify(uri)
    assert result.exit_code == 0, result.output
    assert "every file matches manifest.json" in result.output

    # Read back: the same bytes, the same listing.
    store.get_file("big.bin", tmp_path / "back" / "big.bin")
    assert (tmp_path / "back" / "big.bin").read_bytes() == (staging / "big.bin").read_bytes()
    assert [o.key for o in store.list("sub")] == ["sub/tokenizer.json"]
    assert {o.key: o.size for o in store.list()}["big.bin"] == (staging / "big.bin").stat().st_size

    # Same size, other content: caught by the sha256; a stray object too.
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="adapters/job/README.md", Body=b"CARD\n")
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="adapters/job/stray.bin", Body=b"x")
    result = verify(uri)
    assert result.exit_code == 1
    assert "README.md: size or sha256 differs from the manifest" in result.output
    assert "stray.bin: not listed in the manifest" in result.output

    # A prefix without its manifest is incomplete, whatever else it holds.
    delete_set(store, "")
    assert s3_env.objects() == []
    publish_dir(staging, store)
    store.delete([MANIFEST])
    result = verify(uri)
    assert result.exit_code == 1
    assert "no manifest.json, the artifact set is incomplete" in result.output


# --------------------------------------------------------------------------- errors


def test_no_such_bucket_fails_at_once(s3_env: S3Env, tmp_path: Path) -> None:
    staging = stage(tmp_path / "staging")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        publish_dir(staging, open_store("s3://no-such-bucket-here/job", Access(None, 60)))
    assert time.monotonic() - started < 5, "a permanent error must not wait for the deadline"
    message = str(info.value)
    assert message.startswith("s3://no-such-bucket-here/job/")
    assert "NoSuchBucket" in message and "check the bucket name" in message
    assert info.value.exit_code == 5  # a refusal, not an outage: retrying will not help


@pytest.mark.parametrize(
    ("wrong", "code", "cause"),
    [
        ("secret", "SignatureDoesNotMatch", "check the secret key"),
        ("key id", "InvalidAccessKeyId", "the store does not know this access key"),
    ],
)
def test_wrong_credentials_name_the_uri_and_the_cause(
    s3_env: S3Env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: Any,
    wrong: str,
    code: str,
    cause: str,
) -> None:
    staging = stage(tmp_path / "staging")
    bad_secret = "wrong-secret-value-123456789"
    with s3_env.server.enforcing_auth() as keys:
        key_id = keys.access_key_id if wrong == "secret" else "AKIANOSUCHKEY0000000"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad_secret)
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as info:
            publish_dir(staging, open_store(s3_env.uri("job"), Access(None, 60)))
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert message.startswith(f"s3://{s3_env.bucket}/job/")
    assert code in message and cause in message
    assert "the standard AWS credential chain" in message
    assert elapsed < 5
    assert bad_secret not in message
    assert not [r for r in caplog.records if bad_secret in r.getMessage()]


# --------------------------------------------------------------------------- path safety


def test_a_model_prefix_with_an_escaping_key_is_not_downloaded(
    s3_env: S3Env, tmp_path: Path
) -> None:
    put = s3_env.client.put_object
    put(Bucket=s3_env.bucket, Key="models/m/config.json", Body=b"{}")
    put(Bucket=s3_env.bucket, Key="models/m/../../evil.py", Body=b"import os")
    with pytest.raises(StorageError, match=r"refusing to download object 'models/m/\.\./\.\./evil"):
        fetch_model_dir(s3_env.uri("models/m"), None)
    assert not list(tmp_path.rglob("evil.py")), "nothing may be written for that key"
    assert not list((tmp_path / "cache").rglob("config.json")), "no partial model is kept"
    # A store listing skips such a key rather than handing it to a caller.
    assert [o.key for o in open_store(s3_env.uri("models/m")).list()] == ["config.json"]


# --------------------------------------------------------------------------- credentials


def test_credentials_from_a_mounted_secret(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    staging = stage(tmp_path / "staging")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)  # only the Secret can make this work
    with s3_env.server.enforcing_auth() as keys:
        write_secret(
            tmp_path,
            "minio-creds",
            {
                "AWS_ACCESS_KEY_ID": keys.access_key_id,
                "AWS_SECRET_ACCESS_KEY": keys.secret_access_key,
                "AWS_ENDPOINT_URL": s3_env.server.endpoint,
                "AWS_S3_ADDRESSING_STYLE": "path",
                "AWS_REGION": "us-east-1",
            },
        )
        write_secret(
            tmp_path,
            "stale-creds",
            {
                "AWS_ACCESS_KEY_ID": keys.access_key_id,
                "AWS_SECRET_ACCESS_KEY": "stale-" + keys.secret_access_key,
                "AWS_ENDPOINT_URL": s3_env.server.endpoint,
            },
        )
        with caplog.at_level(logging.DEBUG):
            publish_dir(staging, open_store(s3_env.uri("job"), Access("minio-creds", 10)))
            with pytest.raises(StorageError) as info:
                open_store(s3_env.uri("job"), Access("stale-creds", 10)).list()
        records = [r.getMessage() for r in caplog.records]
    assert MANIFEST in [k.rsplit("/", 1)[-1] for k in s3_env.objects("job/")]
    message = str(info.value)
    assert "SignatureDoesNotMatch" in message and "credentials Secret 'stale-creds'" in message
    for secret in (keys.secret_access_key, "stale-" + keys.secret_access_key):
        assert secret not in message
        assert not [m for m in records if secret in m], "a secret reached the logs"


def test_a_named_but_unmounted_secret_falls_back_to_the_environment(
    s3_env: S3Env, tmp_path: Path, caplog: Any
) -> None:
    staging = stage(tmp_path / "staging")
    with caplog.at_level(logging.WARNING, logger="finetune_trainer"):
        publish_dir(staging, open_store(s3_env.uri("job"), Access("not-mounted-here", 10)))
    assert verify(s3_env.uri("job")).exit_code == 0
    assert any("'not-mounted-here' is not mounted" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- models, data


def test_a_missing_model_prefix_is_a_model_error(s3_env: S3Env) -> None:
    with pytest.raises(ModelError, match="no objects under this prefix"):
        fetch_model_dir(s3_env.uri("models/none"), None)


def test_dataset_from_s3_is_cached_by_etag(s3_env: S3Env) -> None:
    uri = s3_env.uri("sets/train.jsonl")
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="sets/train.jsonl", Body=b'{"a": 1}\n')

    first = fetch_file(uri, Role.DATASET)
    assert first.read_bytes() == b'{"a": 1}\n' and first.name == "train.jsonl"
    assert fetch_file(uri, Role.DATASET) == first

    s3_env.client.put_object(Bucket=s3_env.bucket, Key="sets/train.jsonl", Body=b'{"a": 2}\n')
    second = fetch_file(uri, Role.DATASET)
    assert second != first and second.read_bytes() == b'{"a": 2}\n'


def test_workload_identity_through_the_standard_chain(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IRSA-style: no keys anywhere, only a projected token file and a role ARN. boto3's
    chain exchanges the token at STS (moto's, on the same endpoint) for temporary
    credentials, and the store uses them."""
    staging = stage(tmp_path / "staging")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    token = tmp_path / "token"
    token.write_text("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ.sig")
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    monkeypatch.setenv("AWS_ROLE_ARN", "arn:aws:iam::123456789012:role/finetune-trainer")
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "finetune-test")

    store = open_store(s3_env.uri("irsa"), Access(None, 10))
    publish_dir(staging, store)
    assert f"irsa/{MANIFEST}" in s3_env.objects("irsa/")

    # Without the token (and without keys) the same call has no credentials at all.
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE")
    with pytest.raises(StorageError):
        open_store(s3_env.uri("irsa"), Access(None, 2)).list()
