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

*Value*: one ``.npz`` file (uncompressed numpy arrays): all input ids and labels
concatenated as int32, per-example offsets and truncation flags; the examples are the
file's rows after cleaning, in order. Preference pairs add their rejected sequences
the same way (``rejected_*``), sentence-embedding rows their positives and negatives
(``positive_*``, ``negative_*``, an empty negative where ``has_negative`` is false); an
entry says what its examples are (``kind``: ``lm``, ``preference``, ``prompt`` or
``pairs``; an entry without one is ``lm``). Class ids are not stored
(they depend on the whole training set), nor a prompt's reference answer and row (the
row says the first, the prepared list the second), nor reference log-probs (computed
by the run from the model): only tokens.

*Where*: ``tokenized/`` in the trainer's cache directory
(:func:`finetune_trainer.storage.cache.cache_root`: ``$FINETUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/finetune-operator``, else ``~/.cache/finetune-operator``), never
beside the user's data. Entries are written to a temporary name and renamed, so
concurrent ranks never read half a file. A cache that cannot be read or written is a
slower run, never a failed one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.data.tokenize import (
    PairExample,
    PreferenceExample,
    PromptExample,
    TokenizedExample,
)
from finetune_trainer.storage.cache import CACHE_DIR_ENV, cache_root

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger("finetune.trainer")

CACHE_VERSION = 1
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


def _entry_name(data_file: Path, key: str) -> str:
    return f"{data_file.name}.{key[:32]}.npz"


def load(data_file: Path, key: str, expected: int) -> list[TokenizedExample] | None:
    """The cached examples for ``key``, or None: absent, or unusable for any reason (a
    truncated or garbage file, another schema, a directory in its place, no permission,
    not ``expected`` examples long). An unusable entry is a warning and a fresh
    tokenization, never a failed run and never wrong tokens: the entry is checked whole
    before any of it is used."""
    path = cache_dir() / _entry_name(data_file, key)
    try:
        if not path.exists():
            return None
        return _read_entry(path, key, expected)
    except MemoryError:
        raise
    except Exception as exc:  # whatever a damaged file makes numpy or zipfile raise
        log.warning(
            "tokenization cache %s is unusable (%s: %s); tokenizing again",
            path,
            type(exc).__name__,
            exc,
        )
        return None


class _Unusable(ValueError):
    """The entry is readable but not what :func:`store` writes for this key."""


def _read_entry(path: Path, key: str, expected: int) -> list[TokenizedExample]:
    import numpy as np

    with np.load(path, allow_pickle=False) as arrays:
        if str(arrays["key"]) != key:
            raise _Unusable("written for another key")
        kind = str(arrays["kind"]) if "kind" in arrays.files else "lm"
        ids, labels = arrays["input_ids"], arrays["labels"]
        offsets, truncated = arrays["offsets"], arrays["truncated"]
        rejected = None
        texts = None
        if kind == "pairs":
            texts = (
                (
                    arrays["positive_input_ids"],
                    arrays["positive_labels"],
                    arrays["positive_offsets"],
                ),
                (
                    arrays["negative_input_ids"],
                    arrays["negative_labels"],
                    arrays["negative_offsets"],
                ),
                arrays["has_negative"],
            )
        if kind == "preference":
            rejected = (
                arrays["rejected_input_ids"],
                arrays["rejected_labels"],
                arrays["rejected_offsets"],
            )
    if kind not in _KINDS:
        raise _Unusable(f"holds examples of an unknown kind {kind!r}")
    if len(truncated) != expected:
        raise _Unusable(f"holds {len(truncated)} examples, not {expected}")
    _check_layout(ids, labels, offsets, truncated)
    sequences = _split(ids, labels, offsets)
    flags = truncated.tolist()
    if rejected is not None:
        _check_layout(*rejected, truncated)
        return [
            PreferenceExample(
                chosen[0],
                chosen[1],
                truncated=flag,
                rejected_ids=other[0],
                rejected_labels=other[1],
            )
            for chosen, other, flag in zip(sequences, _split(*rejected), flags, strict=True)
        ]
    if texts is not None:
        return _pair_examples(sequences, flags, *texts)
    kind_class = PromptExample if kind == "prompt" else TokenizedExample
    return [kind_class(i, t, truncated=flag) for (i, t), flag in zip(sequences, flags, strict=True)]


_KINDS = ("lm", "preference", "prompt", "pairs")


def _pair_examples(
    anchors: list[tuple[list[int], list[int]]],
    flags: list[bool],
    positive: tuple[Any, Any, Any],
    negative: tuple[Any, Any, Any],
    has_negative: Any,
) -> list[TokenizedExample]:
    """Sentence-embedding rows: a row without a negative stored an empty one."""
    _check_layout(*positive, has_negative)
    _check_layout(*negative, has_negative)
    if has_negative.dtype.kind != "b" or len(has_negative) != len(anchors):
        raise _Unusable("has_negative does not mark each row")
    return [
        PairExample(
            a[0], a[1], truncated=flag, positive_ids=p[0], negative_ids=n[0] if has else None
        )
        for a, p, n, has, flag in zip(
            anchors,
            _split(*positive),
            _split(*negative),
            has_negative.tolist(),
            flags,
            strict=True,
        )
    ]


def _kind(example: TokenizedExample) -> str:
    if isinstance(example, PairExample):
        return "pairs"
    if isinstance(example, PreferenceExample):
        return "preference"
    return "prompt" if isinstance(example, PromptExample) else "lm"


def _split(ids: Any, labels: Any, offsets: Any) -> list[tuple[list[int], list[int]]]:
    """Each example's ids and labels from the concatenated arrays."""
    bounds = offsets.tolist()
    id_list, label_list = ids.tolist(), labels.tolist()
    return [(id_list[a:b], label_list[a:b]) for a, b in pairwise(bounds)]


def _check_layout(ids: Any, labels: Any, offsets: Any, truncated: Any) -> None:
    """Refuse arrays :func:`store` would not have written: slicing by bad offsets would
    silently train on the wrong tokens."""
    import numpy as np

    for name, array, kind in (
        ("input_ids", ids, "i"),
        ("labels", labels, "i"),
        ("offsets", offsets, "i"),
        ("truncated", truncated, "b"),
    ):
        if array.ndim != 1 or array.dtype.kind != kind:
            raise _Unusable(f"{name} is {array.dtype} of shape {array.shape}")
    if len(labels) != len(ids) or len(offsets) != len(truncated) + 1:
        raise _Unusable("array lengths disagree")
    if offsets[0] != 0 or offsets[-1] != len(ids) or bool(np.any(np.diff(offsets) < 0)):
        raise _Unusable("offsets do not partition the tokens")


def _concatenated(rows: Sequence[list[int]], row_labels: Sequence[list[int]]) -> dict[str, Any]:
    """``input_ids``, ``labels`` and ``offsets`` arrays of ``rows``, end to end."""
    import numpy as np

    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    count = int(offsets[-1])
    ids = np.fromiter((t for r in rows for t in r), dtype=np.int32, count=count)
    labels = np.fromiter((t for r in row_labels for t in r), dtype=np.int32, count=count)
    return {"input_ids": ids, "labels": labels, "offsets": offsets}


def store(data_file: Path, key: str, examples: Sequence[TokenizedExample]) -> Path | None:
    """Write the entry to the cache directory; its path, or None when it cannot be."""
    import numpy as np

    kinds = {_kind(e) for e in examples} or {"lm"}
    if len(kinds) > 1:
        raise ValueError(f"a cache entry holds examples of one kind, not {sorted(kinds)}")
    (kind,) = kinds
    arrays = _concatenated([e.input_ids for e in examples], [e.labels for e in examples])
    if kind == "preference":
        pairs = [e for e in examples if isinstance(e, PreferenceExample)]
        rejected = _concatenated(
            [e.rejected_ids for e in pairs], [e.rejected_labels for e in pairs]
        )
        arrays |= {f"rejected_{name}": array for name, array in rejected.items()}
    if kind == "pairs":
        rows = [e for e in examples if isinstance(e, PairExample)]
        positive = [e.positive_ids for e in rows]
        negative = [e.negative_ids or [] for e in rows]
        for side, texts in (("positive", positive), ("negative", negative)):
            stored = _concatenated(texts, [[-100] * len(t) for t in texts])
            arrays |= {f"{side}_{name}": array for name, array in stored.items()}
        arrays["has_negative"] = np.array([e.negative_ids is not None for e in rows], dtype=bool)
    arrays |= {
        "key": np.array(key),
        "kind": np.array(kind),
        "truncated": np.array([e.truncated for e in examples], dtype=bool),
    }
    directory = cache_dir()
    target = directory / _entry_name(data_file, key)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as exc:
        log.warning(
            "tokenization cache: cannot write in %s (%s); set %s to a writable directory",
            directory,
            exc,
            CACHE_DIR_ENV,
        )
        return None
    return target
