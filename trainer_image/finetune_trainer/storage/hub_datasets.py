"""A Hub dataset repository read by subset and split, as ``datasets.load_dataset`` reads it.

``hf://datasets/org/name`` with ``dataset.hub`` {subset, split, revision} names what
``load_dataset("org/name", subset, split=split, revision=revision)`` would read, and this
module finds the same files: the README's YAML ``configs`` when it has them (each subset's
``data_files``: a string, a list, or per-split lists of globs, and ``default: true``), else
the folder layouts ``datasets`` documents (``train.jsonl``, ``data/train-*.parquet``,
``train/*.jsonl``, ``data/{split}-00000-of-00002.parquet``; a subset is then a folder, as
``load_dataset(name, data_dir=subset)``). The rules are ``datasets``' own
(:mod:`datasets.data_files`, :class:`datasets.utils.metadata.MetadataConfigs`), applied to
ONE listing of the repository at one commit instead of globbing the Hub file by file, so
resolving a split is two requests (the revision's commit and its tree) plus the README.
One difference: ``load_dataset`` reads a split with one builder, so of a split holding
``.jsonl`` and ``.parquet`` files it keeps the most common kind only; here every file of
the split is read (each by its suffix), so no file a README names is silently left out.

The revision is resolved to its commit first and everything is read at that commit, so a
branch that moves during the download cannot mix two versions. A commit's listing never
changes and is kept in the trainer's cache: a pinned commit already downloaded is read
with no request at all; a branch or tag is asked again every time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.uri import DATA_SUFFIXES
from finetune_trainer.errors import DataError, StorageError
from finetune_trainer.storage.cache import cache_root

if TYPE_CHECKING:
    from huggingface_hub import HfApi

README = "README.md"
COMMIT = re.compile(r"^[0-9a-f]{40}$")
LISTING_VERSION = 1


@dataclass(frozen=True)
class RepoListing:
    """A dataset repository at one commit: its files (path -> size) and its README."""

    repo: str
    commit: str
    files: dict[str, int]
    readme: str | None


@dataclass(frozen=True)
class Choice:
    """Where a subset and split were looked up, for messages."""

    repo: str
    revision: str
    subset: str | None
    split: str

    def __str__(self) -> str:
        subset = f"subset {self.subset!r}" if self.subset else "the default subset"
        return f"hf://datasets/{self.repo}@{self.revision} ({subset}, split {self.split!r})"


def split_files(listing: RepoListing, subset: str | None, split: str, revision: str) -> list[str]:
    """The repository paths holding ``subset``'s ``split``, in the order they are read
    (each pattern's matches sorted, patterns in the order written, as ``datasets``).

    DataError naming the choices for an unknown subset or split, and naming the files for
    a split whose files this trainer cannot read."""
    choice = Choice(listing.repo, revision, subset, split)
    splits = _split_patterns(listing, subset, choice)
    if split not in splits:
        raise DataError(
            f"{choice}: the repository has no split {split!r}; its splits: "
            f"{', '.join(sorted(splits)) or 'none'} (set dataset.hub.split or hub.validation)"
        )
    base, patterns = splits[split]
    matched = (path for pattern in patterns for path in _resolve(listing.files, base, pattern))
    found = [p for p in dict.fromkeys(matched) if _datasets_reads(p)]  # first match's place
    if not found:
        raise DataError(f"{choice}: no data file matches {patterns} in the repository")
    unreadable = [p for p in found if Path(p).suffix.lower() not in DATA_SUFFIXES]
    if unreadable:
        shown = ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else "")
        raise DataError(
            f"{choice}: {len(unreadable)} of its {len(found)} files cannot be read as rows "
            f"({shown}); the trainer reads {', '.join(DATA_SUFFIXES)}: use a subset or "
            "split of such files, or convert the data"
        )
    return found


def _datasets_reads(path: str) -> bool:
    """Whether ``datasets`` counts ``path`` as a data file at all (a ``LICENSE`` or a
    ``.gitattributes`` under a split's glob is passed over, as ``load_dataset`` passes over
    it); those it counts and this trainer cannot read (``.txt``, images, archives) are
    then refused by name."""
    from datasets.packaged_modules import _ALL_ALLOWED_EXTENSIONS

    name = path.rsplit("/", 1)[-1]
    return any(f".{suffix.lower()}" in _ALL_ALLOWED_EXTENSIONS for suffix in name.split(".")[1:])


def _split_patterns(
    listing: RepoListing, subset: str | None, choice: Choice
) -> dict[str, tuple[str, list[str]]]:
    """split -> (base folder, data_files patterns) for ``subset``: from the README's
    ``configs`` when it has them, else from the folder layout."""
    from datasets.data_files import sanitize_patterns

    configs = _readme_configs(listing, choice)
    if configs:
        name = subset or _default_subset(configs, choice)
        if name not in configs:
            raise DataError(
                f"{choice}: the repository has no subset {name!r}; its subsets (the README's "
                f"configs): {', '.join(configs)} (set dataset.hub.subset)"
            )
        config = configs[name]
        base = str(config.get("data_dir") or "").strip("/")
        data_files = config.get("data_files")
        if data_files is None:
            patterns = _layout_patterns(listing.files, base, choice)
        else:
            try:
                patterns = {k: list(v) for k, v in sanitize_patterns(data_files).items()}
            except ValueError as exc:  # a split named twice
                raise DataError(f"{choice}: the README's configs: {exc}") from None
        return {split: (base, list(p)) for split, p in patterns.items()}
    base = (subset or "").strip("/")
    if base and not any(p.startswith(base + "/") for p in listing.files):
        folders = sorted({p.split("/", 1)[0] for p in listing.files if "/" in p})
        raise DataError(
            f"{choice}: the repository has no README configs and no folder {base!r} to read "
            f"as the subset; its folders: {', '.join(folders) or 'none'} (set "
            "dataset.hub.subset to one, or leave it out to read the whole repository)"
        )
    return {s: (base, p) for s, p in _layout_patterns(listing.files, base, choice).items()}


def _layout_patterns(files: dict[str, int], base: str, choice: Choice) -> dict[str, list[str]]:
    """``datasets``' default patterns (split names in file or folder names, sharded
    ``data/{split}-00000-of-00001`` files, else everything is ``train``) for the folder
    ``base``."""
    from datasets.data_files import _get_data_files_patterns

    def resolver(pattern: str) -> list[str]:
        return _resolve(files, base, pattern)

    try:
        patterns = _get_data_files_patterns(resolver)
    except FileNotFoundError:
        raise DataError(f"{choice}: the repository holds no data files") from None
    except ValueError as exc:  # a sharded file name whose split is no split name
        raise DataError(f"{choice}: {exc}") from None
    return {str(split): list(p) for split, p in patterns.items()}  # keys: datasets.NamedSplit


def _readme_configs(listing: RepoListing, choice: Choice) -> dict[str, dict[str, Any]]:
    """The README's YAML ``configs`` by name (empty when it has none), checked by
    ``datasets``' own parser so a card ``load_dataset`` refuses is refused here too."""
    from datasets.utils.metadata import MetadataConfigs, _split_yaml_from_readme

    if listing.readme is None:
        return {}
    block, _ = _split_yaml_from_readme(listing.readme)
    if block is None:
        return {}
    import yaml

    try:
        card = yaml.safe_load(block) or {}
        configs: dict[str, dict[str, Any]] = dict(MetadataConfigs.from_dataset_card_data(card))
    except (yaml.YAMLError, ValueError, TypeError) as exc:
        raise DataError(f"{choice}: the README's YAML configs cannot be read: {exc}") from None
    return configs


def _default_subset(configs: dict[str, dict[str, Any]], choice: Choice) -> str:
    from datasets.utils.metadata import MetadataConfigs

    try:
        name: str | None = MetadataConfigs(configs).get_default_config_name()
    except ValueError as exc:
        raise DataError(f"{choice}: {exc} (set dataset.hub.subset)") from None
    if name is None:
        raise DataError(
            f"{choice}: the repository has several subsets and no default: set "
            f"dataset.hub.subset to one of {', '.join(configs)}"
        )
    return name


def _resolve(files: Iterable[str], base: str, pattern: str) -> list[str]:
    """The files matching ``pattern`` under ``base``, sorted, as ``datasets``'
    ``resolve_pattern`` globs them (fsspec glob; hidden files, ``__special__`` folders
    and the card files ignored unless the pattern names them)."""
    from datasets.data_files import (
        FILES_TO_IGNORE,
        _is_inside_unrequested_special_dir,
        _is_unrequested_hidden_file_or_is_inside_unrequested_hidden_dir,
    )
    from fsspec.utils import glob_translate

    full = f"{base}/{pattern.lstrip('/')}" if base else pattern.lstrip("/")
    matcher = re.compile(glob_translate(full))
    ignored = set(FILES_TO_IGNORE) - {full.rsplit("/", 1)[-1]}
    return sorted(
        path
        for path in files
        if matcher.match(path)
        and path.rsplit("/", 1)[-1] not in ignored
        and not _is_inside_unrequested_special_dir(path, full)
        and not _is_unrequested_hidden_file_or_is_inside_unrequested_hidden_dir(path, full)
    )


# ---------------------------------------------------------------------- the Hub side


def list_repo(
    api: HfApi, repo: str, revision: str, fetch: Callable[[str, str], Path]
) -> RepoListing:
    """The repository at ``revision`` (its commit, files and README); a commit's listing
    from the cache when it was read before. ``fetch(path, commit)`` downloads one file."""
    from huggingface_hub.hf_api import RepoFile

    cached = _listing_path(repo, revision) if COMMIT.match(revision) else None
    if cached is not None and cached.is_file():
        try:
            data = json.loads(cached.read_text())
            if data.get("version") == LISTING_VERSION:
                return RepoListing(repo, data["commit"], data["files"], data["readme"])
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry: asked again below
    info = api.dataset_info(repo, revision=revision)
    if info.sha is None:
        raise StorageError(f"hf://datasets/{repo}: the Hub named no commit for {revision}")
    commit = info.sha
    entries = api.list_repo_tree(repo, repo_type="dataset", revision=commit, recursive=True)
    files = {e.path: e.size for e in entries if isinstance(e, RepoFile)}
    readme = fetch(README, commit).read_text(encoding="utf-8") if README in files else None
    listing = RepoListing(repo, commit, files, readme)
    _keep(listing)
    return listing


def _listing_path(repo: str, commit: str) -> Path:
    return cache_root() / "hub-datasets" / repo.replace("/", "--") / f"{commit}.json"


def _keep(listing: RepoListing) -> None:
    """The commit's listing into the cache, written whole or not at all."""
    path = _listing_path(listing.repo, listing.commit)
    data = {
        "version": LISTING_VERSION,
        "commit": listing.commit,
        "files": listing.files,
        "readme": listing.readme,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # ranks may write it at once
        tmp.write_text(json.dumps(data))
        tmp.replace(path)
    except OSError:
        pass  # a speed-up only
