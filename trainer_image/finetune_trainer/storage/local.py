"""file:// and pvc:// storage: paths on this machine (in a pod: mounted volumes).

Both schemes are the same backend over a different path mapping: ``file://path`` is
the path itself, ``pvc://claim/path`` is the path under the claim's mount point.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from finetune_api.uri import ParsedUri
from finetune_trainer.errors import ModelError, StorageError
from finetune_trainer.storage.store import Access, LocalStore

PVC_ROOT_ENV = "FINETUNE_PVC_ROOT"
"""Where pvc:// claims are mounted (the operator mounts claim C at $ROOT/C)."""


def file_path(uri: ParsedUri) -> Path:
    """file://path: absolute, or relative to the working directory."""
    return Path(uri.location).expanduser()


def pvc_path(uri: ParsedUri) -> Path:
    """pvc://claim/path: the claim's mount point under $FINETUNE_PVC_ROOT (/mnt/pvc)."""
    claim, _, rest = uri.location.partition("/")
    return Path(os.environ.get(PVC_ROOT_ENV, "/mnt/pvc")) / claim / rest


class LocalBackend:
    """A registry entry for a scheme whose URIs name local paths (``resolve`` says which)."""

    def __init__(self, resolve: Callable[[ParsedUri], Path]) -> None:
        self._resolve = resolve

    def resolve(self, uri: ParsedUri) -> Path:
        return self._resolve(uri)

    def local_file(self, uri: ParsedUri, access: Access) -> Path:
        path = self._resolve(uri)
        if not path.is_file():
            raise StorageError(f"{uri}: no such file ({path})")
        return path

    def local_model_dir(self, uri: ParsedUri, revision: str | None, access: Access) -> Path:
        path = self._resolve(uri)
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{uri}: no model directory at {path} (expected config.json there); "
                "point model.uri at a directory saved with save_pretrained"
            )
        return path

    def store(self, uri: ParsedUri, access: Access) -> LocalStore:
        return LocalStore(str(uri), self._resolve(uri))
