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
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote

from finetune_api.uri import ParsedUri
from finetune_trainer.errors import StorageError

MANIFEST = "manifest.json"


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


class Store(Protocol):
    """Files under one root URI; keys are relative, ``/``-separated, checked."""

    uri: str

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
            _atomic_copy(src, dst)
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot write {key}: {exc.strerror or exc}") from exc

    def get_file(self, key: str, dst: Path) -> None:
        src = self.path(key)
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot read {key}: {exc.strerror or exc}") from exc

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
            path.unlink(missing_ok=True)
            _prune_empty_parents(path.parent, self.root)


def _prune_empty_parents(directory: Path, root: Path) -> None:
    while directory != root and root in directory.parents:
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _atomic_copy(src: Path, dst: Path) -> None:
    """Copy to a temporary name beside ``dst`` and rename: readers never see half a file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
