"""The storage registry: one entry per URI scheme, and the lookups the trainer uses.

A backend turns a URI into something local the trainer can read (a file, a model
directory) and opens an output URI as a :class:`~.store.Store`. Each scheme's backend
lives in its own module (``local``, ``hub``, ``s3``) and knows nothing of this registry;
adding a scheme is a module and one entry in :data:`BACKENDS` (and one in
``finetune_api.uri.SCHEMES``, which says what its URIs may look like).

Publishing writes every file first and ``manifest.json`` last (``store.publish_dir``),
so a reader that sees a manifest sees a complete set; a prefix without one is
incomplete by definition.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from finetune_api.uri import ParsedUri, Role, UriError, parse_uri
from finetune_trainer.errors import StorageError
from finetune_trainer.storage.azure import AzureBackend
from finetune_trainer.storage.gcs import GcsBackend
from finetune_trainer.storage.hub import HubBackend
from finetune_trainer.storage.local import PVC_ROOT_ENV, LocalBackend, file_path, pvc_path
from finetune_trainer.storage.s3 import S3Backend
from finetune_trainer.storage.store import MANIFEST, Access, Backend, Store

if TYPE_CHECKING:
    from finetune_api.config.data import HubDatasetOptions

__all__ = [
    "BACKENDS",
    "MANIFEST",
    "PVC_ROOT_ENV",
    "Access",
    "Backend",
    "LocalBackend",
    "backend_for",
    "fetch_data_files",
    "fetch_file",
    "fetch_model_dir",
    "open_store",
]

BACKENDS: dict[str, Backend] = {
    "file": LocalBackend(file_path),
    "pvc": LocalBackend(pvc_path),
    "hf": HubBackend(),
    "s3": S3Backend(),
    "az": AzureBackend(),
    "gs": GcsBackend(),
}


def fetch_model_dir(uri: str, revision: str | None, access: Access | None = None) -> Path:
    """A local directory holding the model at ``uri`` (downloaded if need be)."""
    backend, parsed = backend_for(uri, Role.MODEL)
    return backend.local_model_dir(parsed, revision, access or Access())


def fetch_file(uri: str, role: Role, access: Access | None = None) -> Path:
    """A local path holding the file at ``uri`` (downloaded if need be)."""
    backend, parsed = backend_for(uri, role)
    return backend.local_file(parsed, access or Access())


def fetch_data_files(
    uri: str,
    role: Role,
    access: Access | None = None,
    hub: HubDatasetOptions | None = None,
    split: str | None = None,
) -> list[Path]:
    """The local files holding the rows of ``uri``, in the order they are read.

    One file for every scheme but a Hub dataset repository read by subset and split
    (``hf://datasets/org/name`` without a file, or with ``hub``): then every data file of
    the split, which a Hub dataset may spread over many shards."""
    backend, parsed = backend_for(uri, role)
    if isinstance(backend, HubBackend):
        return backend.data_files(parsed, access or Access(), hub, split)
    return [backend.local_file(parsed, access or Access())]


def open_store(uri: str, access: Access | None = None) -> Store:
    """The output URI ``uri`` as a :class:`~.store.Store`."""
    backend, parsed = backend_for(uri, Role.OUTPUT)
    return backend.store(parsed, access or Access())


def backend_for(uri: str, role: Role) -> tuple[Backend, ParsedUri]:
    """The registry entry for ``uri``'s scheme and the parsed URI; StorageError when
    ``uri`` is not a valid location for ``role``."""
    try:
        parsed = parse_uri(uri, role)
    except UriError as exc:
        raise StorageError(f"{uri}: {exc}") from None
    return BACKENDS[parsed.scheme], parsed
