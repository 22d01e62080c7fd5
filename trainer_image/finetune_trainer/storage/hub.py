"""hf:// storage: models and datasets on the Hugging Face Hub, and outputs published to it.

``hf://org/name`` models and ``hf://datasets/org/name[/file]`` datasets go through
huggingface_hub, which honours HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE itself and keeps
its own cache; HF_TOKEN from a credentials Secret takes precedence.

An ``hf://org/name[@branch]`` output is a model repository (:class:`HubStore`). The
published set goes up in ONE commit (:meth:`HubStore.publish_set`), so readers of the
repository see the old set or the whole new one, never a mixture: the Hub's atomic
commit does what ``manifest.json`` written last does for a bucket, and the manifest is
in that commit. The lease is optimistic: taking it creates the repository (private) or
the branch if absent and notes the branch's head commit; the publishing commit names
that head as its ``parent_commit``, so when another writer committed to the branch in
between, the Hub refuses the commit and the run fails naming the output
(:class:`~.store.OutputBusy`) instead of silently replacing the other's set. Two runs
can therefore both train on one hf:// output, but only the first to publish succeeds.

Checkpoints are not pushed to the Hub (hundreds of MB per step would fill the
repository's history for ever): ``checkpoints/`` keys live in a local workspace under
the trainer's cache (:func:`~.cache.cache_root`), so a run resumes on the same machine
or volume, not after its pod moves. Jobs that must resume anywhere publish to s3:// or
pvc:// (and may copy the result to the Hub with ``huggingface-cli upload``).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from finetune_api.redaction import register
from finetune_api.uri import DATA_SUFFIXES, ParsedUri, hf_dataset_parts, hf_output_parts
from finetune_trainer.errors import DataError, ModelError, StorageError, TrainerError
from finetune_trainer.storage.cache import cache_root
from finetune_trainer.storage.credentials import hf_token
from finetune_trainer.storage.hub_datasets import list_repo, split_files
from finetune_trainer.storage.store import (
    MANIFEST,
    Access,
    Holder,
    LocalStore,
    ObjectInfo,
    busy,
    local_files,
    safe_key,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from finetune_api.config.data import HubDatasetOptions

T = TypeVar("T")
CHECKPOINTS_PREFIX = "checkpoints/"
HUB_HOUSEKEEPING = frozenset({".gitattributes"})
"""Files the Hub writes into every repository itself: not part of any published set."""
_LEASED_HEADS: dict[str, str] = {}
"""The branch head each hf:// output's lease saw, by output URI: the parent the
publishing commit must have (another store object of the same process publishes)."""


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
                    repo_id=repo,
                    repo_type="dataset",
                    allow_patterns=patterns,
                    token=token,
                    endpoint=os.environ.get("HF_ENDPOINT") or None,
                ),
                StorageError,
            )
        )
        if path:
            if not (snapshot / path).is_file():
                raise StorageError(f"{uri}: the dataset repository has no file {path!r}")
            return snapshot / path
        return snapshot / only_data_file(uri, snapshot)

    def data_files(
        self,
        uri: ParsedUri,
        access: Access,
        hub: HubDatasetOptions | None,
        split: str | None,
    ) -> list[Path]:
        """The files of a Hub dataset in read order (see ``backends.fetch_data_files``):
        the file the URI names, or every file of the subset's split (``split``, else
        ``hub.split``) at ``hub.revision``, resolved as ``datasets.load_dataset`` does
        (:mod:`.hub_datasets`)."""
        repo, path = hf_dataset_parts(uri.location)
        if path is not None:
            if hub is not None:
                raise DataError(
                    f"{uri}: dataset.hub reads a repository by subset and split, and the URI "
                    f"names one file ({path}): set train to hf://datasets/{repo} (and "
                    "hub.subset/split), or remove hub"
                )
            return [self.local_file(uri, access)]
        return HubDatasetReader(uri, repo, access).split_files(
            hub.subset if hub else None,
            split or (hub.split if hub else "train"),
            (hub.revision if hub else None) or "main",
        )

    def open_stream(self, uri: ParsedUri, access: Access) -> BinaryIO:
        """One file of a dataset repository read as it downloads (``dataset.streaming``),
        nothing written to disk; a repository named without a file is downloaded to find
        its one data file (``local_file``)."""
        repo, path = hf_dataset_parts(uri.location)
        if not path:
            return self.local_file(uri, access).open("rb")
        return _stream_file(str(uri), repo, path, hf_token(access.credentials_secret))

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

    def store(self, uri: ParsedUri, access: Access) -> HubStore:
        repo, branch = hf_output_parts(uri.location)
        return HubStore(str(uri), repo, branch, hf_token(access.credentials_secret))


class HubDatasetReader:
    """One dataset repository read through huggingface_hub with the dataset's token."""

    def __init__(self, uri: ParsedUri, repo: str, access: Access) -> None:
        from huggingface_hub import HfApi

        self.uri = uri
        self.repo = repo
        self.secret = access.credentials_secret
        self.token = hf_token(access.credentials_secret) or os.environ.get("HF_TOKEN") or None
        register(self.token)  # never quoted by any message, log line or status
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
        self.api: HfApi = HfApi(endpoint=self.endpoint, token=self.token or False)

    def split_files(self, subset: str | None, split: str, revision: str) -> list[Path]:
        """Downloaded files of ``subset``'s ``split`` at ``revision``, in read order, each
        checked against the size the repository's listing gives."""
        listing = self._call(
            f"read revision {revision!r}",
            lambda: list_repo(self.api, self.repo, revision, self._download),
        )
        paths = split_files(listing, subset, split, revision)
        local: list[Path] = []
        for path in paths:
            file = self._call(f"download {path}", partial(self._download, path, listing.commit))
            if file.stat().st_size != listing.files[path]:
                raise StorageError(
                    f"{self.uri}: {path} downloaded as {file.stat().st_size} bytes, the "
                    f"repository lists {listing.files[path]}; the download is incomplete, "
                    "run again"
                )
            local.append(file)
        return local

    def _download(self, path: str, commit: str) -> Path:
        """One file at a commit, through huggingface_hub's cache (a commit's file is
        served from the cache without a request once there)."""
        from huggingface_hub import hf_hub_download

        return Path(
            hf_hub_download(
                self.repo,
                path,
                repo_type="dataset",
                revision=commit,
                token=self.token or False,
                endpoint=self.endpoint,
            )
        )

    def _call(self, what: str, call: Callable[[], T]) -> T:
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return call()
        except RevisionNotFoundError as exc:
            raise DataError(
                f"{self.uri}: the repository has no branch, tag or commit named like the "
                f"requested one ({what}); check dataset.hub.revision"
            ) from exc
        except RepositoryNotFoundError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise self._refused(what, status) from None
            raise StorageError(
                f"{self.uri}: no such dataset repository on the Hub (or it is private and "
                f"{self._token_source()} gives no access to it); check the name"
            ) from None
        except LocalEntryNotFoundError as exc:
            raise StorageError(
                f"{self.uri}: the Hub cannot be reached to {what} and it is not in the "
                f"local cache (HF_ENDPOINT={self.endpoint or 'unset'}); check network access"
            ) from exc
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if status in (401, 403):
                raise self._refused(what, status) from None
            raise StorageError(
                f"{self.uri}: cannot {what} on the Hub (HTTP {status or '-'}); check "
                f"HF_ENDPOINT ({self.endpoint or 'the public Hub'}) and the repository name"
            ) from None
        except OSError as exc:
            raise StorageError(
                f"{self.uri}: cannot {what} on the Hub ({type(exc).__name__}); check "
                f"HF_ENDPOINT ({self.endpoint or 'the public Hub'}) and HF_HUB_OFFLINE "
                f"({os.environ.get('HF_HUB_OFFLINE', 'unset')}): offline, only a pinned "
                "commit read before is found in the cache"
            ) from exc

    def _token_source(self) -> str:
        if self.secret:
            return f"the token in Secret {self.secret!r} (key HF_TOKEN)"
        return "HF_TOKEN" if self.token else "no token (the repository may be private)"

    def _refused(self, what: str, status: int) -> StorageError:
        fix = (
            f"put a token that may read it in Secret {self.secret!r} under the key HF_TOKEN"
            if self.secret
            else "set dataset.credentialsSecret to a Secret holding HF_TOKEN"
        )
        return StorageError(
            f"{self.uri}: the Hub refused to {what} (HTTP {status}) with "
            f"{self._token_source()}; the repository is private or gated: {fix}"
        )


class HubStore:
    """An ``hf://org/name[@branch]`` output: a model repository's branch; ``checkpoints/``
    in a local workspace (see the module)."""

    def __init__(self, uri: str, repo: str, branch: str | None, token: str | None) -> None:
        from huggingface_hub import HfApi

        self.uri = uri
        self.repo = repo
        self.branch = branch or "main"
        self.token = token or os.environ.get("HF_TOKEN") or None
        register(self.token)  # never quoted by any message, log line or status
        self.endpoint = os.environ.get("HF_ENDPOINT") or None
        self.api: HfApi = HfApi(endpoint=self.endpoint, token=self.token or False)
        digest = hashlib.sha256(uri.encode()).hexdigest()[:24]
        self.workspace = LocalStore(uri, cache_root() / "hub-outputs" / digest)

    # ------------------------------------------------------------------ the lease

    def lease(self, holder: Holder) -> AbstractContextManager[None]:
        return self._lease(holder)

    @contextlib.contextmanager
    def _lease(self, holder: Holder) -> Iterator[None]:
        """The repository and branch, created when absent (a new repository is private),
        and their head noted for the publishing commit; the local checkpoint workspace
        flock-leased as any local output. Also the probe that the token may write."""
        from huggingface_hub.errors import RevisionNotFoundError

        self._call(
            "create the repository",
            lambda: self.api.create_repo(self.repo, private=True, exist_ok=True),
        )
        try:
            head = self._head()
        except RevisionNotFoundError:
            self._call(
                "create the branch",
                lambda: self.api.create_branch(self.repo, branch=self.branch, exist_ok=True),
            )
            head = self._head()
        with self.workspace.lease(holder):
            _LEASED_HEADS[self.uri] = head
            try:
                yield
            finally:
                _LEASED_HEADS.pop(self.uri, None)

    def _head(self) -> str:
        from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

        try:
            info = self.api.model_info(self.repo, revision=self.branch)
        except RevisionNotFoundError:
            raise
        except (HfHubHTTPError, OSError) as exc:
            raise self._error("read the branch's head commit", exc) from exc
        if info.sha is None:
            raise StorageError(f"{self.uri}: the Hub named no head commit for {self.branch}")
        return info.sha

    # ------------------------------------------------------------------ publishing

    def publish_set(self, staging: Path) -> str:
        """Commit every file of ``staging`` in one commit (files the repository holds that
        the set does not are deleted in it); the commit id. Fails with OutputBusy when
        another writer committed since this process took the lease."""
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        files = [*local_files(staging), *([MANIFEST] if (staging / MANIFEST).is_file() else [])]
        stale = {o.key for o in self._hub_list("")} - set(files)
        operations: list[Any] = [
            CommitOperationAdd(path_in_repo=safe_key(rel), path_or_fileobj=staging / rel)
            for rel in files
        ]
        operations += [CommitOperationDelete(path_in_repo=key) for key in sorted(stale)]
        return self._commit(operations, f"Publish {len(files)} files (finetune-operator)")

    def _commit(self, operations: list[Any], message: str) -> str:
        from huggingface_hub.errors import HfHubHTTPError

        parent = _LEASED_HEADS.get(self.uri)
        try:
            info = self.api.create_commit(
                self.repo,
                operations,
                commit_message=message,
                revision=self.branch,
                parent_commit=parent,
            )
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else None
            if parent is not None and status in (409, 412):
                raise busy(
                    self.uri,
                    None,
                    f"(it committed to {self.branch} after this run took the output at "
                    f"commit {parent[:12]}; this run's set was not published) look at the "
                    "branch's history",
                ) from None
            raise self._error("commit", exc) from exc
        if parent is not None:
            _LEASED_HEADS[self.uri] = info.oid
        return str(info.oid)

    # ------------------------------------------------------------------ the Store protocol

    def put_file(self, src: Path, key: str) -> None:
        """One file: into the checkpoint workspace, or one commit of its own on the Hub."""
        from huggingface_hub import CommitOperationAdd

        key = safe_key(key)
        if key.startswith(CHECKPOINTS_PREFIX):
            self.workspace.put_file(src, key)
            return
        self._commit([CommitOperationAdd(path_in_repo=key, path_or_fileobj=src)], f"Add {key}")

    def get_file(self, key: str, dst: Path) -> None:
        from huggingface_hub import hf_hub_download

        key = safe_key(key)
        if key.startswith(CHECKPOINTS_PREFIX):
            self.workspace.get_file(key, dst)
            return
        local = self._call(
            "download " + key,
            lambda: hf_hub_download(
                self.repo,
                key,
                revision=self.branch,
                token=self.token or False,
                endpoint=self.endpoint,
            ),
        )
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local, dst)

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        found = [] if prefix.startswith(CHECKPOINTS_PREFIX) else self._hub_list(prefix)
        if not prefix or prefix.startswith(CHECKPOINTS_PREFIX.rstrip("/")):
            found += self.workspace.list(prefix) if self.workspace.root.is_dir() else []
        return sorted(found, key=lambda o: o.key)

    def _hub_list(self, prefix: str) -> builtins.list[ObjectInfo]:
        """The branch's files under ``prefix`` (none when the repository or branch does
        not exist yet), the Hub's own housekeeping files aside."""
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError
        from huggingface_hub.hf_api import RepoFile

        def tree() -> builtins.list[ObjectInfo]:
            try:
                entries = self.api.list_repo_tree(
                    self.repo,
                    path_in_repo=prefix.rstrip("/") or None,
                    revision=self.branch,
                    recursive=True,
                )
                return [
                    ObjectInfo(e.path, e.size)
                    for e in entries
                    if isinstance(e, RepoFile) and e.path not in HUB_HOUSEKEEPING
                ]
            except (RepositoryNotFoundError, RevisionNotFoundError):
                return []

        return self._call("list the files", tree)

    def exists(self, key: str) -> bool:
        key = safe_key(key)
        return any(o.key == key for o in self.list(key.rsplit("/", 1)[0] if "/" in key else ""))

    def delete(self, keys: Iterable[str]) -> None:
        """Checkpoint keys from the workspace; others in one commit (absent ones skipped)."""
        from huggingface_hub import CommitOperationDelete

        keys = [safe_key(k) for k in keys]
        self.workspace.delete(k for k in keys if k.startswith(CHECKPOINTS_PREFIX))
        hub = [k for k in keys if not k.startswith(CHECKPOINTS_PREFIX)]
        present = {o.key for o in self._hub_list("")} if hub else set()
        operations = [CommitOperationDelete(path_in_repo=k) for k in hub if k in present]
        if operations:
            self._commit(operations, f"Delete {len(operations)} files")

    # ------------------------------------------------------------------ errors

    def _call(self, what: str, call: Callable[[], T]) -> T:
        from huggingface_hub.errors import HfHubHTTPError

        try:
            return call()
        except HfHubHTTPError as exc:
            raise self._error(what, exc) from exc
        except OSError as exc:  # the endpoint cannot be reached
            raise self._error(what, exc) from exc

    def _error(self, what: str, exc: Exception) -> StorageError:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        hint = {
            401: "the token is missing or invalid: put a write token in the output's "
            "credentialsSecret under the key HF_TOKEN",
            403: "the token may not write to this repository: use a token with write "
            "access to the organisation",
        }.get(
            status or 0,
            f"check HF_ENDPOINT ({self.endpoint or 'the public Hub'}) and the repository name",
        )
        return StorageError(
            f"{self.uri}: cannot {what} on the Hub ({type(exc).__name__}, "
            f"HTTP {status or '-'}); {hint}"
        )


def _stream_file(uri: str, repo: str, path: str, token: str | None) -> BinaryIO:
    """GET a dataset file at the endpoint (HF_ENDPOINT or the Hub) as a stream; a refusal
    is a StorageError naming the URI (the token is never part of a message)."""
    import requests
    from huggingface_hub import hf_hub_url

    token = token or os.environ.get("HF_TOKEN") or None
    register(token)
    endpoint = os.environ.get("HF_ENDPOINT") or None
    url = hf_hub_url(repo, path, repo_type="dataset", endpoint=endpoint)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = requests.get(url, headers=headers, stream=True, timeout=(10, 120))
    except requests.RequestException as exc:
        raise StorageError(
            f"{uri}: cannot read ({type(exc).__name__}); check HF_ENDPOINT "
            f"({endpoint or 'the public Hub'}) and the network"
        ) from None
    if response.status_code != 200:
        response.close()
        raise StorageError(
            f"{uri}: cannot read (HTTP {response.status_code}); check the repository and the "
            "file name, and for a private dataset the token (dataset.credentialsSecret HF_TOKEN)"
        )
    response.raw.decode_content = True
    body: BinaryIO = response.raw
    return body


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
