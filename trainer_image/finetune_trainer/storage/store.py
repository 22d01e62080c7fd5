"""What every storage scheme shares: a place to keep files under one URI prefix (the
output, its checkpoints), how a URI is reached, and what a scheme's backend provides.

The bottom of the storage package: each backend module (``local``, ``hub``, ``s3``)
implements :class:`Backend` and builds its stores from here, and ``backends`` maps each
URI scheme to one backend. Nothing here imports a backend, so dependencies run one way.

A :class:`Store` is rooted at a URI (``file://…``, ``pvc://…``, ``s3://bucket/prefix``)
and addresses objects by keys relative to that root, ``/``-separated. Keys come from
our own code (``checkpoints/step-40/optimizer.pt``) and from file names inside a
staging directory, never from the network, but every key still goes through
:func:`safe_key`: nothing can be written outside the root, whatever a job name or a
file name holds.

Publishing a directory (:func:`publish_dir`) is the one write pattern: every file
first, ``manifest.json`` last, so a reader that sees a manifest sees a complete set,
and a prefix without one is incomplete by definition. Deleting goes the other way:
the manifest first, so a half-deleted set is never mistaken for a complete one.

One run writes an output at a time: it holds the output's lease (:data:`LEASE`, under
the run's own ``checkpoints/`` workspace, never part of a published set) from before the
model loads until it has published. Locally the lease is an ``flock`` on that file,
which the kernel drops when the process dies, however it dies; on S3 it is an object
created only if absent (``s3.S3Store.lease``). A second run fails at once naming the
holder (:class:`OutputBusy`); the same run restarted (its ``FINETUNE_RUN_ID``) waits for
its previous process to let go, or takes an S3 lease over.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

from finetune_api.uri import ParsedUri
from finetune_trainer.errors import StorageError

MANIFEST = "manifest.json"
LEASE = "checkpoints/.lease"
"""Who writes the output now; in the run's workspace, so no published set holds it."""
PARTIAL = ".partial"
"""Where a local store writes a file before renaming it into place: one hidden directory
at the root, emptied whenever a run takes the output, so an interrupted write leaves
nothing beside the published files for ``finetune verify`` to trip over."""
RUN_ID_ENV = "FINETUNE_RUN_ID"
"""The run's identity across restarts (the operator sets it to the FineTuneJob's uid);
without it every process is a run of its own."""


@dataclass(frozen=True)
class Access:
    """How to reach a URI: which mounted Secret holds its credentials, how long to retry."""

    credentials_secret: str | None = None
    deadline_seconds: float = 300.0


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    """Relative to the store's root."""
    size: int


@dataclass(frozen=True)
class Holder:
    """Who holds an output's lease: the run (the same across a job's restarts) and the
    process, for the message a second writer gets."""

    run: str
    process: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    since: float = field(default_factory=time.time)

    @classmethod
    def of_this_process(cls) -> Holder:
        return cls(os.environ.get(RUN_ID_ENV) or f"local-{secrets.token_hex(6)}")

    def describe(self) -> str:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return f"run {self.run} (process {self.process}, since {started})"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str | bytes) -> Holder | None:
        """The holder a lease file or object names; None when it names none (yet)."""
        try:
            data = json.loads(text)
            return cls(str(data["run"]), str(data["process"]), float(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None


class OutputBusy(StorageError):
    """Another run holds the output's lease. Not retried by the cluster (exit 5, as any
    storage refusal): the holder may train for hours, and a person decides whether to
    stop it or to give this run another output."""


def busy(uri: str, holder: Holder | None, how_to_free: str) -> OutputBusy:
    who = holder.describe() if holder is not None else "another run"
    return OutputBusy(
        f"{uri}: another run is writing this output: {who}. Two runs on one output would "
        f"replace each other's results and checkpoints; wait for it to end, {how_to_free}, "
        "or give this job another output.uri"
    )


class Store(Protocol):
    """Files under one root URI; keys are relative, ``/``-separated, checked."""

    uri: str

    def lease(self, holder: Holder) -> AbstractContextManager[None]:
        """Hold the output for ``holder`` while the block runs; :class:`OutputBusy` when
        another run holds it."""

    def put_file(self, src: Path, key: str) -> None:
        """Write ``src`` at ``key``; a reader sees the old object or the whole new one."""

    def get_file(self, key: str, dst: Path) -> None:
        """Copy the object at ``key`` to the local file ``dst``."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object under ``prefix`` (recursively), sorted by key."""

    def exists(self, key: str) -> bool: ...

    def delete(self, keys: Iterable[str]) -> None:
        """Remove these objects; missing ones are not an error."""


class Backend(Protocol):
    """One URI scheme's I/O: reading models and datasets, and writing outputs."""

    def local_file(self, uri: ParsedUri, access: Access) -> Path:
        """A local path holding the object at ``uri`` (downloaded if need be)."""

    def local_model_dir(self, uri: ParsedUri, revision: str | None, access: Access) -> Path:
        """A local directory holding the model at ``uri`` in Hugging Face layout."""

    def store(self, uri: ParsedUri, access: Access) -> Store:
        """The output location ``uri`` as a :class:`Store` (artifacts, checkpoints)."""


def safe_key(key: str) -> str:
    """``key`` normalised, or :class:`StorageError` when it could leave the root.

    Refused: absolute paths, ``..`` segments, backslashes, NUL and control characters,
    and percent-encodings (a key is used as is, so ``%2e%2e`` would only ever be an
    attempt to smuggle ``..`` past a decoder further down).
    """
    problem = None
    if not key or key.startswith("/") or "\\" in key:
        problem = "keys are relative paths with '/' separators"
    elif any(ord(c) < 32 for c in key):
        problem = "control characters are not allowed"
    elif unquote(key) != key:
        problem = "percent-encoded characters are not allowed"
    else:
        parts = [p for p in key.split("/") if p not in ("", ".")]
        if not parts or ".." in parts:
            problem = "'..' and empty keys are not allowed"
    if problem:
        raise StorageError(f"unsafe storage key {key!r}: {problem}")
    return "/".join(p for p in key.split("/") if p not in ("", "."))


def join_key(*parts: str) -> str:
    """Keys joined with ``/``, each checked by :func:`safe_key`."""
    return "/".join(safe_key(p) for p in parts if p)


class LocalStore:
    """A directory on this machine: file:// paths, and pvc:// claims mounted in a pod."""

    def __init__(self, uri: str, root: Path) -> None:
        self.uri = uri
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / safe_key(key)

    def put_file(self, src: Path, key: str) -> None:
        dst = self.path(key)
        try:
            _atomic_copy(src, dst, self.root / PARTIAL)
        except OSError as exc:
            raise self.error("write", dst, exc) from exc

    def error(self, what: str, path: Path, exc: OSError) -> StorageError:
        """An OSError as a StorageError naming the URI and the absolute path."""
        return StorageError(f"{self.uri}: cannot {what} {path}: {exc.strerror or exc}")

    def lease(self, holder: Holder) -> AbstractContextManager[None]:
        return _flock_lease(self, holder)

    def get_file(self, key: str, dst: Path) -> None:
        src = self.path(key)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        except OSError as exc:
            raise self.error("read", src, exc) from exc

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every file under ``prefix``, hidden (temporary) ones aside. A writer may add or
        prune files meanwhile (a running trainer's checkpoints): what vanishes during the
        walk is simply not listed, as an object store's listing would not show it."""
        base = self.path(prefix) if prefix else self.root
        found = []
        for directory, _, files in os.walk(base):  # os.walk skips vanished directories
            for name in files:
                if name.startswith("."):
                    continue
                path = Path(directory) / name
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    continue
                found.append(ObjectInfo(path.relative_to(self.root).as_posix(), size))
        return sorted(found, key=lambda o: o.key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            path = self.path(key)
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:
                raise self.error("delete", path, exc) from exc
            _prune_empty_parents(path.parent, self.root)


def _prune_empty_parents(directory: Path, root: Path) -> None:
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _atomic_copy(src: Path, dst: Path, partial: Path) -> None:
    """Copy to a temporary file in ``partial`` and rename: readers never see half a file,
    and a write killed midway leaves its debris in ``partial`` only, which the next run
    to take the output empties (:func:`_flock_lease`).

    The file is created with mode 0666 less the umask (0644 usually), as any file a
    program writes: a published set is read by other users (an inference pod with its
    own UID on a shared claim), which mkstemp's 0600 would lock out.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial / f"{dst.name[:100]}.{secrets.token_hex(8)}"
    for attempt in range(3):
        partial.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileNotFoundError:  # another writer removed the empty directory
            if attempt == 2:
                raise
    try:
        with os.fdopen(fd, "wb") as out, src.open("rb") as source:
            shutil.copyfileobj(source, out)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        with contextlib.suppress(OSError):
            partial.rmdir()  # only when empty: nothing of this write is left beside the set


LEASE_POLL_SECONDS = 1.0


@contextlib.contextmanager
def _flock_lease(store: LocalStore, holder: Holder, wait: float = 600.0) -> Iterator[None]:
    """An exclusive ``flock`` on the store's :data:`LEASE` file while the block runs.

    The kernel releases it when the process ends, ``kill -9`` included, so no lease is
    ever stale. A lease held by the same run (a restarted pod whose predecessor is still
    saving its checkpoint on the way out) is waited for, up to ``wait`` seconds; one
    held by another run fails at once. The file is removed on release; a process that
    locked it meanwhile sees that it no longer is the file at that path, and retries.
    """
    path = store.path(LEASE)
    deadline = time.monotonic() + wait
    try:
        fd = _lock(path, holder, deadline, store.uri)
    except OSError as exc:
        raise store.error("lock", path, exc) from exc
    try:
        shutil.rmtree(store.root / PARTIAL, ignore_errors=True)  # an interrupted run's
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _lock(path: Path, holder: Holder, deadline: float, uri: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            other = Holder.from_json(os.pread(fd, 4096, 0))
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            if other is None or other.run != holder.run or time.monotonic() > deadline:
                raise busy(uri, other, "stop it") from None
            time.sleep(LEASE_POLL_SECONDS)
            continue
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:  # released and removed while we waited
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.to_json().encode(), 0)
        return fd


def local_files(directory: Path) -> list[str]:
    """Every file under ``directory`` but its top-level manifest, relative and sorted."""
    return [
        p.relative_to(directory).as_posix()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p != directory / MANIFEST
    ]


def publish_dir(staging: Path, store: Store, prefix: str = "") -> None:
    """Copy every file of ``staging`` under ``prefix``, ``manifest.json`` last.

    An older manifest at the destination is removed first: it would vouch for files
    that are about to be replaced.
    """
    manifest_key = join_key(prefix, MANIFEST)
    store.delete([manifest_key])
    for rel in local_files(staging):
        store.put_file(staging / rel, join_key(prefix, rel))
    if (staging / MANIFEST).is_file():
        store.put_file(staging / MANIFEST, manifest_key)


def delete_set(store: Store, prefix: str) -> None:
    """Remove a published set: its manifest first, so a half-deleted set is incomplete."""
    store.delete([join_key(prefix, MANIFEST)])
    store.delete([o.key for o in store.list(prefix)])
