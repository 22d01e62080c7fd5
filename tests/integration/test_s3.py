"""s3:// storage against a real S3 HTTP endpoint (moto's server, tests/s3_server.py).

Everything goes through boto3 over HTTP as it would to MinIO: publishing and verifying
(multipart included), outages shorter and longer than the retry deadline, permanent
errors failing at once, wrong credentials, keys that try to leave their prefix, a
mounted credentials Secret, and models and datasets through the download cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from finetune_api.uri import Role
from finetune_cli.app import app
from finetune_trainer.errors import ModelError, StorageError, StorageUnavailable
from finetune_trainer.storage import s3 as s3_module
from finetune_trainer.storage.backends import Access, fetch_file, fetch_model_dir, open_store
from finetune_trainer.storage.store import MANIFEST, delete_set, publish_dir
from s3_server import S3Env


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stage(root: Path, big: int = 0) -> Path:
    """An artifact set with a manifest (sizes and sha256), like stage_artifacts writes."""
    files = {
        "adapter_config.json": b'{"r": 8}',
        "adapter_model.safetensors": bytes(range(256)) * 64,
        "sub/tokenizer.json": b'{"a": 1}',
        "README.md": b"card\n",
    }
    if big:
        files["big.bin"] = bytes(range(251)) * (big // 251 + 1)
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    entries = [
        {"path": rel, "size": len(data), "sha256": sha256(data)}
        for rel, data in sorted(files.items())
    ]
    (root / MANIFEST).write_text(json.dumps({"files": entries}))
    return root


def verify(uri: str) -> Any:
    return CliRunner().invoke(app, ["verify", uri], catch_exceptions=False)


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


def test_a_download_that_does_not_match_the_stores_checksum_is_refused(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s3_env.client.put_object(Bucket=s3_env.bucket, Key="x/data.bin", Body=b"0123456789")
    store = open_store(s3_env.uri("x"), Access(deadline_seconds=0))
    # Corrupt the file between the transfer and the check, as a bad disk or proxy would.
    real_verify = s3_module.verify_download

    def flip(path: Path, head: dict[str, Any]) -> str | None:
        path.write_bytes(b"0123456788")
        return real_verify(path, head)

    monkeypatch.setattr(s3_module, "verify_download", flip)
    with pytest.raises(StorageError, match=r"differs from the store's"):
        store.get_file("data.bin", tmp_path / "data.bin")
    assert not (tmp_path / "data.bin").exists()


# --------------------------------------------------------------------------- outages


def outage_during_publish(
    s3_env: S3Env, store: Any, monkeypatch: pytest.MonkeyPatch, seconds: float | None
) -> list[str]:
    """Stop the server as the second file's upload begins; restart after ``seconds``."""
    calls: list[str] = []
    real = store.put_file

    def put(src: Path, key: str) -> None:
        calls.append(key)
        if len(calls) == 2:
            s3_env.server.outage(seconds)
        real(src, key)

    monkeypatch.setattr(store, "put_file", put)
    return calls


def test_publish_rides_out_an_outage_shorter_than_the_deadline(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    staging = stage(tmp_path / "staging")
    uri = s3_env.uri("job")
    store = open_store(uri, Access(deadline_seconds=20))
    outage_during_publish(s3_env, store, monkeypatch, seconds=3)

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="finetune_trainer"):
        publish_dir(staging, store)
    elapsed = time.monotonic() - started

    assert elapsed >= 3
    assert any("retrying in" in r.getMessage() for r in caplog.records)
    # The restarted server kept its state: the files from before the outage are there.
    assert verify(uri).exit_code == 0


def test_publish_fails_cleanly_when_the_outage_outlasts_the_deadline(
    s3_env: S3Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = stage(tmp_path / "staging")
    uri = s3_env.uri("job")
    publish_dir(staging, open_store(uri))  # an older complete set is there
    store = open_store(uri, Access(deadline_seconds=3))
    outage_during_publish(s3_env, store, monkeypatch, seconds=None)

    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as info:  # exit 7: a later attempt may succeed
        publish_dir(staging, store)
    elapsed = time.monotonic() - started
    s3_env.server.end_outage()

    message = str(info.value)
    assert message.startswith(f"s3://{s3_env.bucket}/job/")
    assert "retry deadline 3s" in message and "retryDeadlineSeconds" in message
    assert 1 <= elapsed < 10
    # Neither the old manifest (it was removed first) nor a new one: incomplete.
    assert f"job/{MANIFEST}" not in s3_env.objects()
    assert verify(uri).exit_code == 1


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


def test_a_missing_dataset_object_fails_at_once_naming_it(s3_env: S3Env) -> None:
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"no-such\.jsonl: cannot read: 404"):
        fetch_file(s3_env.uri("sets/no-such.jsonl"), Role.DATASET, Access(None, 60))
    assert time.monotonic() - started < 5


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


@pytest.mark.parametrize(
    "key", ["../escape.txt", "/abs.txt", "a/%2e%2e/b.txt", "a\\..\\b.txt", "a/../../b.txt", ""]
)
def test_s3_store_refuses_keys_leaving_its_prefix(s3_env: S3Env, tmp_path: Path, key: str) -> None:
    src = tmp_path / "f.txt"
    src.write_text("x")
    store = open_store(s3_env.uri("jobs/a"))
    with pytest.raises(StorageError, match="unsafe storage key"):
        store.put_file(src, key)
    with pytest.raises(StorageError, match="unsafe storage key"):
        store.get_file(key, tmp_path / "out.txt")
    with pytest.raises(StorageError, match="unsafe storage key"):
        store.delete([key])
    assert s3_env.objects() == []


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


def write_secret(root: Path, name: str, values: dict[str, str]) -> None:
    directory = root / "secrets" / name
    directory.mkdir(parents=True)
    for key, value in values.items():
        (directory / key).write_text(value + "\n")  # kubectl-created files may end so


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


def upload_dir(s3_env: S3Env, directory: Path, prefix: str) -> None:
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(directory).as_posix()}"
            s3_env.client.upload_file(str(path), s3_env.bucket, key)


def test_model_from_s3_is_cached_and_served_from_the_cache_when_unreachable(
    s3_env: S3Env, tiny_model_dir: Path, tmp_path: Path, caplog: Any
) -> None:
    upload_dir(s3_env, tiny_model_dir, "models/tiny")
    uri = s3_env.uri("models/tiny")

    local = fetch_model_dir(uri, None)

    expected = {
        p.relative_to(tiny_model_dir).as_posix(): p.read_bytes()
        for p in tiny_model_dir.rglob("*")
        if p.is_file()
    }
    got = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert got == expected
    assert tmp_path / "cache" in local.parents  # FINETUNE_CACHE_DIR
    assert fetch_model_dir(uri, None) == local  # unchanged listing: the same cache entry

    s3_env.server.outage(None)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="finetune_trainer"):
        assert fetch_model_dir(uri, None, Access(None, 60)) == local
    assert time.monotonic() - started < 10, "a cached model does not wait out the deadline"
    assert any("using the cached copy" in r.getMessage() for r in caplog.records)
    s3_env.server.end_outage()


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


# --------------------------------------------------------------------------- the lease


def lease_body(s3_env: S3Env, key: str) -> dict[str, Any]:
    body = s3_env.client.get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    return dict(json.loads(body))


def test_a_second_run_on_a_leased_s3_output_fails_naming_the_holder(s3_env: S3Env) -> None:
    from finetune_trainer.storage.store import LEASE, Holder, OutputBusy

    first, second = open_store(s3_env.uri("job")), open_store(s3_env.uri("job"))
    with first.lease(Holder("run-a")):
        assert lease_body(s3_env, f"job/{LEASE}")["run"] == "run-a"
        busy = pytest.raises(OutputBusy, match=r"s3://.*/job: another run .*run run-a")
        with busy as caught, second.lease(Holder("run-b")):
            pass
        assert caught.value.exit_code == 5
        assert lease_body(s3_env, f"job/{LEASE}")["run"] == "run-a"  # untouched
    assert f"job/{LEASE}" not in s3_env.objects()  # released
    with second.lease(Holder("run-b")):
        pass


def test_an_s3_lease_is_renewed_while_held_and_taken_over_once_it_lapses(
    s3_env: S3Env,
) -> None:
    from finetune_trainer.storage.store import LEASE, Holder

    key = f"job/{LEASE}"
    holder = open_store(s3_env.uri("job"))
    holder.lease_seconds = 0.4  # renewed every 0.1 s
    with holder.lease(Holder("run-a")):
        first = lease_body(s3_env, key)["expires"]
        time.sleep(0.6)
        assert lease_body(s3_env, key)["expires"] > first + 0.2  # renewed
    # A holder killed -9 renews nothing: its lease lapses and is taken over.
    lapsed = {"run": "dead-run", "process": "h:1", "since": 0, "expires": time.time() - 1}
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=key, Body=json.dumps(lapsed).encode())
    with open_store(s3_env.uri("job")).lease(Holder("run-b")):
        assert lease_body(s3_env, key)["run"] == "run-b"


def test_the_same_run_restarted_takes_its_s3_lease_over(s3_env: S3Env) -> None:
    from finetune_trainer.storage.store import LEASE, Holder

    key = f"job/{LEASE}"
    alive = {"run": "job-uid", "process": "old-pod:1", "since": 0, "expires": time.time() + 600}
    s3_env.client.put_object(Bucket=s3_env.bucket, Key=key, Body=json.dumps(alive).encode())
    with open_store(s3_env.uri("job")).lease(Holder("job-uid", "new-pod:1")):
        assert lease_body(s3_env, key)["process"] == "new-pod:1"
