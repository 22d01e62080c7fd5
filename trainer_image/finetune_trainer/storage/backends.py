"""Storage backends: one registry entry per URI scheme.

A backend turns a URI into something local the trainer can read (a file, a model
directory) and publishes a finished artifact directory to a URI. Publishing writes
every file first and ``manifest.json`` last, so a reader that sees a manifest sees a
complete set; a prefix without one is incomplete by definition.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from finetune_trainer.errors import ModelError, StorageError
from finetune_trainer.storage.store import MANIFEST, LocalStore, Store
from finetune_trainer.storage.uri import ParsedUri, Role, UriError, parse_uri

__all__ = ["BACKENDS", "MANIFEST", "Access", "Backend", "fetch_model_dir", "open_store"]

PVC_ROOT_ENV = "FINETUNE_PVC_ROOT"
"""Where pvc:// claims are mounted (the operator mounts claim C at $ROOT/C)."""


@dataclass(frozen=True)
class Access:
    """How to reach a URI: which mounted Secret holds its credentials, how long to retry."""

    credentials_secret: str | None = None
    deadline_seconds: float = 300.0


class Backend(Protocol):
    def local_file(self, uri: ParsedUri, access: Access) -> Path:
        """A local path holding the object at ``uri`` (downloaded if need be)."""

    def local_model_dir(self, uri: ParsedUri, revision: str | None, access: Access) -> Path:
        """A local directory holding the model at ``uri`` in Hugging Face layout."""

    def store(self, uri: ParsedUri, access: Access) -> Store:
        """The output location ``uri`` as a :class:`Store` (artifacts, checkpoints)."""


class LocalBackend:
    """file:// and pvc://: paths on this machine (in a pod: mounted volumes)."""

    def __init__(self, root_for: type[_PathResolver]) -> None:
        self._resolve = root_for()

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

    def store(self, uri: ParsedUri, access: Access) -> Store:
        return LocalStore(str(uri), self._resolve(uri))


class _PathResolver(Protocol):
    def __call__(self, uri: ParsedUri) -> Path: ...


class _FilePaths:
    """file://path: absolute, or relative to the working directory."""

    def __call__(self, uri: ParsedUri) -> Path:
        return Path(uri.location).expanduser()


class _PvcPaths:
    """pvc://claim/path: the claim's mount point under $FINETUNE_PVC_ROOT (/mnt/pvc)."""

    def __call__(self, uri: ParsedUri) -> Path:
        claim, _, rest = uri.location.partition("/")
        return Path(os.environ.get(PVC_ROOT_ENV, "/mnt/pvc")) / claim / rest


class HubBackend:
    """hf://org/name: the Hugging Face Hub through huggingface_hub (HF_TOKEN, HF_ENDPOINT,
    HF_HUB_OFFLINE are honoured by the library itself)."""

    def local_file(self, uri: ParsedUri, access: Access) -> Path:
        raise StorageError(
            f"{uri}: Hub datasets are not readable by this trainer version yet; "
            "download the file and use file:// or pvc://"
        )

    def local_model_dir(self, uri: ParsedUri, revision: str | None, access: Access) -> Path:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(snapshot_download(repo_id=uri.location, revision=revision))
        except LocalEntryNotFoundError as exc:
            raise ModelError(
                f"{uri}: the Hub cannot be reached and the model is not in the local cache "
                f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}); check network "
                "access or HF_ENDPOINT, or use a file:// copy"
            ) from exc
        except HfHubHTTPError as exc:
            raise ModelError(
                f"{uri}: the Hub refused the download ({exc}); check the repository name, "
                "the revision and HF_TOKEN for gated or private models"
            ) from exc

    def store(self, uri: ParsedUri, access: Access) -> Store:
        raise StorageError(f"{uri}: publishing to the Hub is not supported")


class _NotYet:
    """A scheme the contract accepts but this build cannot reach yet."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    def _fail(self, uri: ParsedUri) -> StorageError:
        return StorageError(
            f"{uri}: {self.scheme}:// storage is not available in this build yet; "
            "use file:// or pvc://"
        )

    def local_file(self, uri: ParsedUri, access: Access) -> Path:
        raise self._fail(uri)

    def local_model_dir(self, uri: ParsedUri, revision: str | None, access: Access) -> Path:
        raise self._fail(uri)

    def store(self, uri: ParsedUri, access: Access) -> Store:
        raise self._fail(uri)


BACKENDS: dict[str, Backend] = {
    "file": LocalBackend(_FilePaths),
    "pvc": LocalBackend(_PvcPaths),
    "hf": HubBackend(),
    "s3": _NotYet("s3"),
}


def fetch_model_dir(uri: str, revision: str | None, access: Access | None = None) -> Path:
    """A local directory holding the model at ``uri`` (downloaded if need be)."""
    backend, parsed = backend_for(uri, Role.MODEL)
    return backend.local_model_dir(parsed, revision, access or Access())


def fetch_file(uri: str, role: Role, access: Access | None = None) -> Path:
    """A local path holding the file at ``uri`` (downloaded if need be)."""
    backend, parsed = backend_for(uri, role)
    return backend.local_file(parsed, access or Access())


def open_store(uri: str, access: Access | None = None) -> Store:
    """The output URI ``uri`` as a :class:`Store`."""
    backend, parsed = backend_for(uri, Role.OUTPUT)
    return backend.store(parsed, access or Access())


def local_dir_for(uri: str) -> Path:
    """The local directory of an output URI on a local scheme (file://, pvc://)."""
    backend, parsed = backend_for(uri, Role.OUTPUT)
    if not isinstance(backend, LocalBackend):
        raise StorageError(f"{uri}: only file:// and pvc:// locations can be read here")
    return backend.resolve(parsed)


def backend_for(uri: str, role: Role) -> tuple[Backend, ParsedUri]:
    try:
        parsed = parse_uri(uri, role)
    except UriError as exc:
        raise StorageError(f"{uri}: {exc}") from None
    return BACKENDS[parsed.scheme], parsed
