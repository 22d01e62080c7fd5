"""What the object stores (``s3``, ``gs``, ``az``) share, written once.

The three differ in their client library, in how its errors read, in how a download is
verified and where credentials come from; each backend module keeps exactly that. The
policy is the same for all of them, and lives here so that it cannot drift apart:

* :class:`RetryingClient`: every request retried by deadline (exponential backoff with
  full jitter while the error is transient), then one readable :class:`StorageError`
  naming the URI, the endpoint and the likely fix, with every secret redacted.
* :class:`ObjectStore`: a bucket/container prefix as a :class:`~.store.Store` over a small
  client protocol (:class:`ObjectClient`), with its lease: an object created only if
  absent and renewed only if unchanged (a version condition: ETag or generation).
* :func:`probe_or_cached` and :func:`model_files`: models and datasets through the cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from finetune_api.uri import ParsedUri
from finetune_trainer.errors import ModelError, StorageError, StorageUnavailable
from finetune_trainer.storage import cache
from finetune_trainer.storage.credentials import redact
from finetune_trainer.storage.store import (
    LEASE,
    Access,
    Holder,
    ObjectInfo,
    busy,
    join_key,
    safe_key,
)

if TYPE_CHECKING:
    from tenacity import RetryCallState

T = TypeVar("T")
E = TypeVar("E")
C = TypeVar("C", bound="ObjectClient[Any]")

LEASE_SECONDS = 120.0
"""How long an output's lease object holds without renewal; the holder renews it every
quarter of that, so only a run that died (or lost the store for this long) lets it lapse."""


@dataclass(frozen=True)
class Errors:
    """How one backend reads its client library's exceptions (the one part of the retry
    policy that differs between stores), and where it logs."""

    is_transient: Callable[[BaseException], bool]
    """Worth trying again: the network or the store's load, not the request itself."""
    describe: Callable[[BaseException], str]
    """What went wrong in a few words, for messages and log lines."""
    hint: Callable[[BaseException], str]
    """What to check, for a permanent failure."""
    ours: Callable[[BaseException], bool]
    """An error of the store (made a StorageError); anything else is a bug and propagates."""
    log: logging.Logger
    """The backend module's logger, so that its lines keep their name."""
    reached: str = "the store"
    """What cannot be reached when a cached copy is used instead ('the service' for az://)."""


class Settings(Protocol):
    @property
    def source(self) -> str: ...

    def secrets(self) -> list[str]: ...


class RetryingClient(ABC):
    """One bucket or container: :meth:`call` retries by deadline and makes errors readable."""

    errors: ClassVar[Errors]
    settings: Settings
    deadline: float
    endpoint: str

    @abstractmethod
    def uri(self, key: str) -> str: ...

    def call(self, what: str, key: str, fn: Callable[[], T], *, deadline: float | None = None) -> T:
        """``fn()`` retried on transient errors until the deadline; StorageError otherwise."""
        from tenacity import Retrying, retry_if_exception, stop_before_delay
        from tenacity import wait_random_exponential as backoff_with_jitter

        limit = self.deadline if deadline is None else deadline
        started = time.monotonic()
        retrying = Retrying(
            stop=stop_before_delay(limit),
            wait=backoff_with_jitter(multiplier=0.5, max=10),
            retry=retry_if_exception(self.errors.is_transient),
            before_sleep=self._log_retry(what, key),
            reraise=True,
        )
        try:
            return retrying(fn)
        except StorageError:
            raise
        except Exception as exc:
            if not self.errors.ours(exc):
                raise
            raise self.error(what, key, exc, time.monotonic() - started, limit) from exc

    def error(
        self, what: str, key: str, exc: BaseException, elapsed: float, limit: float
    ) -> StorageError:
        uri, hidden, errors = self.uri(key), self.settings.secrets(), self.errors
        if errors.is_transient(exc):
            return StorageUnavailable(
                redact(
                    f"{uri}: cannot {what}: {errors.describe(exc)}; still failing after "
                    f"{elapsed:.0f}s of retries (retry deadline {limit:g}s). Check that "
                    f"{self.endpoint} is reachable, or raise output.retryDeadlineSeconds",
                    hidden,
                )
            )
        return StorageError(
            redact(
                f"{uri}: cannot {what}: {errors.describe(exc)}: {errors.hint(exc)} "
                f"(endpoint {self.endpoint}, credentials from {self.settings.source})",
                hidden,
            )
        )

    def _log_retry(self, what: str, key: str) -> Callable[[RetryCallState], None]:
        def before_sleep(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            self.errors.log.warning(
                "%s: %s failed (%s), attempt %d; retrying in %.1fs",
                self.uri(key),
                what,
                redact(self.errors.describe(exc), self.settings.secrets()) if exc else "?",
                state.attempt_number,
                wait,
            )

        return before_sleep


class ObjectClient(Protocol[E]):
    """What :class:`ObjectStore` needs of a client: each operation one attempt (the store
    wraps it in :meth:`call`); ``E`` is one entry of its listings."""

    @property
    def errors(self) -> Errors: ...

    def call(
        self, what: str, key: str, fn: Callable[[], T], *, deadline: float | None = None
    ) -> T: ...

    def upload(self, src: Path, key: str, /) -> None: ...

    def download(self, key: str, dst: Path, version: str | None = None, /) -> None:
        """``key`` into ``dst``, verified; ``version``: the one the caller expects."""
        ...

    def head(self, key: str, /) -> object: ...

    def objects(self, prefix: str, /) -> list[E]: ...

    def put_body(self, key: str, body: bytes, version: str | None = None, /) -> str:
        """``body`` at ``key`` only if absent (``version`` None) or still at ``version``;
        the new version. A refused condition raises what ``ObjectStore.is_conflict`` knows."""
        ...

    def get_body(self, key: str, /) -> tuple[bytes, str] | None: ...

    def delete_if(self, key: str, version: str, /) -> None: ...

    def delete(self, keys: list[str], /) -> None: ...


class ObjectStore(ABC, Generic[E]):
    """A ``scheme://bucket/prefix`` output location as a :class:`~.store.Store`.

    An upload replaces an object atomically for readers, so ``put_file`` needs no
    temporary key; ``publish_dir`` gives the set its manifest-last order. Subclasses say
    how their client's listing entries and errors read.
    """

    noun: ClassVar[str] = "object"
    """What the store calls an object, in log lines."""

    def __init__(self, uri: str, client: ObjectClient[E], prefix: str) -> None:
        self.uri = uri
        self.client = client
        self.prefix = prefix.strip("/")
        self.lease_seconds = LEASE_SECONDS

    @abstractmethod
    def entry(self, raw: E) -> tuple[str, int]:
        """A listing entry's full key and size."""

    @abstractmethod
    def is_conflict(self, exc: BaseException) -> bool:
        """A conditional write refused: the object exists, or is no longer that version."""

    @abstractmethod
    def is_absent(self, exc: BaseException) -> bool:
        """No object at the key (the bucket itself exists)."""

    def lease_gone(self, exc: BaseException) -> bool:
        """A renewal refused because another run holds the lease now."""
        return self.is_conflict(exc)

    @property
    def log(self) -> logging.Logger:
        return self.client.errors.log

    @contextlib.contextmanager
    def lease(self, holder: Holder) -> Iterator[None]:
        """The output's lease object, created only if absent and renewed (only if still
        the version this run wrote) by a background thread while the block runs.

        An expired lease (its holder died) or one of the same run (a restarted pod) is
        taken over, again conditionally, so of two runs racing for it one wins. A lease
        lost meanwhile (renewals failing past its expiry, another run taking it) fails
        the run when the block ends: what it wrote may have been replaced.
        """
        key = self._key(LEASE)
        version = self.client.call("take the lease", key, lambda: self._take(key, holder))
        renewal = _Renewal(self, key, holder, version)
        try:
            yield
        finally:
            renewal.stop()
            self._release(key, renewal.version)
        if renewal.lost is not None:
            raise StorageError(
                f"{self.uri}: this run lost the output's lease ({renewal.lost}); another run "
                "may have written here meanwhile: check it with finetune verify"
            )

    def lease_body(self, holder: Holder) -> bytes:
        data = json.loads(holder.to_json()) | {"expires": time.time() + self.lease_seconds}
        return json.dumps(data).encode()

    def _take(self, key: str, holder: Holder) -> str:
        try:
            return self.client.put_body(key, self.lease_body(holder))
        except Exception as exc:
            if not self.is_conflict(exc):
                raise
        current = self.client.get_body(key)
        if current is None:  # released meanwhile: try again from the start
            return self._take(key, holder)
        body, version = current
        other, expires = Holder.from_json(body), _expiry(body)
        if other is not None and other.run != holder.run and expires > time.time():
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(expires))
            raise busy(self.uri, other, f"or for its lease to lapse after {until} if it died")
        try:
            return self.client.put_body(key, self.lease_body(holder), version)
        except Exception as exc:
            if self.is_conflict(exc):  # another run took it first
                raise busy(self.uri, None, "stop it") from None
            raise

    def _release(self, key: str, version: str) -> None:
        try:
            self.client.call("release the lease", key, lambda: self.client.delete_if(key, version))
        except StorageError as exc:
            self.log.warning(
                "%s: could not release the output's lease (%s); it lapses", self.uri, exc
            )

    def _key(self, key: str) -> str:
        return join_key(self.prefix, safe_key(key)) if self.prefix else safe_key(key)

    def _dir(self, prefix: str) -> str:
        """The listing prefix of a directory-like ``prefix`` ('' is the root)."""
        base = self._key(prefix) if prefix else self.prefix
        return f"{base}/" if base else ""

    def put_file(self, src: Path, key: str) -> None:
        full = self._key(key)
        self.client.call("upload", full, lambda: self.client.upload(src, full))

    def get_file(self, key: str, dst: Path) -> None:
        full = self._key(key)
        self.client.call("download", full, lambda: self.client.download(full, dst))

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = self._dir(prefix)
        raw = self.client.call("list", base, lambda: self.client.objects(base))
        root = f"{self.prefix}/" if self.prefix else ""
        out = []
        for name, size in map(self.entry, raw):
            rel = name[len(root) :]
            if not rel or rel.endswith("/"):  # folder markers
                continue
            try:
                out.append(ObjectInfo(safe_key(rel), size))
            except StorageError:
                self.log.warning(
                    "%s: ignoring %s %r, not a safe relative key", self.uri, self.noun, rel
                )
        return sorted(out, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        return self.client.call("check", full, lambda: self._exists(full))

    def _exists(self, full: str) -> bool:
        try:
            self.client.head(full)
        except Exception as exc:
            if self.is_absent(exc):
                return False
            raise
        return True

    def delete(self, keys: Iterable[str]) -> None:
        full = [self._key(k) for k in keys]
        if full:
            self.client.call("delete", full[0], lambda: self.client.delete(full))


def _expiry(body: bytes) -> float:
    try:
        return float(json.loads(body)["expires"])
    except (ValueError, KeyError, TypeError):
        return 0.0  # not a lease this trainer wrote: nothing keeps it alive


class _Renewal(Generic[E]):
    """Renews a lease every quarter of its length in a daemon thread, until stopped."""

    def __init__(self, store: ObjectStore[E], key: str, holder: Holder, version: str) -> None:
        self.store = store
        self.key, self.holder, self.version = key, holder, version
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finetune-lease", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        store = self.store
        while not self._stop.wait(store.lease_seconds / 4):
            body = store.lease_body(self.holder)
            try:
                self.version = store.client.put_body(self.key, body, self.version)
            except Exception as exc:
                if store.lease_gone(exc):
                    self.lost = "another run took it over"
                    store.log.error("%s: %s", store.uri, self.lost)
                    return
                store.log.warning(
                    "%s: renewing the lease failed (%s)",
                    store.uri,
                    store.client.errors.describe(exc),
                )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- backends


def split_location(location: str) -> tuple[str, str]:
    """``bucket/key`` (or ``container/key``) apart."""
    bucket, _, key = location.partition("/")
    return bucket, key


def model_files(
    uri: str,
    listed: list[E],
    prefix: str,
    name: Callable[[E], str],
    noun: str = "object",
    word: str = "key",
) -> list[tuple[str, E]]:
    """The entries of a model prefix with their safe relative keys, sorted; an entry whose
    key would leave the model directory is refused (``prefix/../../x`` never becomes a
    file outside the cache), and an empty prefix is no model."""
    files = []
    for entry in listed:
        rel = name(entry)[len(prefix) :]
        if not rel or rel.endswith("/"):
            continue
        try:
            files.append((safe_key(rel), entry))
        except StorageError as exc:
            raise StorageError(
                f"{uri}: refusing to download {noun} {name(entry)!r}: its {word} would leave "
                f"the model directory ({exc})"
            ) from None
    if not files:
        where = "container" if noun == "blob" else "bucket"
        raise ModelError(
            f"{uri}: no {noun}s under this prefix; check the {where} and the key "
            "(a model is a prefix holding config.json and the weights)"
        )
    return sorted(files, key=lambda f: f[0])


def probe_or_cached(
    uri: str, scheme: str, errors: Errors, probe: Callable[[float | None], T]
) -> T | Path:
    """``probe(deadline)`` the store for the current version of ``uri``.

    With a complete copy in the cache there is no point waiting out the retry deadline:
    one attempt, and when the store cannot be reached, the cached copy (with a warning).
    Permanent errors (credentials, no such bucket) are raised either way.
    """
    cached = cache.latest(uri, scheme)
    if cached is None:
        return probe(None)
    try:
        return probe(0.0)
    except StorageError as exc:
        if exc.__cause__ is None or not errors.is_transient(exc.__cause__):
            raise
        errors.log.warning(
            "%s: %s cannot be reached (%s); using the cached copy at %s",
            uri,
            errors.reached,
            errors.describe(exc.__cause__),
            cached,
        )
        return cached


class ObjectBackend(ABC, Generic[C, E]):
    """A scheme's registry entry: models and datasets through the cache (keyed by the
    store's versions of the objects, so a changed object is fetched again and an
    unchanged one never), outputs as stores. Subclasses make the client and say which
    fields of a HEAD and of a listing entry name an object's version."""

    scheme: ClassVar[str]
    """The URI scheme, which is also the cache's."""
    errors: ClassVar[Errors]
    """Its clients' (for the log, before a client is made)."""
    noun: ClassVar[str] = "object"
    word: ClassVar[str] = "key"
    """What the store calls an object and its key, in messages."""

    @abstractmethod
    def client(self, bucket: str, access: Access) -> C: ...

    @abstractmethod
    def head_version(self, head: Any) -> tuple[str | None, list[Any]]:
        """The version a download of the object must find, and its cache version."""

    @abstractmethod
    def entry_name(self, entry: E) -> str: ...

    @abstractmethod
    def entry_version(self, rel: str, entry: E) -> tuple[str | None, list[Any]]:
        """As :meth:`head_version`, for one entry of a model prefix's listing."""

    def local_file(self, uri: ParsedUri, access: Access) -> Path:
        """The object at ``uri`` in the cache, keyed by its version; downloaded when new."""
        bucket, key = split_location(uri.location)
        name = Path(key).name
        client = self.client(bucket, access)
        head = probe_or_cached(
            str(uri),
            self.scheme,
            client.errors,
            lambda limit: client.call("read", key, lambda: client.head(key), deadline=limit),
        )
        if isinstance(head, Path):
            return head / name
        expected, version = self.head_version(head)

        def populate(directory: Path) -> None:
            client.call("download", key, lambda: client.download(key, directory / name, expected))

        return cache.fill(str(uri), self.scheme, json.dumps(version), populate) / name

    def local_model_dir(self, uri: ParsedUri, revision: str | None, access: Access) -> Path:
        """Every object under the prefix, in the cache keyed by the listing's versions."""
        if revision is not None:
            self.errors.log.warning(
                "%s: model.revision applies to hf:// models; ignored for %s://", uri, self.scheme
            )
        bucket, key = split_location(uri.location)
        prefix = key.rstrip("/") + "/"
        client = self.client(bucket, access)
        listed = probe_or_cached(
            str(uri),
            self.scheme,
            client.errors,
            lambda limit: client.call(
                "list", prefix, lambda: client.objects(prefix), deadline=limit
            ),
        )
        if isinstance(listed, Path):
            return listed
        files = self.model_files(str(uri), listed, prefix)
        versions = [self.entry_version(rel, entry) for rel, entry in files]

        def populate(directory: Path) -> None:
            for (rel, _), (expected, _) in zip(files, versions, strict=True):
                full, dst = prefix + rel, directory / rel
                client.call(
                    "download",
                    full,
                    lambda: client.download(full, dst, expected),  # noqa: B023
                )

        version = json.dumps([v for _, v in versions])
        target = cache.fill(str(uri), self.scheme, version, populate)
        if not (target / "config.json").is_file():
            raise ModelError(
                f"{uri}: no config.json under this prefix; point model.uri at a prefix holding "
                "a model saved with save_pretrained"
            )
        return target

    def model_files(self, uri: str, listed: list[E], prefix: str) -> list[tuple[str, E]]:
        return model_files(uri, listed, prefix, self.entry_name, self.noun, self.word)
