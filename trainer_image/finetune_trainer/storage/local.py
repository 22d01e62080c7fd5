"""file:// and pvc:// storage: paths on this machine (in a pod: mounted volumes).

Both schemes are the same backend over a different path mapping: ``file://path`` is
the path itself, ``pvc://claim/path`` is the path under the claim's mount point. Both
mappings go through :func:`path_under`, the one place a URI becomes a local path, so
that no URI reaches outside the root it names (a claim's mount point), and every path
is absolute (a message names the directory a relative path was looked for in).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from finetune_api.uri import ParsedUri
from finetune_trainer.errors import ModelError, StorageError
from finetune_trainer.storage.store import Access, LocalStore

PVC_ROOT_ENV = "FINETUNE_PVC_ROOT"
"""Where pvc:// claims are mounted (the operator mounts claim C at $ROOT/C)."""


def file_path(uri: ParsedUri) -> Path:
    """file://path: absolute, or relative to the working directory, returned absolute so
    that a "not found" names the directory it was looked for in."""
    return Path(os.path.abspath(Path(uri.location).expanduser()))


def pvc_path(uri: ParsedUri) -> Path:
    """pvc://claim/path: the path under the claim's mount point ($FINETUNE_PVC_ROOT/claim,
    /mnt/pvc/claim by default), which it can never leave (:func:`path_under`)."""
    claim, _, rest = uri.location.partition("/")
    root = Path(os.environ.get(PVC_ROOT_ENV, "/mnt/pvc")).absolute() / claim
    return path_under(root, rest, str(uri))


def path_under(root: Path, rest: str, uri: str) -> Path:
    """``rest`` (a ``/``-separated relative path) under ``root``, as a real path that is
    still under ``root``'s real path; StorageError naming ``uri`` otherwise.

    Refused: an absolute ``rest`` (``pvc://claim//etc``: joining it would drop ``root``),
    ``..`` segments, and symbolic links on the way that lead out of ``root`` (a link in a
    shared claim pointing at another claim or the node's filesystem). The contract
    refuses the first two at validate time (``finetune_api.uri``); the links only show
    here, on the volume.
    """
    parts = rest.split("/")
    if rest.startswith("/") or ".." in parts or "\x00" in rest:
        raise StorageError(
            f"{uri}: the path must stay inside {root}: write it relative to the claim, "
            "without '//' or '..' (pvc://<claim>/<path>)"
        )
    path = root.joinpath(*(p for p in parts if p not in ("", ".")))
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise StorageError(
            f"{uri}: {path} resolves to {real}, outside {real_root} (a symbolic link leads "
            "out of the claim); point the URI at a path inside the claim"
        )
    return Path(real)


class LocalBackend:
    """A registry entry for a scheme whose URIs name local paths (``resolve`` says which)."""

    def __init__(self, resolve: Callable[[ParsedUri], Path]) -> None:
        self._resolve = resolve

    def resolve(self, uri: ParsedUri) -> Path:
        return self._resolve(uri)

    def local_file(self, uri: ParsedUri, access: Access) -> Path:
        path = self._resolve(uri)
        if not os.path.isfile(path):  # os.path's tests never raise (ENAMETOOLONG, EACCES)
            what = "a directory, not a file" if os.path.isdir(path) else "no such file"
            raise StorageError(f"{uri}: {what} ({path})")
        return path

    def open_stream(self, uri: ParsedUri, access: Access) -> BinaryIO:
        """The file at ``uri`` opened for reading (``dataset.streaming``)."""
        return self.local_file(uri, access).open("rb")

    def local_model_dir(self, uri: ParsedUri, revision: str | None, access: Access) -> Path:
        path = self._resolve(uri)
        if not os.path.isfile(path / "config.json"):
            raise ModelError(
                f"{uri}: no model directory at {path} (expected config.json there); "
                "point model.uri at a directory saved with save_pretrained"
            )
        return path

    def store(self, uri: ParsedUri, access: Access) -> LocalStore:
        return LocalStore(str(uri), self._resolve(uri))
