"""The ONE contract every object store keeps, asserted alike for each of them.

Each store runs against a real HTTP endpoint on 127.0.0.1: s3:// against moto's server
(tests/s3_server.py), gs:// against gcp-storage-emulator (tests/gcs_server.py), az://
against Azurite (tests/azurite_server.py). The same test body runs for each, through a
:class:`StoreUnderTest` that says only how to set up objects, break the credentials and
stop the server for that store; every assertion
is about the trainer's storage API (``open_store``, ``publish_dir``, ``fetch_file``,
``fetch_model_dir``, leases) and holds for every scheme.

Adding a store (H5: az://): write a fixture returning a :class:`StoreUnderTest` for it
(``az_store`` below, over its emulator fixture) and add its name to :data:`STORES`; the
suite then runs for it too. A guarantee a store cannot show against its emulator is
skipped for that store only, with the reason (``StoreUnderTest.cannot``), never silently.

Emulator notes (gs://): gcp-storage-emulator ignores ``ifGenerationMatch`` and serves a
``?generation=`` read with whatever is there; the test server adds both (412 and 404, as
GCS answers) so the lease's conditional writes and the pinned reads are exercised. It
checks no credentials either, so "wrong credentials" for gs:// is a well-formed
service-account key that a local token endpoint refuses (``400 invalid_grant``, as
Google's does), which reaches the trainer as a 401.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from typer.testing import CliRunner

from finetune_api.uri import Role
from finetune_cli.app import app
from finetune_trainer.errors import StorageError, StorageUnavailable
from finetune_trainer.storage import azure as az_module
from finetune_trainer.storage import gcs as gcs_module
from finetune_trainer.storage import s3 as s3_module
from finetune_trainer.storage.backends import Access, fetch_file, fetch_model_dir, open_store
from finetune_trainer.storage.store import LEASE, MANIFEST, Holder, OutputBusy, publish_dir

WrongCredentials = Callable[[Path, pytest.MonkeyPatch], contextlib.AbstractContextManager[Any]]


@dataclass
class StoreUnderTest:
    """One store's side of the contract suite: how to set things up, nothing to assert."""

    scheme: str
    module: ModuleType
    """The backend module; its ``verify_download(path, ...)`` checks every download."""
    server: Any
    """Has ``outage(seconds)`` and ``end_outage()``."""
    uri: Callable[[str], str]
    put: Callable[[str, bytes], None]
    """Write an object (key relative to the bucket) straight into the store."""
    names: Callable[[str], list[str]]
    """The keys under a prefix, as the store itself lists them."""
    missing_bucket: str
    wrong_credentials: WrongCredentials
    """Enter: the environment (or a mounted Secret) holds credentials the store refuses;
    yields (Access to use, a secret value that must appear in no text, cause in message)."""
    cannot: dict[str, str] = field(default_factory=dict)
    """Guarantee name -> why this store's emulator cannot show it (skipped, said)."""

    def skip_unless(self, guarantee: str) -> None:
        if guarantee in self.cannot:
            pytest.skip(f"{self.scheme}: {self.cannot[guarantee]}")


# --------------------------------------------------------------------------- stores


@pytest.fixture
def s3_store(s3_env: Any) -> StoreUnderTest:
    from s3_server import TEST_KEY_ID

    @contextlib.contextmanager
    def wrong(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
        bad = "wrong-secret-value-123456789"
        with s3_env.server.enforcing_auth() as keys:
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys.access_key_id)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", bad)
            yield Access(None, 60), bad, "SignatureDoesNotMatch"
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_KEY_ID)

    return StoreUnderTest(
        scheme="s3",
        module=s3_module,
        server=s3_env.server,
        uri=s3_env.uri,
        put=lambda key, data: s3_env.client.put_object(Bucket=s3_env.bucket, Key=key, Body=data),
        names=s3_env.objects,
        missing_bucket="s3://no-such-bucket-here/job",
        wrong_credentials=wrong,
    )


@pytest.fixture
def gs_store(gcs_env: Any) -> StoreUnderTest:
    from gcs_server import OAuthRefusal, service_account_key

    @contextlib.contextmanager
    def wrong(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
        refusal = OAuthRefusal()
        key = service_account_key(refusal.url)
        mounted = root / "secrets" / "gcs-key"
        mounted.mkdir(parents=True)
        (mounted / gcs_module.SERVICE_ACCOUNT_KEY).write_text(json.dumps(key, indent=2))
        try:
            # A line from the middle of the private key: no text may quote any of it.
            yield (
                Access("gcs-key", 60),
                key["private_key"].splitlines()[5],
                "HTTP 401: the store does not accept these credentials",
            )
        finally:
            refusal.close()

    return StoreUnderTest(
        scheme="gs",
        module=gcs_module,
        server=gcs_env.server,
        uri=gcs_env.uri,
        put=lambda key, data: gcs_env.server.put(gcs_env.bucket, key, data),
        names=gcs_env.objects,
        missing_bucket="gs://no-such-bucket-here/job",
        wrong_credentials=wrong,
    )


@pytest.fixture
def az_store(azure_env: Any) -> StoreUnderTest:
    from azurite_server import ACCOUNT_KEY

    @contextlib.contextmanager
    def wrong(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
        bad = base64.b64encode(b"not the account key, 32 bytes!!").decode()
        mounted = root / "secrets" / "azure-creds"
        mounted.mkdir(parents=True)
        (mounted / az_module.CONNECTION_STRING).write_text(
            azure_env.server.connection_string.replace(ACCOUNT_KEY, bad)
        )
        # Azure answers AuthenticationFailed, Azurite AuthorizationFailure: both 403.
        yield Access("azure-creds", 60), bad, "(HTTP 403)"

    return StoreUnderTest(
        scheme="az",
        module=az_module,
        server=azure_env.server,
        uri=azure_env.uri,
        put=lambda key, data: azure_env.client.upload_blob(key, data, overwrite=True),
        names=azure_env.objects,
        missing_bucket="az://no-such-bucket-here/job",
        wrong_credentials=wrong,
    )


STORES = ["s3_store", "gs_store", "az_store"]
"""The fixtures of the stores under contract; a new store adds its fixture's name."""


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest) -> StoreUnderTest:
    found: StoreUnderTest = request.getfixturevalue(request.param)
    return found


# --------------------------------------------------------------------------- helpers


def stage(root: Path, big: int = 0) -> Path:
    """An artifact set with a manifest (sizes and sha256), like stage_artifacts writes;
    ``big``: the size of one more file (to cross a multipart threshold). The stores'
    own tests (test_s3.py, test_azure.py) stage and verify with these too."""
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
        {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for rel, data in sorted(files.items())
    ]
    (root / MANIFEST).write_text(json.dumps({"files": entries}))
    return root


def verify(uri: str) -> Any:
    return CliRunner().invoke(app, ["verify", uri], catch_exceptions=False)


def write_secret(root: Path, name: str, values: dict[str, str]) -> None:
    """A credentials Secret as the pod mounts it under ``root/secrets``."""
    directory = root / "secrets" / name
    directory.mkdir(parents=True)
    for key, value in values.items():
        (directory / key).write_text(value + "\n")  # kubectl-created files may end so


# --------------------------------------------------------------------------- objects


def test_put_get_list_exists_delete(store: StoreUnderTest, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(bytes(range(256)) * 100)
    out = open_store(store.uri("job"))

    out.put_file(src, "a/b.bin")
    out.put_file(src, "c.bin")
    out.get_file("a/b.bin", tmp_path / "back.bin")

    assert (tmp_path / "back.bin").read_bytes() == src.read_bytes()
    assert [(o.key, o.size) for o in out.list()] == [("a/b.bin", 25600), ("c.bin", 25600)]
    assert [o.key for o in out.list("a")] == ["a/b.bin"]
    assert store.names("job/") == ["job/a/b.bin", "job/c.bin"]
    assert out.exists("c.bin") and not out.exists("nothing.bin")
    out.delete(["c.bin", "never-there.bin"])
    assert not out.exists("c.bin")
    assert [o.key for o in out.list()] == ["a/b.bin"]


def test_a_download_that_does_not_match_the_stores_checksum_is_refused(
    store: StoreUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put("x/data.bin", b"0123456789")
    out = open_store(store.uri("x"), Access(deadline_seconds=0))
    real_verify = store.module.verify_download

    def flip(path: Path, *args: Any) -> Any:  # a bad disk or proxy, after the transfer
        path.write_bytes(b"0123456788")
        return real_verify(path, *args)

    monkeypatch.setattr(store.module, "verify_download", flip)
    with pytest.raises(StorageError, match=r"differs from the store's"):
        out.get_file("data.bin", tmp_path / "data.bin")
    assert not (tmp_path / "data.bin").exists()


@pytest.mark.parametrize(
    "key", ["../escape.txt", "/abs.txt", "a/%2e%2e/b.txt", "a\\..\\b.txt", "a/../../b.txt", ""]
)
def test_keys_leaving_the_prefix_are_refused(
    store: StoreUnderTest, tmp_path: Path, key: str
) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"x")
    out = open_store(store.uri("job"))
    with pytest.raises(StorageError, match="unsafe storage key"):
        out.put_file(src, key)
    with pytest.raises(StorageError, match="unsafe storage key"):
        out.get_file(key, tmp_path / "out")
    with pytest.raises(StorageError, match="unsafe storage key"):
        out.delete([key])
    assert store.names() == []


# --------------------------------------------------------------------------- publishing


def test_publish_writes_the_manifest_last(store: StoreUnderTest, tmp_path: Path) -> None:
    staging = stage(tmp_path / "staging")
    uri = store.uri("adapters/job")
    out = open_store(uri)
    seen: list[tuple[str, bool]] = []
    real = out.put_file

    def put(src: Path, key: str) -> None:
        # What a reader sees just before each write: no manifest until every file is there.
        seen.append((key, f"adapters/job/{MANIFEST}" in store.names("adapters/job/")))
        real(src, key)

    out.put_file = put  # type: ignore[method-assign]
    publish_dir(staging, out)

    assert [k for k, _ in seen][-1] == MANIFEST
    assert not any(had_manifest for _, had_manifest in seen)
    assert len(store.names("adapters/job/")) == 5
    assert verify(uri).exit_code == 0


def test_publish_rides_out_an_outage_shorter_than_the_deadline(
    store: StoreUnderTest, tmp_path: Path, caplog: Any
) -> None:
    store.skip_unless("outage")
    staging = stage(tmp_path / "staging")
    uri = store.uri("job")
    out = open_store(uri, Access(deadline_seconds=20))
    calls: list[str] = []
    real = out.put_file

    def put(src: Path, key: str) -> None:
        calls.append(key)
        if len(calls) == 2:
            store.server.outage(3)
        real(src, key)

    out.put_file = put  # type: ignore[method-assign]
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="finetune_trainer"):
        publish_dir(staging, out)
    assert time.monotonic() - started >= 3
    assert any("retrying in" in r.getMessage() for r in caplog.records)
    assert verify(uri).exit_code == 0


def test_publish_fails_cleanly_when_the_outage_outlasts_the_deadline(
    store: StoreUnderTest, tmp_path: Path, caplog: Any
) -> None:
    store.skip_unless("outage")
    staging = stage(tmp_path / "staging")
    uri = store.uri("job")
    publish_dir(staging, open_store(uri))  # an older complete set is there
    out = open_store(uri, Access(deadline_seconds=3))
    calls: list[str] = []
    real = out.put_file

    def put(src: Path, key: str) -> None:
        calls.append(key)
        if len(calls) == 2:
            store.server.outage(None)
        real(src, key)

    out.put_file = put  # type: ignore[method-assign]
    started = time.monotonic()
    try:
        with (
            caplog.at_level(logging.WARNING, logger="finetune_trainer"),
            pytest.raises(StorageUnavailable) as info,  # exit 7: a later attempt may succeed
        ):
            publish_dir(staging, out)
        elapsed = time.monotonic() - started
    finally:
        store.server.end_outage()
    assert str(info.value).startswith(store.uri("job/"))
    assert "retry deadline 3s" in str(info.value)
    assert "retryDeadlineSeconds" in str(info.value)
    # Retried, then given up no later than the deadline allows. Not "after at least N s":
    # the policy stops as soon as the next (jittered, up to 2**n/2 s) wait would cross the
    # deadline, which against a refusing port can be well under a second in.
    assert any("retrying in" in r.getMessage() for r in caplog.records)
    assert elapsed < 15
    # Neither the old manifest (removed first) nor a new one: incomplete, as verify says.
    assert f"job/{MANIFEST}" not in store.names("job/")
    assert verify(uri).exit_code == 1


# --------------------------------------------------------------------------- refusals


def test_a_missing_bucket_fails_at_once_naming_the_uri(
    store: StoreUnderTest, tmp_path: Path
) -> None:
    staging = stage(tmp_path / "staging")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        publish_dir(staging, open_store(store.missing_bucket, Access(None, 60)))
    assert time.monotonic() - started < 5, "a permanent error must not wait for the deadline"
    assert str(info.value).startswith(store.missing_bucket + "/")
    assert re.search(r"check the (bucket|container) name", str(info.value))
    assert info.value.exit_code == 5


def test_a_missing_dataset_object_fails_at_once_naming_it(store: StoreUnderTest) -> None:
    uri = store.uri("sets/no-such.jsonl")
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        fetch_file(uri, Role.DATASET, Access(None, 60))
    assert time.monotonic() - started < 5
    assert str(info.value).startswith(uri) and "404" in str(info.value)


def test_wrong_credentials_name_the_uri_and_the_cause_without_the_secret(
    store: StoreUnderTest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    staging = stage(tmp_path / "staging")
    with store.wrong_credentials(tmp_path, monkeypatch) as (access, secret, cause):
        started = time.monotonic()
        with caplog.at_level(logging.DEBUG), pytest.raises(StorageError) as info:
            publish_dir(staging, open_store(store.uri("job"), access))
        elapsed = time.monotonic() - started
    message = str(info.value)
    assert message.startswith(store.uri("job/"))
    assert cause in message
    assert elapsed < 10
    assert secret not in message
    assert not [r for r in caplog.records if secret in r.getMessage()]


# --------------------------------------------------------------------------- leases


def test_the_lease_is_exclusive_and_released(store: StoreUnderTest, tmp_path: Path) -> None:
    uri = store.uri("job")
    store.put("job/keep.txt", b"x")
    with open_store(uri).lease(Holder("run-a")):
        assert open_store(uri).exists(LEASE)
        busy = pytest.raises(OutputBusy, match=rf"{re.escape(uri)}: another run .*run run-a")
        with busy as caught, open_store(uri).lease(Holder("run-b")):
            pass
        assert caught.value.exit_code == 5
        assert lease_body(store, tmp_path)["run"] == "run-a"  # untouched
    assert not open_store(uri).exists(LEASE)
    with open_store(uri).lease(Holder("run-b")):  # free again
        pass


# --------------------------------------------------------------------------- reading


def test_a_model_prefix_is_downloaded_once_and_served_from_the_cache(
    store: StoreUnderTest, tiny_model_dir: Path, tmp_path: Path, caplog: Any
) -> None:
    for path in sorted(tiny_model_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(tiny_model_dir).as_posix()
            store.put(f"models/tiny/{rel}", path.read_bytes())
    uri = store.uri("models/tiny")

    local = fetch_model_dir(uri, None, Access(None, 30))
    expected = {
        p.relative_to(tiny_model_dir).as_posix(): p.read_bytes()
        for p in tiny_model_dir.rglob("*")
        if p.is_file()
    }
    got = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    assert got == expected
    assert tmp_path / "cache" in local.parents  # FINETUNE_CACHE_DIR
    assert fetch_model_dir(uri, None, Access(None, 30)) == local  # unchanged: the same entry

    store.server.outage(None)  # unreachable: the cached copy, at once
    try:
        started = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="finetune_trainer"):
            assert fetch_model_dir(uri, None, Access(None, 30)) == local
        assert time.monotonic() - started < 10, "a cached model does not wait out the deadline"
        assert any("using the cached copy" in r.getMessage() for r in caplog.records)
    finally:
        store.server.end_outage()


def test_the_planner_reads_a_models_metadata_without_its_weights(
    store: StoreUnderTest, tiny_model_dir: Path
) -> None:
    from finetune_trainer.planning import model_metadata_dir

    for path in sorted(tiny_model_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(tiny_model_dir).as_posix()
            store.put(f"models/tiny/{rel}", path.read_bytes())
    local = model_metadata_dir(store.uri("models/tiny"), None, Access())
    names = {p.name for p in local.iterdir()}
    assert "config.json" in names
    assert not [n for n in names if n.endswith(".safetensors")], "the weights were downloaded"


def test_a_dataset_file_comes_through_fetch_file(store: StoreUnderTest) -> None:
    rows = b'{"prompt": "a", "completion": "b"}\n' * 3
    store.put("sets/train.jsonl", rows)
    local = fetch_file(store.uri("sets/train.jsonl"), Role.DATASET)
    assert local.read_bytes() == rows
    assert fetch_file(store.uri("sets/train.jsonl"), Role.DATASET) == local


# --------------------------------------------------------------------------- lease lifecycle


def lease_body(store: StoreUnderTest, tmp_path: Path) -> dict[str, Any]:
    """The lease object as the store holds it now."""
    local = tmp_path / f"lease-{time.monotonic_ns()}.json"
    open_store(store.uri("job")).get_file(LEASE, local)
    body: dict[str, Any] = json.loads(local.read_bytes())
    return body


def test_a_lease_is_renewed_while_held_and_taken_over_once_it_lapses(
    store: StoreUnderTest, tmp_path: Path
) -> None:
    holder = open_store(store.uri("job"))
    holder.lease_seconds = 0.8  # type: ignore[attr-defined]  # renewed every 0.2 s
    with holder.lease(Holder("run-a")):
        first = lease_body(store, tmp_path)["expires"]
        time.sleep(1.2)
        assert lease_body(store, tmp_path)["expires"] > first + 0.3  # renewed
    # A holder killed -9 renews nothing: its lease lapses and is taken over.
    lapsed = {"run": "dead-run", "process": "h:1", "since": 0, "expires": time.time() - 1}
    store.put(f"job/{LEASE}", json.dumps(lapsed).encode())
    with open_store(store.uri("job")).lease(Holder("run-b")):
        assert lease_body(store, tmp_path)["run"] == "run-b"


def test_the_same_run_restarted_takes_its_lease_over(store: StoreUnderTest, tmp_path: Path) -> None:
    alive = {"run": "job-uid", "process": "old-pod:1", "since": 0, "expires": time.time() + 600}
    store.put(f"job/{LEASE}", json.dumps(alive).encode())
    with open_store(store.uri("job")).lease(Holder("job-uid", "new-pod:1")):
        assert lease_body(store, tmp_path)["process"] == "new-pod:1"


def test_a_lease_taken_over_by_another_run_fails_the_holder(
    store: StoreUnderTest, tmp_path: Path
) -> None:
    holder = open_store(store.uri("job"))
    holder.lease_seconds = 0.8  # type: ignore[attr-defined]
    with (
        pytest.raises(StorageError, match="lost the output's lease"),
        holder.lease(Holder("run-a")),
    ):
        thief = {"run": "run-x", "process": "h:2", "since": 0, "expires": time.time() + 600}
        store.put(f"job/{LEASE}", json.dumps(thief).encode())
        time.sleep(1.0)  # five renewal periods: the next renewal finds the thief's
    assert lease_body(store, tmp_path)["run"] == "run-x"  # not deleted by the loser


# --------------------------------------------------------------------------- a run


def test_finetune_run_reads_and_publishes_through_the_store(
    store: StoreUnderTest, make_job: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """`finetune run` with the model, the dataset and the output all in the store, found
    through the environment a pod would have: the model prefix and the dataset come
    through the download cache, and the output holds a set `finetune verify` accepts."""
    for path in sorted(tiny_model_dir.rglob("*")):
        if path.is_file():
            rel = path.relative_to(tiny_model_dir).as_posix()
            store.put(f"models/tiny/{rel}", path.read_bytes())
    job = make_job(
        model={"uri": store.uri("models/tiny")},
        output={"uri": store.uri("adapters/tiny"), "retryDeadlineSeconds": 30},
    )
    for name in ("train.jsonl", "validation.jsonl"):
        store.put(f"sets/{name}", (tmp_path / name).read_bytes())
        job.write_text(
            job.read_text().replace(f"file://{tmp_path / name}", store.uri(f"sets/{name}"))
        )
    assert "file://" not in job.read_text()

    result = CliRunner().invoke(app, ["run", str(job), "--max-steps", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    names = {k.removeprefix("adapters/tiny/") for k in store.names("adapters/tiny/")}
    assert {"adapter_model.safetensors", "adapter_config.json", "metrics.json", MANIFEST} <= names
    open_store(store.uri("adapters/tiny")).get_file(MANIFEST, tmp_path / "manifest.json")
    manifest = json.loads((tmp_path / "manifest.json").read_bytes())
    assert manifest["baseModel"] == store.uri("models/tiny")
    assert manifest["spec"]["dataset"]["train"] == store.uri("sets/train.jsonl")
    # Checkpoints (if the run wrote any) are their own sets; the artifact set is the rest.
    listed = {f["path"] for f in manifest["files"]}
    assert listed == {n for n in names if not n.startswith("checkpoints/")} - {MANIFEST}
    assert LEASE not in names  # released when the run ended

    assert verify(store.uri("adapters/tiny")).exit_code == 0
    downloads = tmp_path / "cache" / "downloads" / store.scheme
    assert len(list(downloads.glob("*/*/config.json"))) == 1
    assert len(list(downloads.glob("*/*/train.jsonl"))) == 1
