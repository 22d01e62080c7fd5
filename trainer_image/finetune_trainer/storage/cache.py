"""Local copies of remote models and datasets, keyed by URI and by the source's version.

Layout: ``<cache root>/downloads/<scheme>/<digest of URI>/<version>/`` (the root: see
:func:`cache_root`), where the version is what the source says identifies the content
(an S3 ETag, a digest of a prefix's listing). A version directory only ever appears by
renaming a temporary directory that was filled and verified completely, so existing
means complete: a run killed mid-download leaves a ``.partial-*`` directory that is
never read, and two processes filling the same entry both succeed (the second one's
copy is dropped).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_DIR_ENV = "FINETUNE_CACHE_DIR"
"""Shared with the tokenization cache (data/cache.py)."""
PARTIAL = ".partial-"


def cache_root() -> Path:
    """The trainer's cache directory, for downloads and tokenized data alike:
    ``$FINETUNE_CACHE_DIR``, else ``$XDG_CACHE_HOME/finetune-operator``, else
    ``~/.cache/finetune-operator``. A relative ``XDG_CACHE_HOME`` is ignored, as the XDG
    base directory specification says."""
    explicit = os.environ.get(CACHE_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path("~/.cache").expanduser()
    return base / "finetune-operator"


def entry_dir(uri: str, scheme: str) -> Path:
    """Where every version of ``uri`` is kept."""
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    return cache_root() / "downloads" / scheme / digest


def version_name(version: str) -> str:
    """A file-system-safe directory name for a version string (an ETag, a digest)."""
    return hashlib.sha256(version.encode()).hexdigest()[:24]


def cached(uri: str, scheme: str, version: str) -> Path | None:
    path = entry_dir(uri, scheme) / version_name(version)
    return path if path.is_dir() else None


def latest(uri: str, scheme: str) -> Path | None:
    """The most recently completed version of ``uri``, for when the source is unreachable."""
    entry = entry_dir(uri, scheme)
    if not entry.is_dir():
        return None
    complete = [p for p in entry.iterdir() if p.is_dir() and not p.name.startswith(PARTIAL)]
    return max(complete, key=lambda p: p.stat().st_mtime, default=None)


def fill(uri: str, scheme: str, version: str, populate: Callable[[Path], None]) -> Path:
    """The complete cache directory of ``uri`` at ``version``, populated if absent.

    ``populate`` writes into an empty temporary directory and raises if anything is
    wrong; only then is the directory renamed into place.
    """
    target = entry_dir(uri, scheme) / version_name(version)
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=target.parent))
    try:
        populate(partial)
        try:
            partial.rename(target)
            os.utime(target)  # completion time, which latest() goes by
        except OSError:
            if not target.is_dir():
                raise
            # Another process completed the same version first; theirs is as good.
            shutil.rmtree(partial, ignore_errors=True)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target
