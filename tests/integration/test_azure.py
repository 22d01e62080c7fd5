"""az:// storage against a real Azure Blob endpoint (Azurite, tests/azurite_server.py).

What every object store guarantees alike (outages, leases, unsafe keys, the model cache,
the planner) is asserted once for all of them in tests/integration/test_store_contract.py;
here is what is Azure's own: az:// URIs, manifest-last publishing with Content-MD5 (in
blocks too), a download refused after one more try, its error codes, credentials from a
mounted Secret and never in any text, workload identity, and streaming reads through adlfs.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from test_store_contract import stage, verify, write_secret

from azurite_server import ACCOUNT, ACCOUNT_KEY, AzureEnv
from finetune_api.uri import Role, UriError, parse_uri
from finetune_trainer.errors import ModelError, StorageError
from finetune_trainer.storage import azure as azure_module
from finetune_trainer.storage.backends import (
    BACKENDS,
    Access,
    fetch_file,
    fetch_model_dir,
    open_store,
)
from finetune_trainer.storage.store import MANIFEST, publish_dir

# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        ("az://Upper/x.jsonl", "not a valid container name"),
        ("az://ab/x.jsonl", "not a valid container name"),
        ("az://a--b/x.jsonl", "not a valid container name"),
        ("az://-ab/x.jsonl", "not a valid container name"),
        ("az://data", "needs a blob name"),
        ("az://data/a/../../x.jsonl", "'..' path segments"),
        ("az://user:pw@data/x.jsonl", "holds credentials"),
    ],
)
def test_az_uris_are_checked_before_any_request(uri: str, problem: str) -> None:
    with pytest.raises(UriError, match=problem):
        parse_uri(uri, Role.DATASET)


def test_an_az_output_may_be_a_whole_container() -> None:
    assert parse_uri("az://outputs", Role.OUTPUT).location == "outputs"
    assert "az" in BACKENDS


# --------------------------------------------------------------------------- publish


def test_publish_and_verify_with_content_md5(azure_env: AzureEnv, tmp_path: Path) -> None:
    staging = stage(tmp_path / "staging")
    uri = azure_env.uri("adapters/job")
    store = open_store(uri)

    publish_dir(staging, store)

    names = ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert azure_env.objects() == [
        f"adapters/job/{k}" for k in sorted([*names, MANIFEST, "sub/tokenizer.json"])
    ]
    props = azure_env.client.get_blob_client("adapters/job/adapter_model.safetensors")
    md5 = props.get_blob_properties().content_settings.content_md5
    data = (staging / "adapter_model.safetensors").read_bytes()
    assert bytes(md5) == hashlib.md5(data).digest(), "every upload carries its Content-MD5"
    result = verify(uri)
    assert result.exit_code == 0, result.output
    assert "every file matches manifest.json" in result.output

    store.get_file("sub/tokenizer.json", tmp_path / "back" / "t.json")
    assert (tmp_path / "back" / "t.json").read_bytes() == b'{"a": 1}'
    assert [o.key for o in store.list("sub")] == ["sub/tokenizer.json"]
    assert store.exists("README.md") and not store.exists("nothing.bin")

    # The manifest goes first when a set is replaced or deleted: never a stale vouching.
    store.delete([MANIFEST, "no-such-key"])
    result = verify(uri)
    assert result.exit_code == 1
    assert "no manifest.json, the artifact set is incomplete" in result.output


def test_a_file_uploaded_in_blocks_still_carries_its_md5(
    azure_env: AzureEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Azure computes no Content-MD5 for a blob committed from blocks: the upload sets it,
    so large weights are verified on download like small files."""
    monkeypatch.setattr(azure_module, "SINGLE_PUT_BYTES", 1 << 20)
    monkeypatch.setattr(azure_module, "BLOCK_BYTES", 1 << 20)
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(251)) * (3 * 4200))  # 3.02 MiB: four blocks of 1 MiB
    store = open_store(azure_env.uri("job"))
    store.put_file(big, "big.bin")

    blob = azure_env.client.get_blob_client("job/big.bin")
    committed, _ = blob.get_block_list()
    assert len(committed) == 4
    md5 = blob.get_blob_properties().content_settings.content_md5
    assert bytes(md5) == hashlib.md5(big.read_bytes()).digest()
    store.get_file("big.bin", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_a_download_that_does_not_match_the_blobs_md5_is_refused(
    azure_env: AzureEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    azure_env.client.upload_blob("x/data.bin", b"0123456789")
    store = open_store(azure_env.uri("x"), Access(deadline_seconds=0))
    real_verify = azure_module.verify_download
    tries = []

    def flip(path: Path, size: int, md5: Any) -> str | None:
        tries.append(path)
        path.write_bytes(b"0123456788")  # same size, other bytes: a bad disk or proxy
        return real_verify(path, size, md5)

    monkeypatch.setattr(azure_module, "verify_download", flip)
    with pytest.raises(StorageError, match=r"corrupt: MD5 differs from the store's Content-MD5"):
        store.get_file("data.bin", tmp_path / "data.bin")
    assert len(tries) == 2, "fetched once more before refusing"
    assert not (tmp_path / "data.bin").exists()
    assert not list(tmp_path.glob(".data.bin*")), "no partial file is left"


# --------------------------------------------------------------------------- errors


def test_no_such_container_fails_at_once(azure_env: AzureEnv, tmp_path: Path) -> None:
    staging = stage(tmp_path / "staging")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        publish_dir(staging, open_store("az://no-such-container/job", Access(None, 60)))
    assert time.monotonic() - started < 5, "a permanent error must not wait for the deadline"
    message = str(info.value)
    assert message.startswith("az://no-such-container/job/")
    assert "ContainerNotFound" in message and "the container does not exist" in message
    assert info.value.exit_code == 5


def test_credentials_from_a_mounted_secret_and_never_in_text(
    azure_env: AzureEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    staging = stage(tmp_path / "staging")
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")  # only the Secret can work
    endpoint = azure_env.server.endpoint
    good = azure_env.server.connection_string
    wrong_key = base64.b64encode(b"not the account key, 32 bytes!!").decode()
    wrong = good.replace(ACCOUNT_KEY, wrong_key)
    write_secret(tmp_path, "azure-creds", {"AZURE_STORAGE_CONNECTION_STRING": good})
    write_secret(tmp_path, "stale-creds", {"AZURE_STORAGE_CONNECTION_STRING": wrong})

    with caplog.at_level(logging.DEBUG):
        publish_dir(staging, open_store(azure_env.uri("job"), Access("azure-creds", 10)))
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            open_store(azure_env.uri("job"), Access("stale-creds", 60)).list()
        elapsed = time.monotonic() - started
    records = [r.getMessage() for r in caplog.records]
    assert f"job/{MANIFEST}" in azure_env.objects("job/")
    message = str(info.value)
    assert message.startswith(f"az://{azure_env.container}/job/")
    # Azure says AuthenticationFailed, Azurite AuthorizationFailure: both 403, both named.
    assert "(HTTP 403)" in message and "key, SAS token or connection string" in message
    assert "credentials Secret 'stale-creds'" in message
    assert endpoint in message
    assert elapsed < 5
    for secret in (wrong_key, ACCOUNT_KEY):
        assert secret not in message
        assert not [m for m in records if secret in m], "a secret reached the logs"


def test_nothing_to_authenticate_with_is_refused_naming_the_keys(
    azure_env: AzureEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    with pytest.raises(StorageError, match="AZURE_STORAGE_CONNECTION_STRING"):
        open_store(azure_env.uri("job"))
    write_secret(tmp_path, "half", {"AZURE_STORAGE_ACCOUNT_KEY": ACCOUNT_KEY})
    with pytest.raises(StorageError, match="no storage account: add AZURE_STORAGE_ACCOUNT_NAME"):
        open_store(azure_env.uri("job"), Access("half"))


def test_account_name_alone_means_workload_identity() -> None:
    settings = azure_module.AzureSettings(account_name=ACCOUNT)
    assert settings.endpoint == f"https://{ACCOUNT}.blob.core.windows.net"
    from azure.identity import DefaultAzureCredential

    assert isinstance(settings._credential(), DefaultAzureCredential)


# --------------------------------------------------------------------------- models, data


def test_a_model_prefix_with_an_escaping_blob_name_is_refused() -> None:
    """Azurite refuses to store such a name, Azure may not: the listing is checked."""
    listed = [("models/m/config.json", 2, "e1"), ("models/m/../../evil.py", 9, "e2")]
    with pytest.raises(StorageError, match=r"refusing to download blob 'models/m/\.\./\.\./evil"):
        azure_module.model_files("az://c/models/m", listed, "models/m/")


def test_a_missing_model_prefix_is_a_model_error(azure_env: AzureEnv) -> None:
    with pytest.raises(ModelError, match="no blobs under this prefix"):
        fetch_model_dir(azure_env.uri("models/none"), None)


def test_dataset_is_cached_by_etag(azure_env: AzureEnv) -> None:
    uri = azure_env.uri("sets/train.jsonl")
    azure_env.client.upload_blob("sets/train.jsonl", b'{"a": 1}\n', overwrite=True)
    first = fetch_file(uri, Role.DATASET)
    assert first.read_bytes() == b'{"a": 1}\n' and first.name == "train.jsonl"
    assert fetch_file(uri, Role.DATASET) == first
    azure_env.client.upload_blob("sets/train.jsonl", b'{"a": 2}\n', overwrite=True)
    second = fetch_file(uri, Role.DATASET)
    assert second != first and second.read_bytes() == b'{"a": 2}\n'


def test_open_stream_reads_the_blob_without_downloading_it(azure_env: AzureEnv) -> None:
    rows = b"".join(b'{"i": %d}\n' % i for i in range(2000))
    azure_env.client.upload_blob("sets/big.jsonl", rows)
    backend = BACKENDS["az"]
    with backend.open_stream(  # type: ignore[attr-defined]
        parse_uri(azure_env.uri("sets/big.jsonl"), Role.DATASET), Access()
    ) as handle:
        assert handle.readline() == b'{"i": 0}\n'
        assert handle.read() == rows[len(b'{"i": 0}\n') :]
    with pytest.raises(StorageError, match=r"nope\.jsonl: cannot read: .*404"):
        backend.open_stream(  # type: ignore[attr-defined]
            parse_uri(azure_env.uri("sets/nope.jsonl"), Role.DATASET), Access(None, 60)
        )
