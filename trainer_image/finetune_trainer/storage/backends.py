"""Storage backends: one registry entry per URI scheme.

A backend turns a URI into something local the trainer can read (a file, a model
directory) and publishes a finished artifact directory to a URI. Publishing writes
every file first and ``manifest.json`` last, so a reader that sees a manifest sees a
complete set; a prefix without one is incomplete by definition.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from finetune_api.uri import (
    DATA_SUFFIXES,
    ParsedUri,
    Role,
    UriError,
    hf_dataset_parts,
    parse_uri,
)
from finetune_trainer.errors import ModelError, StorageError, TrainerError
from finetune_trainer.storage.credentials import hf_token
from finetune_trainer.storage.s3 import S3Backend
from finetune_trainer.storage.store import MANIFEST, LocalStore, Store

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
    """hf://org/name models and hf://datasets/org/name[/file] datasets through
    huggingface_hub, which honours HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE itself and
    keeps its own cache; HF_TOKEN from a credentials Secret takes precedence."""

    def local_file(self, uri: ParsedUri, access: Access) -> Path:
        """The dataset file: the one named in the URI, or the repository's only data file."""
        from huggingface_hub import snapshot_download

        repo, path = hf_dataset_parts(uri.location)
        patterns = [path] if path else [f"*{s}" for s in DATA_SUFFIXES]
        token = hf_token(access.credentials_secret)
        snapshot = Path(
            _from_hub(
                uri,
                lambda: snapshot_download(
                    repo_id=repo, repo_type="dataset", allow_patterns=patterns, token=token
                ),
                StorageError,
            )
        )
        if path:
            if not (snapshot / path).is_file():
                raise StorageError(f"{uri}: the dataset repository has no file {path!r}")
            return snapshot / path
        return snapshot / only_data_file(uri, snapshot)

    def local_model_dir(self, uri: ParsedUri, revision: str | None, access: Access) -> Path:
        from huggingface_hub import snapshot_download

        token = hf_token(access.credentials_secret)
        return Path(
            _from_hub(
                uri,
                lambda: snapshot_download(repo_id=uri.location, revision=revision, token=token),
                ModelError,
            )
        )

    def store(self, uri: ParsedUri, access: Access) -> Store:
        raise StorageError(f"{uri}: publishing to the Hub is not supported")


def only_data_file(uri: ParsedUri, snapshot: Path) -> str:
    """The one data file of a dataset repository, relative; an error naming the choices
    when there are none or several."""
    found = sorted(
        p.relative_to(snapshot).as_posix()
        for p in snapshot.rglob("*")
        if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
    )
    if len(found) == 1:
        return found[0]
    what = "no data file" if not found else f"{len(found)} data files"
    listing = "".join(f"\n  - {uri}/{f}" for f in found[:10])
    raise StorageError(
        f"{uri}: the dataset repository holds {what} ({', '.join(DATA_SUFFIXES)}); "
        f"name one in the URI, hf://datasets/<org>/<name>/<file>{listing}"
    )


def _from_hub(uri: ParsedUri, download: Callable[[], str], error: type[TrainerError]) -> str:
    """``download()``, with the Hub's failures turned into ``error`` saying what to check."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return download()
    except LocalEntryNotFoundError as exc:
        raise error(
            f"{uri}: the Hub cannot be reached and the files are not in the local cache "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}, "
            f"HF_ENDPOINT={os.environ.get('HF_ENDPOINT', 'unset')}); check network access "
            "and HF_ENDPOINT, or use a file:// copy"
        ) from exc
    except HfHubHTTPError as exc:
        raise error(
            f"{uri}: the Hub refused the download ({exc}); check the repository name, "
            "the revision and HF_TOKEN for gated or private repositories"
        ) from exc


BACKENDS: dict[str, Backend] = {
    "file": LocalBackend(_FilePaths),
    "pvc": LocalBackend(_PvcPaths),
    "hf": HubBackend(),
    "s3": S3Backend(),
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
