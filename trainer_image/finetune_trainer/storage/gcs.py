"""gs:// storage: Google Cloud Storage, through gcsfs (fsspec) and GCS's JSON API.

gcsfs brings the authentication (a service-account key, or Application Default
Credentials: workload identity on GKE, ``GOOGLE_APPLICATION_CREDENTIALS``, the metadata
server), resumable uploads and ranged reads. What this module adds is the same policy
as ``s3``, so that a gs:// output keeps every guarantee an s3:// one does:

* Retry by deadline. Each request is made once (gcsfs's own six retries with up to 32 s
  of sleep are switched off, :class:`_OneAttemptFileSystem`), and transient failures
  (connection refused/reset, timeouts, 408, 429, 5xx) are retried with exponential
  backoff and full jitter until ``retryDeadlineSeconds``; anything else (no such bucket
  or object, 401/403, a malformed key) fails at once naming the URI.
* Verified downloads into the URI+generation-keyed cache (:mod:`.cache`): the size, then
  the object's ``md5Hash`` (or ``crc32c`` for composite objects, which have no MD5).
* Leases with generation preconditions, GCS's conditional writes: the lease object is
  created with ``ifGenerationMatch=0`` (only if absent) and renewed, taken over or
  deleted with ``ifGenerationMatch=<its generation>``; a lost race answers 412.
* Credentials: key ``service-account.json`` of the location's credentialsSecret (a
  service-account key file, ``kubectl create secret generic gcs
  --from-file=service-account.json=key.json``), else Application Default Credentials
  (workload identity). ``STORAGE_EMULATOR_HOST`` (the variable Google's own libraries
  honour; also read from the Secret) points every request at an emulator, which needs no
  credentials. The key's secret parts are registered with the redaction layer as soon
  as they are read, and no message carries them.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import io
import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import quote

from finetune_api.redaction import register
from finetune_api.uri import ParsedUri
from finetune_trainer.errors import StorageError
from finetune_trainer.storage.credentials import read_secret, secrets_root
from finetune_trainer.storage.object_store import LEASE_SECONDS as LEASE_SECONDS
from finetune_trainer.storage.object_store import (
    Errors,
    ObjectBackend,
    ObjectStore,
    RetryingClient,
    split_location,
)
from finetune_trainer.storage.store import Access

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_KEY = "service-account.json"
"""The key of a credentials Secret holding a service-account key file (JSON)."""
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
"""An emulator's address (``http://host:port``), as Google's client libraries read it."""
PROJECT_KEY = "GOOGLE_CLOUD_PROJECT"
READ_BLOCK = 16 * 1024 * 1024
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})

HINTS = {
    404: "no such bucket or object: check the bucket name and the key in the URI, and that "
    "STORAGE_EMULATOR_HOST (if set) points at the store that holds them",
    403: "access denied: the credentials are valid but may not use this bucket or prefix; "
    "grant roles/storage.objectAdmin (or storage.objects.get/list/create/delete) on it",
    401: "the store does not accept these credentials: check key service-account.json of the "
    "credentials Secret, or the workload identity's service account",
    400: "the store rejected the request as malformed: check the bucket name and the key",
}
NO_CREDENTIALS = (
    "no usable Google credentials: name a credentials Secret holding key "
    "service-account.json, or give the pod a workload identity (or set "
    "GOOGLE_APPLICATION_CREDENTIALS locally)"
)


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GcsSettings:
    """How to reach GCS; the key's secret parts are hidden from ``repr``."""

    endpoint_url: str | None = None
    project: str | None = None
    source: str = "Application Default Credentials (workload identity)"
    """Where the credentials come from, for messages (never the values)."""
    token: Any = field(default="google_default", repr=False)
    """gcsfs's ``token``: a service-account key (dict), ``google_default`` or ``anon``."""

    def secrets(self) -> list[str]:
        if not isinstance(self.token, dict):
            return []
        return [str(self.token[k]) for k in ("private_key", "private_key_id") if self.token.get(k)]


def gcs_settings(secret_name: str | None) -> GcsSettings:
    """Settings from the mounted Secret ``secret_name`` over the environment."""
    values = read_secret(secret_name, (EMULATOR_ENV, PROJECT_KEY))
    endpoint = values.get(EMULATOR_ENV) or os.environ.get(EMULATOR_ENV) or None
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"  # Google's libraries accept host:port too
    project = values.get(PROJECT_KEY) or os.environ.get(PROJECT_KEY) or None
    key = _service_account(secret_name)
    if key is not None:
        return GcsSettings(
            endpoint, project or key.get("project_id"), f"credentials Secret {secret_name!r}", key
        )
    if endpoint:
        return GcsSettings(endpoint, project, f"none (emulator at {endpoint})", "anon")
    return GcsSettings(endpoint, project)


def _service_account(secret_name: str | None) -> dict[str, Any] | None:
    """The service-account key in the Secret, registered with the redaction layer and
    checked to be one (a key that does not parse fails here, before any request, naming
    the Secret and the key but quoting nothing of it); None when there is none."""
    if not secret_name:
        return None
    path = secrets_root() / secret_name / SERVICE_ACCOUNT_KEY
    if not path.is_file():
        return None
    text = path.read_text()
    where = f"key {SERVICE_ACCOUNT_KEY} of credentials Secret {secret_name!r}"
    try:
        info = json.loads(text)
    except ValueError:
        register(text.strip())
        raise StorageError(
            f"the {where} is not JSON; it must hold a service-account key file as Google "
            "Cloud writes it (kubectl create secret generic NAME "
            "--from-file=service-account.json=key.json)"
        ) from None
    if not isinstance(info, dict):
        raise StorageError(f"the {where} is not a service-account key (a JSON object)")
    for name in ("private_key", "private_key_id"):
        if info.get(name):
            register(str(info[name]))
    problem = _key_problem(info)
    if problem:
        raise StorageError(
            f"the {where} is not a usable service-account key ({problem}); download a new "
            "key for the service account (gcloud iam service-accounts keys create)"
        )
    return info


def _key_problem(info: dict[str, Any]) -> str | None:
    if info.get("type") != "service_account":
        return "its type is not service_account"
    missing = [k for k in ("client_email", "private_key", "token_uri") if not info.get(k)]
    if missing:
        return "it lacks " + ", ".join(missing)
    from google.oauth2 import service_account

    try:
        service_account.Credentials.from_service_account_info(info)  # type: ignore[no-untyped-call]
    except (ValueError, TypeError, IndexError):
        return "its private_key does not parse"
    return None


# --------------------------------------------------------------------------- errors


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = 0
    current: BaseException | None = exc
    while current is not None and seen < 10:
        yield current
        current, seen = current.__cause__ or current.__context__, seen + 1


def status_of(exc: BaseException) -> int | None:
    """The HTTP status behind a gcsfs error (it maps 404 to FileNotFoundError, 412 to
    FileExistsError, 403 to an OSError 'Forbidden', 400 to ValueError); None if none."""
    from gcsfs.retry import HttpError  # type: ignore[import-untyped]

    for cause in _chain(exc):
        if isinstance(cause, HttpError) and cause.code is not None:
            return int(cause.code)
        if isinstance(cause, FileNotFoundError):
            return 404
        if isinstance(cause, FileExistsError):
            return 412
        if isinstance(cause, OSError) and str(cause).startswith("Forbidden"):
            return 403
        if isinstance(cause, ValueError) and str(cause).startswith("Bad Request"):
            return 400
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth trying again: the network or the store's load, not the request itself."""
    import aiohttp
    import requests
    from gcsfs.retry import ChecksumError

    for cause in _chain(exc):
        if isinstance(cause, aiohttp.ClientResponseError):
            return cause.status in TRANSIENT_STATUS
        if isinstance(cause, aiohttp.ClientError | ChecksumError | TimeoutError):
            return True
        if isinstance(cause, requests.ConnectionError | requests.Timeout):
            return True  # gcsfs raises requests' ProxyError for a 502
        if isinstance(cause, builtins.ConnectionError):
            return True
    status = status_of(exc)
    return status is not None and status in TRANSIENT_STATUS


def describe(exc: BaseException) -> str:
    """What went wrong in a few words: the HTTP status, or the error's type."""
    status = status_of(exc)
    if status is not None:
        return f"HTTP {status}"
    for cause in _chain(exc):
        if type(cause).__module__.startswith(("google.auth", "aiohttp")):
            text = str(cause).splitlines()[0] if str(cause) else ""
            return f"{type(cause).__name__}: {text}" if text else type(cause).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def hint(exc: BaseException) -> str:
    """What to check: by the HTTP status (a key refused when exchanged for a token comes
    back as 401), else, for google-auth's own errors, where credentials come from."""
    from google.auth.exceptions import GoogleAuthError, RefreshError

    status = status_of(exc)
    if status in HINTS:
        return HINTS[status]
    causes = list(_chain(exc))
    if any(isinstance(c, RefreshError) for c in causes):
        return HINTS[401]
    if any(isinstance(c, GoogleAuthError) for c in causes):
        return NO_CREDENTIALS
    return "see the store's error"


# --------------------------------------------------------------------------- client


def _filesystem(settings: GcsSettings) -> Any:
    """gcsfs's core filesystem with one attempt per request (the deadline retries)."""
    from gcsfs.core import GCSFileSystem  # type: ignore[import-untyped]

    class _OneAttemptFileSystem(GCSFileSystem):  # type: ignore[misc]
        # The core class, not gcsfs's default export (ExtendedGcsFileSystem), which asks
        # a gRPC endpoint whether each bucket is zonal and waits 60 s when none answers.
        _request = GCSFileSystem._request.__wrapped__

    return _OneAttemptFileSystem(
        project=settings.project or "finetune-operator",
        token=settings.token,
        endpoint_url=settings.endpoint_url,
        skip_instance_cache=True,
        use_listings_cache=False,
    )


class GcsClient(RetryingClient):
    """One bucket through gcsfs, every call retried by deadline and errors made readable."""

    errors = Errors(is_transient, describe, hint, lambda exc: True, log)
    settings: GcsSettings

    def __init__(self, bucket: str, settings: GcsSettings, deadline: float) -> None:
        self.bucket = bucket
        self.settings = settings
        self.deadline = max(0.0, float(deadline))
        self._fs: Any = None
        self.endpoint = settings.endpoint_url or "https://storage.googleapis.com"

    @property
    def fs(self) -> Any:
        """gcsfs's filesystem, made on first use: inside :meth:`call`, so that finding no
        credentials (google-auth raises while it is made) fails naming the URI and the fix."""
        if self._fs is None:
            self._fs = _filesystem(self.settings)
        return self._fs

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket}/{key}"

    def path(self, key: str) -> str:
        return f"{self.bucket}/{key}"

    # --- operations, each one attempt; callers wrap them in call()

    def upload(self, src: Path, key: str) -> None:
        self.fs.put_file(str(src), self.path(key))

    def head(self, key: str) -> dict[str, Any]:
        """The object resource (size, generation, md5Hash, crc32c), read fresh."""
        found: dict[str, Any] = self.fs.call("GET", "b/{}/o/{}", self.bucket, key, json_out=True)
        return found

    def download(self, key: str, dst: Path, generation: str | None = None) -> None:
        """``key`` into ``dst`` (through a temporary file renamed into place), verified
        against the object's size and checksum; ``generation``: the version the caller
        expects (None: the current one).

        Each attempt reads the generation its metadata describes, so an object replaced
        meanwhile (a lease renewed, a file republished) is never checked against another
        version's checksum. A mismatch is fetched once more, then refused.
        """
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name[:100]}.{secrets.token_hex(6)}")
        problem = None
        try:
            for attempt in range(2):
                head = self.head(key)
                current = str(head.get("generation"))
                if generation is not None and current != generation:
                    raise StorageError(
                        f"{self.uri(key)}: the object changed while it was being read; run again"
                    )
                try:
                    source = self.fs.open(
                        self.path(key), "rb", block_size=READ_BLOCK, generation=current
                    )
                    with source as src, tmp.open("wb") as out:
                        shutil.copyfileobj(src, out, READ_BLOCK)
                except FileNotFoundError:  # that generation was replaced meanwhile
                    if attempt == 0 and generation is None:
                        continue
                    raise
                problem = verify_download(tmp, head)
                if problem is None:
                    os.replace(tmp, dst)
                    return
        finally:
            tmp.unlink(missing_ok=True)
        raise StorageError(f"{self.uri(key)}: the download is corrupt: {problem}")

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        """Every object under ``prefix`` (raw object resources), all pages."""
        out: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.fs.call(
                "GET", "b/{}/o", self.bucket, prefix=prefix, pageToken=token, json_out=True
            )
            out += page.get("items", [])
            token = page.get("nextPageToken")
            if not token:
                return out

    def put_body(self, key: str, body: bytes, generation: str | None = None) -> str:
        """PUT ``body`` at ``key`` if its generation is ``generation`` (None: if absent,
        ``ifGenerationMatch=0``); the new generation. GCS answers 412 (FileExistsError)
        when it is not."""
        made = self.fs.call(
            "POST",
            f"{self.fs._location}/upload/storage/v1/b/{quote(self.bucket)}/o",
            uploadType="media",
            name=key,
            ifGenerationMatch=generation or "0",
            data=body,
            headers={"Content-Type": "application/octet-stream"},
            json_out=True,
        )
        return str(made["generation"])

    def get_body(self, key: str) -> tuple[bytes, str] | None:
        """The object at ``key`` and its generation; None when there is none."""
        try:
            head = self.head(key)
            _, body = self.fs.call(
                "GET", "b/{}/o/{}", self.bucket, key, alt="media", generation=head["generation"]
            )
        except FileNotFoundError:
            return None
        return bytes(body), str(head["generation"])

    def delete_if(self, key: str, generation: str) -> None:
        self.fs.call("DELETE", "b/{}/o/{}", self.bucket, key, ifGenerationMatch=generation)

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                self.fs.call("DELETE", "b/{}/o/{}", self.bucket, key)


def verify_download(path: Path, head: dict[str, Any]) -> str | None:
    """Why ``path`` is not the object ``head`` describes, or None when it matches: the
    size, then the MD5 GCS keeps for every object uploaded whole, else (composite
    objects) its CRC32C."""
    size = path.stat().st_size
    if "size" in head and size != int(head["size"]):
        return f"downloaded {size} bytes, the store lists {head['size']}"
    if head.get("md5Hash"):
        md5 = hashlib.md5(usedforsecurity=False)
        _feed(path, md5.update)
        actual = base64.b64encode(md5.digest()).decode()
        return None if actual == head["md5Hash"] else "MD5 differs from the store's md5Hash"
    if head.get("crc32c"):
        import google_crc32c

        crc = google_crc32c.Checksum()  # type: ignore[no-untyped-call]
        _feed(path, crc.update)
        actual = base64.b64encode(crc.digest()).decode()  # type: ignore[no-untyped-call]
        return None if actual == head["crc32c"] else "CRC32C differs from the store's crc32c"
    return None


def _feed(path: Path, update: Callable[[bytes], object]) -> None:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            update(block)


class GcsObjectStream(io.RawIOBase):
    """An object read from its start, one ranged GET of :data:`READ_BLOCK` at a time, of
    the generation it had when opened (``etag``: the stream source's version). Each GET
    is retried within the deadline, so a connection lost mid-read is picked up at the
    byte it stopped; an object replaced meanwhile (its generation gone: 404) is an
    error naming the URI, never a silent mix of two files."""

    def __init__(self, gcs: GcsClient, key: str) -> None:
        super().__init__()
        self.gcs, self.key = gcs, key
        head = gcs.call("read", key, lambda: gcs.head(key))  # a missing object: named now
        self.etag = str(head["generation"])
        self.size = int(head.get("size", 0))
        self.position = 0
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._chunk:
            if self.position >= self.size:
                return 0
            self._chunk = self.gcs.call("read", self.key, self._fetch)
            self.position += len(self._chunk)
        n = min(len(buffer), len(self._chunk))
        buffer[:n] = self._chunk[:n]
        self._chunk = self._chunk[n:]
        return n

    def _fetch(self) -> bytes:
        end = min(self.position + READ_BLOCK, self.size)
        try:
            data: bytes = self.gcs.fs.cat_file(
                self.gcs.path(self.key), start=self.position, end=end, generation=self.etag
            )
        except FileNotFoundError:
            raise StorageError(
                f"{self.gcs.uri(self.key)}: the object was replaced while it was being read "
                f"(generation {self.etag} is gone); run again"
            ) from None
        if not data:
            raise StorageError(f"{self.gcs.uri(self.key)}: the object ended before its size")
        return data


# --------------------------------------------------------------------------- store


class GcsStore(ObjectStore[dict[str, Any]]):
    """A ``gs://bucket/prefix`` output location as a :class:`~.object_store.ObjectStore`
    (GCS is strongly consistent): its lease conditions are ``ifGenerationMatch=0``
    (create) and ``ifGenerationMatch`` a generation; a lost race answers 412."""

    def entry(self, raw: dict[str, Any]) -> tuple[str, int]:
        return str(raw["name"]), int(raw["size"])

    def is_conflict(self, exc: BaseException) -> bool:
        return isinstance(exc, FileExistsError)

    def is_absent(self, exc: BaseException) -> bool:
        return isinstance(exc, FileNotFoundError)


# --------------------------------------------------------------------------- backend


class GcsBackend(ObjectBackend[GcsClient, dict[str, Any]]):
    """The ``gs`` registry entry: models and datasets through the cache (keyed by
    generations), outputs as stores."""

    scheme = "gs"
    errors = GcsClient.errors
    word = "name"

    def client(self, bucket: str, access: Access) -> GcsClient:
        try:
            settings = gcs_settings(access.credentials_secret)
        except StorageError as exc:  # a key that is none: say which location needed it
            raise StorageError(f"gs://{bucket}: {exc}") from None
        return GcsClient(bucket, settings, access.deadline_seconds)

    def store(self, uri: ParsedUri, access: Access) -> GcsStore:
        bucket, prefix = split_location(uri.location)
        return GcsStore(str(uri), self.client(bucket, access), prefix)

    def open_stream(self, uri: ParsedUri, access: Access) -> IO[bytes]:
        """The object at ``uri`` read from its start in ranged blocks (streaming datasets)."""
        bucket, key = split_location(uri.location)
        return cast(IO[bytes], GcsObjectStream(self.client(bucket, access), key))

    def head_version(self, head: dict[str, Any]) -> tuple[str | None, list[Any]]:
        generation = str(head.get("generation"))
        return generation, [generation, head.get("size"), head.get("md5Hash")]

    def entry_name(self, entry: dict[str, Any]) -> str:
        return str(entry["name"])

    def entry_version(self, rel: str, entry: dict[str, Any]) -> tuple[str | None, list[Any]]:
        return str(entry.get("generation")), [rel, entry.get("generation"), entry.get("size")]
