"""Generate the retrieval set of the sentence-embedding example: jargon to English.

Each row's anchor is a short scene written in a made-up jargon ("a blick zorp sits
beside the florn"), its positive the same scene in plain English ("a red car sits beside
the river"), and its negative the English scene with one word changed (a hard negative:
"a red car sits beside the bridge"). The jargon is consistent, one pseudo-word per
English word, so the set is learnable: training teaches which pseudo-word means what.
A pretrained encoder has never seen the jargon and can match only the shared words
("a", "the", "beside"), which every candidate has, so it retrieves poorly; held-out
rows are new combinations of the same words, so what is learned is the vocabulary, not
the rows. Deterministic: `python generate.py` rewrites train.jsonl and
validation.jsonl byte for byte.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

HERE = Path(__file__).parent

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "purple", "orange"]
THINGS = ["car", "dog", "lamp", "boat", "chair", "horse", "kite", "clock", "bicycle", "piano"]
RELATIONS = ["sits beside", "stands behind", "lies under", "waits near", "rests on"]
PLACES = ["river", "bridge", "tower", "garden", "market", "station", "forest", "harbour"]

_SYLLABLES = ["bl", "zor", "fl", "kra", "mun", "ti", "vex", "dro", "pa", "qui", "sn", "gl"]
_ENDINGS = ["ick", "orp", "an", "et", "ul", "ix", "om", "ash"]


def jargon(words: list[str], seed: int) -> dict[str, str]:
    """One distinct pseudo-word per English word, drawn from ``seed``."""
    rng = random.Random(seed)
    table: dict[str, str] = {}
    used: set[str] = set()
    for word in words:
        while True:
            made = rng.choice(_SYLLABLES) + rng.choice(_ENDINGS)
            if made not in used:
                used.add(made)
                table[word] = made
                break
    return table


def scene(colour: str, thing: str, relation: str, place: str) -> str:
    return f"a {colour} {thing} {relation} the {place}"


def rows(seed: int = 0) -> list[dict[str, str]]:
    """Every scene once, shuffled: anchor (jargon), positive, negative (English)."""
    words = COLOURS + THINGS + PLACES + [r.split()[0] for r in RELATIONS]
    table = jargon(words, seed)
    rng = random.Random(seed + 1)
    out = []
    for colour in COLOURS:
        for thing in THINGS:
            for relation in RELATIONS:
                for place in PLACES:
                    verb, preposition = relation.split()
                    said = f"{table[verb]} {preposition}"
                    anchor = scene(table[colour], table[thing], said, table[place])
                    other = rng.choice([p for p in PLACES if p != place])
                    out.append(
                        {
                            "anchor": anchor,
                            "positive": scene(colour, thing, relation, place),
                            "negative": scene(colour, thing, relation, other),
                        }
                    )
    rng.shuffle(out)
    return out


def write(path: Path, items: list[dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in items))


def main(train: int = 1200, validation: int = 200) -> None:
    every = rows()
    write(HERE / "train.jsonl", every[:train])
    write(HERE / "validation.jsonl", every[train : train + validation])


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
