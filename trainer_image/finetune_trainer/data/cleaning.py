"""Cleaning examples before tokenization: empty rows and exact duplicates go.

Both are common in scraped and merged datasets and both waste steps: an empty answer
teaches only the end-of-turn token, and a repeated row is trained on several times per
epoch, which overweights it and (when it lands on both sides of a validation split)
inflates the held-out scores. Each dropped row is counted for the run's report.

*Empty* means nothing to learn from: a conversation whose assistant turns are all
blank, a text (or, for a pair, either text) that is blank, a preference pair either of
whose answers is blank (there is nothing to compare), or a prompt that is blank.
*Duplicate* means the same content as an earlier example of the same file after light
normalisation: Unicode NFC, CRLF to LF, and leading/trailing whitespace trimmed per
field. Case and inner whitespace are kept: in code and in formatting tasks they are the
content. A preference pair is a duplicate only when its prompt and both answers repeat
(one prompt with several different pairs is ordinary preference data); a prompt only
when its reference answer repeats too.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from dataclasses import dataclass

from finetune_trainer.data.formats import Example, Message


def normalize(text: str) -> str:
    return unicodedata.normalize("NFC", text.replace("\r\n", "\n")).strip()


def _blank(turns: tuple[Message, ...], role: str | None = "assistant") -> bool:
    return all(not m["content"].strip() for m in turns if role is None or m["role"] == role)


def is_empty(example: Example) -> bool:
    if example.chosen is not None:
        return _blank(example.chosen) or _blank(example.rejected or ())
    if example.prompt_only:
        return _blank(example.messages or (), role=None)
    if example.messages is not None:
        return _blank(example.messages)
    texts = [example.text or ""]
    if example.text_pair is not None:
        texts.append(example.text_pair)
    return any(not t.strip() for t in texts)


def _turns(turns: tuple[Message, ...] | None) -> list[list[str]] | None:
    return None if turns is None else [[m["role"], normalize(m["content"])] for m in turns]


def content_key(example: Example) -> bytes:
    """A digest of the example's normalised content: equal digests, equal examples."""
    body: object
    if example.chosen is not None or example.prompt_only:
        reference = None if example.reference is None else normalize(example.reference)
        body = {
            "prompt": _turns(example.messages),
            "chosen": _turns(example.chosen),
            "rejected": _turns(example.rejected),
            "reference": reference,
        }
    elif example.messages is not None:
        body = _turns(example.messages)
    else:
        pair = None if example.text_pair is None else normalize(example.text_pair)
        label = None if example.label is None else str(example.label)
        texts = [normalize(example.text or ""), pair, label]
        if example.pairs:  # a pair with another negative is another triplet
            texts.append(None if example.negative is None else normalize(example.negative))
        body = texts
    encoded = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.blake2b(encoded, digest_size=16).digest()


@dataclass
class CleanCounts:
    empty: int = 0
    duplicates: int = 0


class Cleaner:
    """:func:`clean` over a file read in chunks: the examples seen so far are remembered
    as 64-bit content hashes in one sorted numpy array (8 bytes a row, not a Python
    object a row), so a duplicate of a row many chunks back is still found. Two
    different rows share a 64-bit hash with probability ~n^2/2^65 (2e-7 for 3M rows):
    one row then wrongly dropped as a duplicate, never a wrong token."""

    def __init__(self, *, deduplicate: bool) -> None:
        import numpy as np

        self.deduplicate = deduplicate
        self.counts = CleanCounts()
        self._seen = np.zeros(0, dtype=np.uint64)

    def keep(self, examples: list[Example]) -> list[int]:
        """Indices (into ``examples``) of the examples to keep, in order, counting the
        rest; ``examples`` follow those of every earlier call.

        The chunk's keys are looked up in the remembered ones with one vectorised
        ``searchsorted`` and merged into them with one ``insert`` (a copy of the array,
        linear): merging by re-sorting everything (``union1d``) made each chunk cost
        N log N and a 3M-row file spend most of its preparation deduplicating."""
        import numpy as np

        candidates: list[int] = []
        keys: list[int] = []
        for index, example in enumerate(examples):
            if is_empty(example):
                self.counts.empty += 1
                continue
            candidates.append(index)
            if self.deduplicate:
                keys.append(int.from_bytes(content_key(example)[:8], "little"))
        if not self.deduplicate:
            return candidates
        chunk_keys = np.array(keys, dtype=np.uint64)
        at = np.searchsorted(self._seen, chunk_keys)
        seen = np.zeros(len(keys), dtype=bool)
        inside = at < len(self._seen)
        seen[inside] = self._seen[at[inside]] == chunk_keys[inside]
        kept: list[int] = []
        fresh: set[int] = set()
        for index, key, earlier in zip(candidates, keys, seen.tolist(), strict=True):
            if earlier or key in fresh:
                self.counts.duplicates += 1
                continue
            fresh.add(key)
            kept.append(index)
        if fresh:
            new = np.array(sorted(fresh), dtype=np.uint64)
            self._seen = np.insert(self._seen, np.searchsorted(self._seen, new), new)
        return kept


def clean(examples: list[Example], *, deduplicate: bool) -> tuple[list[int], CleanCounts]:
    """Indices of the examples to keep, in order, and what was dropped."""
    cleaner = Cleaner(deduplicate=deduplicate)
    return cleaner.keep(examples), cleaner.counts
