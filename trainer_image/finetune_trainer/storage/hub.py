"""hf:// storage: models and datasets on the Hugging Face Hub, read-only.

``hf://org/name`` models and ``hf://datasets/org/name[/file]`` datasets go through
huggingface_hub, which honours HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE itself and keeps
its own cache; HF_TOKEN from a credentials Secret takes precedence.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from finetune_api.uri import DATA_SUFFIXES, ParsedUri, hf_dataset_parts
from finetune_trainer.errors import ModelError, StorageError, TrainerError
from finetune_trainer.storage.credentials import hf_token
from finetune_trainer.storage.store import Access


class HubBackend:
    """The ``hf`` registry entry: downloads through huggingface_hub; no outputs."""

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

    def store(self, uri: ParsedUri, access: Access) -> NoReturn:
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
