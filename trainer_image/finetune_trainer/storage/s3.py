"""s3:// storage: AWS S3 and S3-compatible stores (MinIO, Ceph RGW, GCS interop, R2).

Built on boto3, the reference client: it brings the whole credential chain (env, shared
files, web identity/IRSA), ``AWS_ENDPOINT_URL``, request signing and, through
s3transfer, multipart uploads and ranged downloads that stream from and to disk. What
this module adds is policy:

* Retry by deadline. Transient failures (connection refused/reset, timeouts, 5xx,
  429/SlowDown) are retried with exponential backoff and full jitter until the job's
  ``output.retryDeadlineSeconds`` would be exceeded; botocore's own retries are kept low
  so the deadline, not a count, is what a user tunes. Permanent failures (403, 404,
  NoSuchBucket, bad keys) fail at once with the URI and the likely cause.
* Safe keys. Keys written go through :func:`~.store.safe_key`; keys read from a listing
  (a model prefix) must be safe too, or the download is refused: an object named
  ``prefix/../../x`` never becomes a file outside the cache.
* Verified downloads into the URI+version-keyed cache (:mod:`.cache`): the size always,
  and the content against a full-object SHA-256 or CRC32 checksum or a single-part MD5
  ETag, whichever the store gives.
* No secrets in text: messages carry the URI, the error code and a hint, never a
  credential, and anything derived from a third-party message is redacted.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import io
import logging
import re
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Protocol, TypeVar
from urllib.parse import urlsplit

from finetune_api.uri import ParsedUri
from finetune_trainer.errors import StorageError
from finetune_trainer.storage.credentials import S3Settings, s3_client, s3_settings
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


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


H = TypeVar("H", bound=_Hasher)

MULTIPART_THRESHOLD = 64 * 1024 * 1024
"""Files above this are uploaded in parts (and downloaded in ranges)."""
MULTIPART_CHUNKSIZE = 16 * 1024 * 1024
"""The part size: 10,000 parts (S3's limit) of 16 MiB allow files up to 160 GiB."""
DELETE_BATCH = 1000
"""DeleteObjects takes at most 1000 keys per request."""

TRANSIENT_CODES = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequests",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
        "OperationAborted",
        "BadDigest",  # body corrupted in transit: sending it again fixes it
        "XMinioServerNotInitialized",
        "500",
        "502",
        "503",
        "504",
    }
)

_SECRET_HINT = "the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the keys of the "
_REGION_HINT = "set AWS_REGION (or AWS_REGION in the credentials Secret) to the bucket's region"
PERMANENT_HINTS = {
    "NoSuchBucket": "the bucket does not exist: check the bucket name in the URI, and that "
    "AWS_ENDPOINT_URL points at the store that holds it",
    "InvalidAccessKeyId": "the store does not know this access key: check "
    + _SECRET_HINT
    + "credentials Secret) and that AWS_ENDPOINT_URL is the store the key belongs to",
    "SignatureDoesNotMatch": "the request signature does not match: check the secret key in "
    + _SECRET_HINT
    + "credentials Secret) and the region",
    "AccessDenied": "access denied: the credentials are valid but may not use this bucket or "
    "prefix; grant s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject",
    "AllAccessDisabled": "access to this bucket is disabled by its owner",
    "ExpiredToken": "the session token has expired: refresh AWS_SESSION_TOKEN or the web "
    "identity token",
    "InvalidToken": "the session token is not valid: check AWS_SESSION_TOKEN",
    "NoSuchKey": "no object at this key: check the URI",
    "NotFound": "no object at this key: check the URI",
    "AuthorizationHeaderMalformed": "the request was signed for the wrong region: " + _REGION_HINT,
    "PermanentRedirect": "the bucket lives in another region: " + _REGION_HINT,
    "IllegalLocationConstraintException": "the bucket lives in another region: " + _REGION_HINT,
    "NoCredentials": "no credentials were found: set AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, a shared credentials file or profile, web identity (IRSA), or "
    "name a credentials Secret",
}
_STATUS_HINTS = {
    400: "the store rejected the request; check the region and AWS_S3_ADDRESSING_STYLE",
    301: "the bucket lives in another region: " + _REGION_HINT,
    403: "access denied: check the credentials, and that they may use this bucket and prefix",
    404: "no such object or bucket: check the bucket name and key in the URI, and that "
    "AWS_ENDPOINT_URL points at the store that holds them",
}


# --------------------------------------------------------------------------- errors


def root_cause(exc: BaseException) -> BaseException:
    """The botocore error behind boto3's and s3transfer's wrappers."""
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    seen = 0
    while seen < 10 and not isinstance(exc, ClientError | BotoCoreError):
        inner = getattr(exc, "last_exception", None) or exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc, seen = inner, seen + 1
    return exc


def error_code(exc: BaseException) -> tuple[str, int | None]:
    """A ClientError's code and HTTP status; ('', None) for anything else."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return "", None
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code", "")), status


def is_transient(exc: BaseException) -> bool:
    """Worth trying again: the network or the store's load, not the request itself."""
    from botocore.exceptions import ConnectionError, HTTPClientError, IncompleteReadError

    cause = root_cause(exc)
    if isinstance(cause, HTTPClientError | ConnectionError | IncompleteReadError):
        return True
    if isinstance(cause, builtins.ConnectionError | TimeoutError):
        return True
    code, status = error_code(cause)
    if code:
        return code in TRANSIENT_CODES or status == 429 or (status or 0) >= 500
    return False


def describe(exc: BaseException) -> str:
    """What went wrong in a few words: the error code and status, or the error type."""
    from botocore.exceptions import NoCredentialsError

    cause = root_cause(exc)
    code, status = error_code(cause)
    if code:
        return f"{code} (HTTP {status})" if status else code
    if isinstance(cause, NoCredentialsError):
        return "NoCredentials"
    text = str(cause).splitlines()[0] if str(cause) else ""
    return f"{type(cause).__name__}: {text}" if text else type(cause).__name__


def hint(exc: BaseException) -> str:
    from botocore.exceptions import NoCredentialsError, PartialCredentialsError

    cause = root_cause(exc)
    if isinstance(cause, NoCredentialsError | PartialCredentialsError):
        return PERMANENT_HINTS["NoCredentials"]
    code, status = error_code(cause)
    if code in PERMANENT_HINTS:
        return PERMANENT_HINTS[code]
    return _STATUS_HINTS.get(status or 0, "see the store's error code")


def _public_endpoint(url: str | None) -> str:
    """The endpoint for messages, without any user:password@ part."""
    if not url:
        return "the AWS default endpoint"
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


# --------------------------------------------------------------------------- client


def _ours(exc: BaseException) -> bool:
    """A botocore (or network) error: made a StorageError; anything else is a bug."""
    from botocore.exceptions import BotoCoreError, ClientError

    return isinstance(root_cause(exc), ClientError | BotoCoreError | OSError)


def _status(exc: BaseException) -> int | None:
    return error_code(root_cause(exc))[1]


class S3Client(RetryingClient):
    """One bucket through boto3, every call retried by deadline and errors made readable."""

    errors = Errors(is_transient, describe, hint, _ours, log)
    settings: S3Settings

    def __init__(self, bucket: str, settings: S3Settings, deadline: float) -> None:
        from boto3.s3.transfer import TransferConfig  # type: ignore[import-untyped]

        self.bucket = bucket
        self.settings = settings
        self.deadline = max(0.0, float(deadline))
        self.client = s3_client(settings)
        self.endpoint = _public_endpoint(self.client.meta.endpoint_url)
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD,
            multipart_chunksize=MULTIPART_CHUNKSIZE,
            max_concurrency=4,
        )

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    # --- operations, each one attempt; callers wrap them in call()

    def upload(self, src: Path, key: str) -> None:
        self.client.upload_file(str(src), self.bucket, key, Config=self.transfer)

    def head(self, key: str) -> dict[str, Any]:
        response: dict[str, Any] = self.client.head_object(
            Bucket=self.bucket, Key=key, ChecksumMode="ENABLED"
        )
        return response

    def download(self, key: str, dst: Path, etag: str | None = None) -> None:
        """``key`` into ``dst`` (s3transfer writes a temporary file and renames), verified
        against the object's size and checksum; ``etag``: the version the caller expects.

        A file that does not match is fetched once more (a flaky proxy or disk), then
        refused: a store whose checksum keeps disagreeing needs a person, not a retry.
        """
        head = self.head(key)
        if etag is not None and head.get("ETag") != etag:
            raise StorageError(
                f"{self.uri(key)}: the object changed while it was being read; run again"
            )
        dst.parent.mkdir(parents=True, exist_ok=True)
        problem = None
        for _ in range(2):
            self.client.download_file(self.bucket, key, str(dst), Config=self.transfer)
            problem = verify_download(dst, head)
            if problem is None:
                return
            dst.unlink(missing_ok=True)
        raise StorageError(f"{self.uri(key)}: the download is corrupt: {problem}")

    def objects(self, prefix: str) -> list[dict[str, Any]]:
        """Every object under ``prefix`` (raw ListObjectsV2 entries), all pages."""
        paginator = self.client.get_paginator("list_objects_v2")
        out: list[dict[str, Any]] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            out += page.get("Contents", [])
        return out

    def put_body(self, key: str, body: bytes, etag: str | None = None) -> str:
        """PUT ``body`` at ``key`` only if absent (``etag`` None: IfNoneMatch='*') or still
        at ``etag`` (IfMatch); the new ETag. A refused condition answers 409 or 412."""
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        response = self.client.put_object(Bucket=self.bucket, Key=key, Body=body, **condition)
        return str(response["ETag"])

    def get_body(self, key: str) -> tuple[bytes, str] | None:
        """The object at ``key`` and its ETag; None when there is none."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise
        return response["Body"].read(), str(response["ETag"])

    def delete_if(self, key: str, etag: str) -> None:
        """DELETE ``key`` if it is still the version ``etag`` (412 otherwise)."""
        self.client.delete_object(Bucket=self.bucket, Key=key, IfMatch=etag)

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            response = self.client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
            )
            errors = response.get("Errors") or []
            failed = [e for e in errors if e.get("Code") != "NoSuchKey"]
            if failed:
                first = failed[0]
                from botocore.exceptions import ClientError

                raise ClientError(
                    {"Error": {"Code": first.get("Code", ""), "Message": ""}},
                    f"DeleteObjects ({len(failed)} of {len(batch)} keys, first {first.get('Key')})",
                )


def verify_download(path: Path, head: dict[str, Any]) -> str | None:
    """Why ``path`` is not the object ``head`` describes, or None when it matches.

    Checked: the size; then the strongest content check the store offers for the whole
    object: a full-object SHA-256 or CRC32 checksum, else an MD5 ETag (single-part
    uploads without KMS or customer-key encryption, whose ETags are no MD5).
    """
    size = path.stat().st_size
    etag = str(head.get("ETag", "")).strip('"')
    if "ContentLength" in head and size != head["ContentLength"]:
        return f"downloaded {size} bytes, the store lists {head['ContentLength']}"
    # A checksum covers the whole object when the store says so (ChecksumType), or when
    # the object was uploaded in one part (an ETag without "-N"); multipart checksums
    # are usually of the parts' checksums and cannot be recomputed from the file.
    multipart = "-" in etag
    whole = head.get("ChecksumType") == "FULL_OBJECT" or (
        not multipart and head.get("ChecksumType") != "COMPOSITE"
    )
    sha = head.get("ChecksumSHA256")
    crc = head.get("ChecksumCRC32")
    if sha and whole and "-" not in sha:
        actual = base64.b64encode(_digest(path, hashlib.sha256()).digest()).decode()
        return None if actual == sha else "SHA-256 differs from the store's checksum"
    if crc and whole and "-" not in crc:
        actual = base64.b64encode(_crc32(path).to_bytes(4, "big")).decode()
        return None if actual == crc else "CRC32 differs from the store's checksum"
    encrypted = head.get("ServerSideEncryption") == "aws:kms" or head.get("SSECustomerAlgorithm")
    if re.fullmatch(r"[0-9a-f]{32}", etag) and not encrypted:
        actual = _digest(path, hashlib.md5(usedforsecurity=False)).hexdigest()
        return None if actual == etag else "MD5 differs from the store's ETag"
    return None


def _digest(path: Path, hasher: H) -> H:
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher


def _crc32(path: Path) -> int:
    value = 0
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            value = zlib.crc32(block, value)
    return value


# --------------------------------------------------------------------------- store


class S3Store(ObjectStore[dict[str, Any]]):
    """An ``s3://bucket/prefix`` output location as a :class:`~.object_store.ObjectStore`:
    its lease conditions are ``If-None-Match: *`` (create) and ``If-Match`` an ETag."""

    def entry(self, raw: dict[str, Any]) -> tuple[str, int]:
        return str(raw["Key"]), int(raw["Size"])

    def is_conflict(self, exc: BaseException) -> bool:
        return _status(exc) in (409, 412)

    def is_absent(self, exc: BaseException) -> bool:
        return _status(exc) == 404


# --------------------------------------------------------------------------- backend


class ObjectStream(io.RawIOBase):
    """An object read from its start as it arrives. Opening is retried within the
    deadline like every call; a connection lost mid-read is picked up at the byte it
    stopped (a ranged GET of the same version, ``IfMatch`` its ETag), so a long stream
    survives a flaky network, and an object replaced meanwhile is an error, not a
    silent mix of two files."""

    def __init__(self, s3: S3Client, key: str) -> None:
        super().__init__()
        self.s3, self.key = s3, key
        self.position = 0
        self.etag: str | None = None
        self.body: Any = self._open()

    def _open(self) -> Any:
        def get() -> Any:
            ranged = {"Range": f"bytes={self.position}-"} if self.position else {}
            version = {"IfMatch": self.etag} if self.etag else {}
            response = self.s3.client.get_object(
                Bucket=self.s3.bucket, Key=self.key, **ranged, **version
            )
            self.etag = self.etag or str(response["ETag"])
            return response["Body"]

        return self.s3.call("read", self.key, get)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self.body.read(len(buffer))
        except Exception as exc:
            if not is_transient(exc):
                raise
            log.warning(
                "%s: reading stopped (%s); resuming at byte %d",
                self.s3.uri(self.key),
                describe(exc),
                self.position,
            )
            self.body.close()
            self.body = self._open()
            data = self.body.read(len(buffer))
        size = len(data)
        buffer[:size] = data
        self.position += size
        return size

    def close(self) -> None:
        if not self.closed:
            self.body.close()
        super().close()


class S3Backend(ObjectBackend[S3Client, dict[str, Any]]):
    """The ``s3`` registry entry: models and datasets through the cache (keyed by ETags),
    outputs as stores."""

    scheme = "s3"
    errors = S3Client.errors

    def client(self, bucket: str, access: Access) -> S3Client:
        return S3Client(bucket, s3_settings(access.credentials_secret), access.deadline_seconds)

    def store(self, uri: ParsedUri, access: Access) -> S3Store:
        bucket, prefix = split_location(uri.location)
        return S3Store(str(uri), self.client(bucket, access), prefix)

    def head_version(self, head: dict[str, Any]) -> tuple[str | None, list[Any]]:
        return head.get("ETag"), [head.get("ETag"), head.get("ContentLength")]

    def entry_name(self, entry: dict[str, Any]) -> str:
        return str(entry["Key"])

    def entry_version(self, rel: str, entry: dict[str, Any]) -> tuple[str | None, list[Any]]:
        return entry.get("ETag"), [rel, entry.get("ETag"), entry.get("Size")]

    def open_stream(self, uri: ParsedUri, access: Access) -> BinaryIO:
        """The object's body as it arrives (``dataset.streaming``): nothing is written to
        disk (:class:`ObjectStream`)."""
        bucket, key = split_location(uri.location)
        return ObjectStream(self.client(bucket, access), key)  # type: ignore[return-value]
