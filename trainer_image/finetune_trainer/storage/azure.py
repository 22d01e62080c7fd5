"""az:// storage: Azure Blob Storage (and Azurite, its emulator).

``az://<container>/<key>`` names a blob in a container; the storage account is not in
the URI (as adlfs and the Azure CLI write it) but in the credentials, so one manifest
runs against any account its Secret points at. The credentials, from the mounted
Secret named by ``credentialsSecret`` or else from the environment (same names):

* ``AZURE_STORAGE_CONNECTION_STRING``: the account, its key or a SAS, and the endpoint
  (the one form that can name a non-Azure endpoint, such as Azurite's); or
* ``AZURE_STORAGE_ACCOUNT_NAME`` with ``AZURE_STORAGE_ACCOUNT_KEY`` or
  ``AZURE_STORAGE_SAS_TOKEN``; or
* ``AZURE_STORAGE_ACCOUNT_NAME`` alone: ``DefaultAzureCredential`` (azure-identity), which
  reads AKS workload identity (``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``,
  ``AZURE_FEDERATED_TOKEN_FILE``), a managed identity, or ``az login``.

Built on azure-storage-blob, the SDK adlfs wraps: the store's operations need what the
fsspec layer does not expose (conditional writes for the lease, the blob's Content-MD5,
listings without fsspec's directory cache), and streaming reads (``open_stream``) go
through adlfs's file objects. The policy is the S3 store's (:mod:`.s3`):

* Retry by deadline: connection errors, timeouts, 429 and 5xx are retried with
  exponential backoff and jitter until the job's retry deadline; anything else (no such
  container or blob, authentication) fails at once naming the URI and the likely fix.
* Verified downloads: the size, and the content against the blob's Content-MD5 when it
  has one (every upload here sets it, so a published set is always checkable).
* Manifest last (``store.publish_dir``), and one writer per output through a lease blob
  created only if absent and renewed only if unchanged (ETag conditions).
* No secrets in text: every value read is registered with the redaction layer.
"""

from __future__ import annotations

import builtins
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from finetune_api.redaction import register
from finetune_api.uri import ParsedUri
from finetune_trainer.errors import StorageError
from finetune_trainer.storage.credentials import _check_one_line, _seconds, read_secret
from finetune_trainer.storage.object_store import LEASE_SECONDS as LEASE_SECONDS
from finetune_trainer.storage.object_store import (
    Errors,
    ObjectBackend,
    ObjectStore,
    RetryingClient,
    split_location,
)
from finetune_trainer.storage.object_store import model_files as _model_files
from finetune_trainer.storage.store import Access

log = logging.getLogger(__name__)

CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_NAME = "AZURE_STORAGE_ACCOUNT_NAME"
ACCOUNT_KEY = "AZURE_STORAGE_ACCOUNT_KEY"
SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"
AZURE_SECRET_KEYS = (CONNECTION_STRING, ACCOUNT_NAME, ACCOUNT_KEY, SAS_TOKEN)
"""The keys of a credentials Secret (or environment variables) the az:// store reads."""
CONNECT_TIMEOUT_ENV = "FINETUNE_AZURE_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "FINETUNE_AZURE_READ_TIMEOUT"
SDK_RETRIES = 0
"""The SDK's own retries per request: none, so that every retry is ours, bounded by the
job's retry deadline and logged."""
SINGLE_PUT_BYTES = 64 * 1024 * 1024
"""Files above this are uploaded in blocks (Put Block + Put Block List), in parallel."""
BLOCK_BYTES = 16 * 1024 * 1024
"""The block size: 50,000 blocks (Azure's limit) of 16 MiB allow files up to 780 GiB."""
CACHE_SCHEME = "az"

_NO_CREDENTIALS = (
    f"set {CONNECTION_STRING}, or {ACCOUNT_NAME} with {ACCOUNT_KEY} or {SAS_TOKEN} "
    f"(or {ACCOUNT_NAME} alone for workload identity), in the credentials Secret or the "
    "environment"
)
HINTS = {
    "ContainerNotFound": "the container does not exist: check the container name in the URI "
    "and that the credentials name the storage account that holds it",
    "BlobNotFound": "no blob at this key: check the URI",
    "ResourceNotFound": "no such container or blob: check the URI",
    "AuthenticationFailed": "the account does not accept these credentials: check the key, "
    f"SAS token or connection string ({_NO_CREDENTIALS})",
    "AuthorizationFailure": "the request was refused: the key, SAS token or connection "
    "string is wrong, or these credentials may not use this container",
    "AuthorizationPermissionMismatch": "access denied: grant the identity 'Storage Blob Data "
    "Contributor' on the container (or a SAS with read, write, list and delete)",
    "InvalidAuthenticationInfo": f"the credentials are malformed: {_NO_CREDENTIALS}",
    "NoCredentials": f"no credentials were found: {_NO_CREDENTIALS}",
}
_STATUS_HINTS = {
    403: "access denied: check the credentials, and that they may use this container",
    404: "no such container or blob: check the URI and the storage account",
}


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AzureSettings:
    """How to reach the storage account; credentials hidden from ``repr``."""

    account_name: str | None = None
    source: str = "the environment"
    """Where the credentials come from, for messages (never the values)."""
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    connection_string: str | None = field(default=None, repr=False)
    account_key: str | None = field(default=None, repr=False)
    sas_token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        values = [self.connection_string, self.account_key, self.sas_token]
        return [v for v in values if v] + connection_string_secrets(self.connection_string)

    @property
    def endpoint(self) -> str:
        """The blob endpoint, for messages: no key, no SAS."""
        parts = parse_connection_string(self.connection_string or "")
        if parts.get("BlobEndpoint"):
            return parts["BlobEndpoint"].split("?")[0]
        account = parts.get("AccountName") or self.account_name or "<account>"
        suffix = parts.get("EndpointSuffix", "core.windows.net")
        return f"https://{account}.blob.{suffix}"

    def service_client(self) -> Any:
        """A synchronous ``BlobServiceClient`` for these settings."""
        from azure.storage.blob import BlobServiceClient

        options: dict[str, Any] = {
            "connection_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "retry_total": SDK_RETRIES,
            "max_single_put_size": SINGLE_PUT_BYTES,
            "max_block_size": BLOCK_BYTES,
            "user_agent": "finetune-operator",
        }
        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string, **options)
        return BlobServiceClient(self.endpoint, credential=self._credential(), **options)

    def _credential(self) -> Any:
        if self.account_key:
            return {"account_name": self.account_name, "account_key": self.account_key}
        if self.sas_token:
            return self.sas_token
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def filesystem(self) -> Any:
        """An adlfs ``AzureBlobFileSystem`` for these settings (streaming reads)."""
        from adlfs import AzureBlobFileSystem  # type: ignore[import-untyped]

        options: dict[str, Any] = {"skip_instance_cache": True}
        if self.connection_string:
            options["connection_string"] = self.connection_string
        else:
            options["account_name"] = self.account_name
            if self.account_key:
                options["account_key"] = self.account_key
            elif self.sas_token:
                options["sas_token"] = self.sas_token
            else:
                options["anon"] = False  # DefaultAzureCredential inside adlfs
        return AzureBlobFileSystem(**options)


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` pairs of an Azure connection string."""
    parts = {}
    for item in text.split(";"):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            parts[name.strip()] = value.strip()
    return parts


def connection_string_secrets(text: str | None) -> list[str]:
    """The secret parts of a connection string (its key, its SAS)."""
    parts = parse_connection_string(text or "")
    return [parts[k] for k in ("AccountKey", "SharedAccessSignature") if parts.get(k)]


def azure_settings(secret_name: str | None) -> AzureSettings:
    """Settings from the mounted Secret ``secret_name``, else from the environment.

    The Secret's keys win as a whole when it holds any: mixing an account from the
    Secret with a key from the environment would authenticate as nobody intended."""
    values = read_secret(secret_name, AZURE_SECRET_KEYS)
    source = f"credentials Secret {secret_name!r}"
    if not values:
        values = {k: os.environ[k].strip() for k in AZURE_SECRET_KEYS if os.environ.get(k)}
        source = "the environment"
        for name, value in values.items():
            _check_one_line(value, f"environment variable {name}")
    for name, value in values.items():
        if name != ACCOUNT_NAME:
            register(value)
    connection = values.get(CONNECTION_STRING)
    register(*connection_string_secrets(connection))
    account = values.get(ACCOUNT_NAME) or parse_connection_string(connection or "").get(
        "AccountName"
    )
    if not connection and not account:
        if values:
            raise StorageError(
                f"the {source} holds {', '.join(sorted(values))} but no storage account: "
                f"add {ACCOUNT_NAME} (or use {CONNECTION_STRING})"
            )
        raise StorageError(f"az:// needs a storage account: {_NO_CREDENTIALS}")
    if connection and not parse_connection_string(connection):
        raise StorageError(
            f"{CONNECTION_STRING} in the {source} is not a connection string "
            "(AccountName=...;AccountKey=...;...): copy it from the storage account's "
            "'Access keys' page"
        )
    return AzureSettings(
        account_name=account,
        source=source
        if (connection or values.get(ACCOUNT_KEY) or values.get(SAS_TOKEN))
        else f"workload identity (DefaultAzureCredential) for account {account!r}",
        connect_timeout=_seconds(CONNECT_TIMEOUT_ENV, 10.0),
        read_timeout=_seconds(READ_TIMEOUT_ENV, 60.0),
        connection_string=connection,
        account_key=values.get(ACCOUNT_KEY),
        sas_token=values.get(SAS_TOKEN),
    )


# --------------------------------------------------------------------------- errors


def status_of(exc: BaseException) -> tuple[str, int | None]:
    """An Azure error's code and HTTP status; ('', None) for anything else."""
    from azure.core.exceptions import HttpResponseError

    if not isinstance(exc, HttpResponseError):
        return "", None
    code = getattr(exc, "error_code", None)  # set by the storage SDK's error handler
    text = str(getattr(code, "value", code) or "")
    return text, exc.status_code


def is_transient(exc: BaseException) -> bool:
    """Worth trying again: the network or the service's load, not the request itself."""
    from azure.core.exceptions import (
        IncompleteReadError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ServiceRequestError | ServiceResponseError | IncompleteReadError):
        return True
    if isinstance(exc, builtins.ConnectionError | TimeoutError):
        return True
    _, status = status_of(exc)
    return status is not None and (status == 429 or status >= 500)


def describe(exc: BaseException) -> str:
    from azure.core.exceptions import ClientAuthenticationError

    code, status = status_of(exc)
    if code or status:
        return f"{code or 'HTTP error'} (HTTP {status})"
    if isinstance(exc, ClientAuthenticationError):
        return "NoCredentials"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def hint(exc: BaseException) -> str:
    from azure.core.exceptions import ClientAuthenticationError

    code, status = status_of(exc)
    if code in HINTS:
        return HINTS[code]
    if status is None and isinstance(exc, ClientAuthenticationError):
        return HINTS["NoCredentials"]
    return _STATUS_HINTS.get(status or 0, "see the service's error code")


def _is_missing(exc: BaseException) -> bool:
    return status_of(exc)[1] == 404


def _is_conflict(exc: BaseException) -> bool:
    return status_of(exc)[1] in (409, 412)


# --------------------------------------------------------------------------- client


def file_md5(path: Path) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _ours(exc: BaseException) -> bool:
    """An SDK (or network) error: made a StorageError; anything else is a bug."""
    from azure.core.exceptions import AzureError

    return isinstance(exc, AzureError | OSError)


class AzureClient(RetryingClient):
    """One container through the blob SDK, every call retried by deadline."""

    errors = Errors(is_transient, describe, hint, _ours, log, reached="the service")
    settings: AzureSettings

    def __init__(self, container: str, settings: AzureSettings, deadline: float) -> None:
        self.container_name = container
        self.settings = settings
        self.deadline = max(0.0, float(deadline))
        self.container = settings.service_client().get_container_client(container)

    @property
    def endpoint(self) -> str:  # type: ignore[override]
        return self.settings.endpoint

    def uri(self, key: str) -> str:
        return f"az://{self.container_name}/{key}"

    # --- operations, each one attempt; callers wrap them in call()

    def upload(self, src: Path, key: str) -> None:
        """``src`` at ``key`` with its Content-MD5, which every later download checks."""
        from azure.storage.blob import ContentSettings

        md5 = bytearray(file_md5(src))
        with src.open("rb") as data:
            self.container.upload_blob(
                key,
                data,
                overwrite=True,
                content_settings=ContentSettings(content_md5=md5),
                max_concurrency=4,
            )

    def head(self, key: str) -> Any:
        return self.container.get_blob_client(key).get_blob_properties()

    def download(self, key: str, dst: Path, etag: str | None = None) -> None:
        """``key`` into ``dst`` through a temporary file, verified against the blob's size
        and Content-MD5; ``etag``: the version the caller expects. A mismatch is fetched
        once more (a flaky proxy or disk), then refused."""
        from azure.core import MatchConditions

        head = self.head(key)
        if etag is not None and _etag(head.etag) != _etag(etag):
            raise StorageError(
                f"{self.uri(key)}: the blob changed while it was being read; run again"
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name[:100]}.partial")
        problem = None
        for _ in range(2):
            try:
                with tmp.open("wb") as out:
                    self.container.download_blob(
                        key, etag=head.etag, match_condition=MatchConditions.IfNotModified
                    ).readinto(out)
                problem = verify_download(tmp, head.size, head.content_settings.content_md5)
                if problem is None:
                    tmp.replace(dst)
                    return
            finally:
                tmp.unlink(missing_ok=True)
        raise StorageError(f"{self.uri(key)}: the download is corrupt: {problem}")

    def objects(self, prefix: str) -> list[tuple[str, int, str]]:
        """(name, size, etag) of every blob under ``prefix``."""
        return [
            (b.name, int(b.size), _etag(b.etag))
            for b in self.container.list_blobs(name_starts_with=prefix or None)
        ]

    def put_body(self, key: str, body: bytes, etag: str | None = None) -> str:
        """PUT ``body`` at ``key`` only if absent (``etag`` None) or still at ``etag``;
        the new ETag. A refused condition is a 409 or 412."""
        from azure.core import MatchConditions

        blob = self.container.get_blob_client(key)
        if etag is None:
            result = blob.upload_blob(body, overwrite=False)
        else:
            result = blob.upload_blob(
                body, overwrite=True, etag=etag, match_condition=MatchConditions.IfNotModified
            )
        return _etag(result["etag"])

    def get_body(self, key: str) -> tuple[bytes, str] | None:
        try:
            stream = self.container.download_blob(key)
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise
        return stream.readall(), _etag(stream.properties.etag)

    def delete_if(self, key: str, etag: str) -> None:
        from azure.core import MatchConditions

        self.container.delete_blob(key, etag=etag, match_condition=MatchConditions.IfNotModified)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.container.delete_blob(key)
            except Exception as exc:
                if not _is_missing(exc) or status_of(exc)[0] == "ContainerNotFound":
                    raise


def _etag(value: object) -> str:
    """An ETag without its quotes: a listing gives them bare, a HEAD quoted."""
    return str(value).strip('"')


def verify_download(path: Path, size: int, md5: bytes | bytearray | None) -> str | None:
    """Why ``path`` is not the blob (``size``, ``md5``: its Content-MD5), or None."""
    actual = path.stat().st_size
    if actual != size:
        return f"downloaded {actual} bytes, the service lists {size}"
    if md5 and file_md5(path) != bytes(md5):
        return "MD5 differs from the store's Content-MD5 of the blob"
    return None


# --------------------------------------------------------------------------- store


class AzureStore(ObjectStore[tuple[str, int, str]]):
    """An ``az://container/prefix`` output location as a :class:`~.object_store.ObjectStore`:
    its lease blob is created only if absent and renewed only if unchanged (ETags).

    Not Azure's own blob leases: those last at most 60 s or forever, and one that is
    forever outlives a killed pod; an expiry we write ourselves lapses."""

    noun = "blob"

    def entry(self, raw: tuple[str, int, str]) -> tuple[str, int]:
        return raw[0], raw[1]

    def is_conflict(self, exc: BaseException) -> bool:
        return _is_conflict(exc)

    def is_absent(self, exc: BaseException) -> bool:
        return _is_missing(exc) and status_of(exc)[0] != "ContainerNotFound"

    def lease_gone(self, exc: BaseException) -> bool:
        return _is_conflict(exc) or _is_missing(exc)


# --------------------------------------------------------------------------- backend


class AzureBackend(ObjectBackend[AzureClient, tuple[str, int, str]]):
    """The ``az`` registry entry: models and datasets through the cache (keyed by ETags),
    outputs as stores."""

    scheme = CACHE_SCHEME
    errors = AzureClient.errors
    noun = "blob"

    def client(self, container: str, access: Access) -> AzureClient:
        return AzureClient(
            container, azure_settings(access.credentials_secret), access.deadline_seconds
        )

    def store(self, uri: ParsedUri, access: Access) -> AzureStore:
        container, prefix = split_location(uri.location)
        return AzureStore(str(uri), self.client(container, access), prefix)

    def open_stream(self, uri: ParsedUri, access: Access) -> IO[bytes]:
        """The blob at ``uri`` as a file read sequentially (adlfs, ranged GETs), for a
        streamed dataset that is never downloaded whole."""
        container, key = split_location(uri.location)
        settings = azure_settings(access.credentials_secret)
        client = AzureClient(container, settings, access.deadline_seconds)
        client.call("read", key, lambda: client.head(key))  # a missing blob fails here, named
        handle: IO[bytes] = settings.filesystem().open(f"{container}/{key}", "rb")
        return handle

    def head_version(self, head: Any) -> tuple[str | None, list[Any]]:
        etag = _etag(head.etag)
        return etag, [etag, head.size]

    def entry_name(self, entry: tuple[str, int, str]) -> str:
        return entry[0]

    def entry_version(self, rel: str, entry: tuple[str, int, str]) -> tuple[str | None, list[Any]]:
        return entry[2], [rel, entry[1], entry[2]]


def model_files(
    uri: str, listed: list[tuple[str, int, str]], prefix: str
) -> list[tuple[str, int, str]]:
    """The blobs of a model prefix with safe relative keys; any other key is refused."""
    files = _model_files(uri, listed, prefix, lambda blob: blob[0], noun="blob")
    return [(rel, size, etag) for rel, (_, size, etag) in files]
