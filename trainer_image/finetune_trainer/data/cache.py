"""The tokenization cache: a dataset file is tokenized once per tokenizer and settings.

Tokenizing (chat templates rendered several times per conversation, offsets mapped to
labels) is the slow part of preparing data; rerunning a job, resuming after
preemption, or starting every rank of a multi-node job would otherwise redo it.

*Key*: a sha256 over the file's content (read streaming, so size does not matter;
renaming or touching the file keeps the key, editing it changes it), the tokenizer's
identity (its full ``tokenizer.json`` serialisation, chat template, special tokens and
class), and every setting that changes the tokens: format, columns, deduplicate,
maxSeqLength, lossOn and task, plus :data:`CACHE_VERSION`, bumped whenever the
tokenization code changes what it produces. ``dataset.overlong`` is not in the key:
the cache holds every example tokenized and truncated with its ``truncated`` flag, and
dropping overlong examples happens after the cache, so both settings share one entry.

*Value*: one ``.arrow`` table (:mod:`finetune_trainer.data.table`, memory-mapped when
used) holding the file's rows after cleaning, in order, with what the preparation needs
of each row besides its tokens (where it is in the file, its label or reference
answer...), and beside it a small ``.json`` (:class:`EntryInfo`): the key, the rows
read and dropped while cleaning (a hit reports every count as a miss does), and the
table's size and sha256. The ``.json`` is written last: an entry without it is not
complete. Class ids are not stored (they depend on the whole training set), nor a
prompt's row (its place in the prepared list), nor reference log-probs.

*Where*: ``tokenized/`` in the trainer's cache directory
(:func:`finetune_trainer.storage.cache.cache_root`: ``$FINETUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/finetune-operator``, else ``~/.cache/finetune-operator``), never
beside the user's data; and, when the run gives its output store, a copy in the output
at ``checkpoints/data-cache/<key>.arrow`` (+ ``.json``), so a pod rescheduled on a node with an
empty disk downloads the tokens (verified: size and sha256) instead of tokenizing
again. Entries are written to a temporary name and renamed, so concurrent ranks never
read half a file. A cache that cannot be read or written is a slower run, never a
failed one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.data.table import ExampleTable, TableError, TableWriter, kind_of
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.storage.cache import CACHE_DIR_ENV, cache_root

if TYPE_CHECKING:
    import pyarrow as pa
    from transformers import PreTrainedTokenizerBase

    from finetune_trainer.storage.store import Store

log = logging.getLogger("finetune.trainer")

CACHE_VERSION = 2
"""2: Arrow tables with each row's location and sample (1 was numpy .npz of tokens)."""
REMOTE_PREFIX = "checkpoints/data-cache"
"""Where in the output store entries are kept: inside the run's workspace
(``checkpoints/``), which every store, publisher and reader already keeps out of the
published set (a Hub output keeps it off the Hub; ``finetune verify`` and inference skip
it); checkpoint pruning only removes ``checkpoints/step-N``."""
_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """sha256 of the file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What makes this tokenizer produce the ids it produces."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "class": type(tokenizer).__name__,
        "tokenizer": backend.to_str() if backend is not None else repr(tokenizer),
        "chat_template": getattr(tokenizer, "chat_template", None),
        "special": {
            name: getattr(tokenizer, name, None)
            for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
        },
        "flags": {
            name: getattr(tokenizer, name, None)
            for name in ("add_bos_token", "add_eos_token", "padding_side", "truncation_side")
        },
    }
    encoded = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(encoded).hexdigest()


def cache_key(data_digest: str, tokenizer_id: str, settings: Mapping[str, Any]) -> str:
    body = {
        "version": CACHE_VERSION,
        "data": data_digest,
        "tokenizer": tokenizer_id,
        "settings": dict(settings),
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def cache_dir() -> Path:
    """Where entries are read and written: ``tokenized/`` in the trainer's cache root."""
    return cache_root() / "tokenized"


def files_digest(paths: Sequence[Path]) -> str:
    """The content of a source's files: one file's digest as :func:`file_digest`
    (entries of one-file sources keep their key), several files' in order."""
    if len(paths) == 1:
        return file_digest(paths[0])
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.name}\0{file_digest(path)}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class EntryInfo:
    """The ``.json`` beside an entry's table: what a hit needs besides the tokens."""

    key: str
    rows: int
    """Examples in the table (the file's rows after cleaning)."""
    read: int
    empty: int
    duplicates: int
    size: int
    sha256: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> EntryInfo:
        data = json.loads(text)
        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            raise TableError("the entry's .json does not describe an entry")
        return cls(**data)


def entry_path(data_file: Path, key: str) -> Path:
    """The local table of ``key`` (named after the data file, for whoever looks)."""
    return cache_dir() / f"{data_file.name}.{key[:32]}.arrow"


def info_path(entry: Path) -> Path:
    return entry.with_suffix(".json")


def lock_path(entry: Path) -> Path:
    return entry.with_suffix(".lock")


def _warn_unusable(path: Path, exc: BaseException) -> None:
    log.warning(
        "tokenization cache %s is unusable (%s: %s); tokenizing again",
        path,
        type(exc).__name__,
        exc,
    )


def open_entry(entry: Path, key: str) -> tuple[ExampleTable, EntryInfo] | None:
    """The table of a complete local entry and its info, or None: absent, or unusable
    for any reason (damaged, foreign, written for another key, a size that is not the
    one recorded, a directory in its place, no permission). An unusable entry is a
    warning and a fresh tokenization, never a failed run and never wrong tokens."""
    meta = info_path(entry)
    try:
        if not meta.exists():
            return None
        info = EntryInfo.from_json(meta.read_text())
        if info.key != key:
            raise TableError("written for another key")
        if entry.stat().st_size != info.size:
            raise TableError(f"{entry.stat().st_size} bytes, not the {info.size} written")
        table = ExampleTable(entry)
        if len(table) != info.rows:
            raise TableError(f"holds {len(table)} examples, not {info.rows}")
        table.content_digest = info.sha256
    except MemoryError:
        raise
    except Exception as exc:  # whatever a damaged file makes json, os or pyarrow raise
        _warn_unusable(entry, exc)
        return None
    return table, info


def new_writer(
    entry: Path, kind: str, extra: dict[str, pa.DataType] | None = None
) -> TableWriter | None:
    """A writer of the table at ``entry``; None (a warning) when the cache directory
    cannot be written."""
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        return TableWriter(entry, kind, extra)
    except OSError as exc:
        _warn_unwritable(entry.parent, exc)
        return None


def _warn_unwritable(directory: Path, exc: OSError) -> None:
    log.warning(
        "tokenization cache: cannot write in %s (%s); set %s to a writable directory",
        directory,
        exc,
        CACHE_DIR_ENV,
    )


def _write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def complete(
    entry: Path, key: str, *, rows: int, read: int, empty: int, duplicates: int
) -> EntryInfo | None:
    """Write the ``.json`` that makes the (closed) table at ``entry`` a complete entry."""
    try:
        info = EntryInfo(
            key, rows, read, empty, duplicates, entry.stat().st_size, file_digest(entry)
        )
        _write_text(info_path(entry), info.to_json())
    except OSError as exc:
        _warn_unwritable(entry.parent, exc)
        return None
    return info


def _remote_key(key: str, suffix: str) -> str:
    return f"{REMOTE_PREFIX}/{key}{suffix}"


def upload(store: Store, entry: Path, info: EntryInfo) -> bool:
    """Copy a complete entry to the output store, its ``.json`` last; a failure is a
    warning (the next pod tokenizes again), never a failed run."""
    try:
        store.put_file(entry, _remote_key(info.key, ".arrow"))
        store.put_file(info_path(entry), _remote_key(info.key, ".json"))
    except Exception as exc:  # any store's error: the copy is a speed-up
        log.warning("tokenization cache: cannot copy %s to the output (%s)", entry.name, exc)
        return False
    return True


def download(store: Store, entry: Path, key: str) -> bool:
    """Bring the output store's copy of ``key`` to ``entry``, verified (size and sha256
    as its ``.json`` records) before it is renamed into place; False when the output
    has none, or it cannot be fetched or is not what was written (a warning)."""
    try:
        if not store.exists(_remote_key(key, ".json")):
            return False
        entry.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=entry.parent, prefix=".download-") as tmp:
            meta, table = Path(tmp) / "info.json", Path(tmp) / "table.arrow"
            store.get_file(_remote_key(key, ".json"), meta)
            info = EntryInfo.from_json(meta.read_text())
            if info.key != key:
                raise TableError("written for another key")
            store.get_file(_remote_key(key, ".arrow"), table)
            if table.stat().st_size != info.size or file_digest(table) != info.sha256:
                raise TableError("the copy's size or sha256 is not the one written")
            os.replace(table, entry)
            os.replace(meta, info_path(entry))
    except Exception as exc:  # any store's or file's error: the copy is a speed-up
        log.warning(
            "tokenization cache: the output's copy of %s is unusable (%s: %s); tokenizing",
            entry.name,
            type(exc).__name__,
            exc,
        )
        return False
    return True


def load(data_file: Path, key: str, expected: int) -> list[TokenizedExample] | None:
    """The cached examples of ``key`` as a list, or None (absent, unusable, or not
    ``expected`` examples long)."""
    opened = open_entry(entry_path(data_file, key), key)
    if opened is None:
        return None
    table, _ = opened
    if len(table) != expected:
        _warn_unusable(table.path, TableError(f"holds {len(table)} examples, not {expected}"))
        return None
    return list(table)


def store(data_file: Path, key: str, examples: Sequence[TokenizedExample]) -> Path | None:
    """Write ``examples`` (of one kind) as the entry of ``key``; its path, or None when
    it cannot be written."""
    kinds = {kind_of(e) for e in examples} or {"lm"}
    if len(kinds) > 1:
        raise ValueError(f"a cache entry holds examples of one kind, not {sorted(kinds)}")
    (kind,) = kinds
    entry = entry_path(data_file, key)
    writer = new_writer(entry, kind)
    if writer is None:
        return None
    try:
        with writer:
            writer.write(examples)
    except OSError as exc:
        _warn_unwritable(entry.parent, exc)
        return None
    n = len(examples)
    info = complete(entry, key, rows=n, read=n, empty=0, duplicates=0)
    return None if info is None else entry
