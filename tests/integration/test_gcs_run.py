"""`finetune run` with gs:// (the GCS emulator, tests/gcs_server.py), and what is
particular to gs:// beyond the store contract (tests/integration/test_store_contract.py,
which also runs `finetune run` through every store): examples/gcs.yaml with its mounted
Secret, streaming reads, where credentials come from, and a key in the Secret that is
not one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from finetune_api.uri import Role, parse_uri
from finetune_cli.app import app
from finetune_trainer.errors import StorageError
from finetune_trainer.storage import gcs as gcs_module
from finetune_trainer.storage.backends import BACKENDS, Access, fetch_file
from finetune_trainer.storage.store import MANIFEST
from gcs_server import GcsEnv

REPO = Path(__file__).resolve().parents[2]


def test_the_gcs_example_runs_with_its_mounted_secret(
    gcs_env: GcsEnv, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/gcs.yaml as a user runs it: its buckets, its Secret mounted as the operator
    would (here holding the emulator's address, as a key file would hold a key), only the
    model swapped for the tiny one and the run cut to one step."""
    example = yaml.safe_load((REPO / "examples" / "gcs.yaml").read_text())
    spec = example["spec"]
    secret = spec["output"]["credentialsSecret"]
    assert spec["dataset"]["credentialsSecret"] == secret
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")  # only the Secret can make this work
    mounted = tmp_path / "secrets" / secret
    mounted.mkdir(parents=True)
    (mounted / "STORAGE_EMULATOR_HOST").write_text(gcs_env.server.endpoint)
    data_bucket = spec["dataset"]["train"].removeprefix("gs://").partition("/")[0]
    out_bucket, _, out_prefix = spec["output"]["uri"].removeprefix("gs://").partition("/")
    for bucket in (data_bucket, out_bucket):
        gcs_env.server.ensure_bucket(bucket)
    for uri in (spec["dataset"]["train"], spec["dataset"]["validation"]):
        key = uri.removeprefix(f"gs://{data_bucket}/")
        gcs_env.server.put(data_bucket, key, (REPO / "examples" / key).read_bytes())
    spec["model"]["uri"] = f"file://{tiny_model_dir}"
    spec["training"]["maxSeqLength"] = 64
    spec["evaluation"] = {"exactMatchSamples": 2, "maxNewTokens": 4}
    job = tmp_path / "gcs.yaml"
    job.write_text(yaml.safe_dump(example))

    result = CliRunner().invoke(app, ["run", str(job), "--max-steps", "1"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads(gcs_env.server.get(out_bucket, f"{out_prefix}/{MANIFEST}"))
    assert manifest["jobName"] == "quickstart-gcs"


def test_a_missing_bucket_exits_with_the_storage_code_at_once(
    gcs_env: GcsEnv, make_job: Any
) -> None:
    job = make_job(model={"uri": "gs://no-such-models-bucket/smol"})
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 5, result.output
    assert "gs://no-such-models-bucket/smol/: cannot list: HTTP 404" in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - started < 10


def test_streaming_from_gcs_reads_the_object_as_it_arrives(
    gcs_env: GcsEnv, tmp_path: Path, tiny_tokenizer: Any
) -> None:
    """dataset.streaming reads a gs:// object through open_stream: the examples are the
    local file's, no copy lands in the cache, and the version is the object's generation."""
    from conftest import colour_rows, write_jsonl
    from finetune_api.config import ColumnMapping
    from finetune_trainer.data.stream import StreamSettings, open_source, open_stream

    local = write_jsonl(tmp_path / "train.jsonl", colour_rows(300))
    gcs_env.server.put(gcs_env.bucket, "data/train.jsonl", local.read_bytes())
    settings = StreamSettings("messages", ColumnMapping(), 64)
    uri = gcs_env.uri("data/train.jsonl")
    remote = open_stream(uri, Access(), tiny_tokenizer, settings, seed=0, buffer_size=1)
    from_file = open_stream(
        f"file://{local}", Access(), tiny_tokenizer, settings, seed=0, buffer_size=1
    )
    for _ in range(320):  # across the end of the first pass
        assert next(remote).input_ids == next(from_file).input_ids
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()], "downloaded"
    before = open_source(uri, Access()).version
    gcs_env.server.put(gcs_env.bucket, "data/train.jsonl", b'{"messages": []}\n')
    assert "@" in before and open_source(uri, Access()).version != before


def test_a_gcs_stream_cut_mid_read_resumes_and_refuses_a_replaced_object(
    gcs_env: GcsEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    import aiohttp

    monkeypatch.setattr(gcs_module, "READ_BLOCK", 4096)
    content = b"".join(b"%06d\n" % i for i in range(20_000))
    gcs_env.server.put(gcs_env.bucket, "t.jsonl", content)
    backend = BACKENDS["gs"]
    parsed = parse_uri(gcs_env.uri("t.jsonl"), Role.DATASET)

    stream = backend.open_stream(parsed, Access(None, 20))  # type: ignore[attr-defined]
    first = stream.read(10_000)
    real, cuts = stream.gcs.fs.cat_file, []

    def cut(*args: Any, **kwargs: Any) -> Any:
        if not cuts:  # the connection drops once
            cuts.append(1)
            raise aiohttp.ServerDisconnectedError()
        return real(*args, **kwargs)

    monkeypatch.setattr(stream.gcs.fs, "cat_file", cut)
    assert first + stream.read() == content and cuts == [1]

    replaced = backend.open_stream(parsed, Access(None, 20))  # type: ignore[attr-defined]
    head = replaced.read(1000)
    gcs_env.server.put(gcs_env.bucket, "t.jsonl", b"other\n" * 2000)
    with pytest.raises(StorageError, match=r"t\.jsonl: the object was replaced"):
        replaced.read()
    assert head == content[:1000]
    missing = parse_uri(gcs_env.uri("sets/none.jsonl"), Role.DATASET)
    with pytest.raises(StorageError, match=r"none\.jsonl: cannot read: HTTP 404"):
        backend.open_stream(missing, Access(None, 60))  # type: ignore[attr-defined]


def test_credentials_come_from_the_secret_else_workload_identity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gcs_server import service_account_key

    monkeypatch.setenv("FINETUNE_SECRETS_ROOT", str(tmp_path))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    default = gcs_module.gcs_settings(None)
    assert default.token == "google_default" and "workload identity" in default.source
    key = service_account_key("https://oauth2.googleapis.com/token")
    (tmp_path / "gcs").mkdir()
    (tmp_path / "gcs" / "service-account.json").write_text(json.dumps(key))
    settings = gcs_module.gcs_settings("gcs")
    assert settings.token == key and settings.project == "finetune-test"
    assert settings.source == "credentials Secret 'gcs'"
    assert key["private_key"] not in repr(settings)


def test_no_credentials_at_all_fails_at_once_naming_the_uri_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside an emulator, without a Secret, Application Default Credentials that find
    nothing (no key file, no gcloud login, no metadata server) are a StorageError naming
    the URI, not google-auth's traceback."""
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # refused: not on GCE
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        fetch_file("gs://some-bucket/sets/x.jsonl", Role.DATASET, Access(None, 60))
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert message.startswith("gs://some-bucket/sets/x.jsonl: cannot read: ")
    assert "no usable Google credentials" in message and info.value.exit_code == 5


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"type": "service_account", "private_key": "x', "is not JSON"),
        ('{"type": "authorized_user"}', "its type is not service_account"),
        (
            '{"type": "service_account", "client_email": "a@b", "token_uri": "https://t", '
            '"private_key": "-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n"}',
            "its private_key does not parse",
        ),
    ],
)
def test_a_secret_key_that_is_no_service_account_key_fails_before_any_request(
    gcs_env: GcsEnv, tmp_path: Path, content: str, problem: str
) -> None:
    (tmp_path / "secrets" / "gcs").mkdir(parents=True)
    (tmp_path / "secrets" / "gcs" / "service-account.json").write_text(content)
    with pytest.raises(StorageError) as info:
        fetch_file(gcs_env.uri("sets/x.jsonl"), Role.DATASET, Access("gcs", 60))
    message = str(info.value)
    assert message.startswith(f"gs://{gcs_env.bucket}: ")
    assert "key service-account.json of credentials Secret 'gcs'" in message
    assert problem in message
    assert "AAAA" not in message and '"x' not in message
