"""Generate a small product-review sentiment set for the classification example.

Sentences are assembled from hand-written parts (subjects, positive and negative
judgements, intensifiers, sentence shapes), so the set is varied but deterministic:
`python make_data.py` rewrites train.jsonl and validation.jsonl byte for byte.
Validation sentences use judgements that never appear in train, so a model must
generalise from what the words mean, not memorise phrases.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

SUBJECTS = [
    "the battery",
    "this blender",
    "the hotel room",
    "our waiter",
    "the delivery",
    "the screen",
    "this jacket",
    "the customer service",
    "the new update",
    "the headphones",
    "the pizza",
    "this novel",
    "the train journey",
    "the app",
    "the hiking boots",
    "the keyboard",
    "the concert",
    "the vacuum cleaner",
    "the coffee",
    "the tutorial",
]
POSITIVE = [
    "works perfectly",
    "exceeded my expectations",
    "is absolutely wonderful",
    "was a delight",
    "is worth every penny",
    "made my day",
    "is excellent",
    "is fantastic",
    "was better than I hoped",
    "is a joy to use",
    "impressed everyone",
    "is brilliant",
    "was superb",
    "feels really well made",
    "was lovely",
    "is outstanding",
    "was flawless",
    "is great value",
    "was very pleasant",
    "is a pleasure",
]
NEGATIVE = [
    "broke after two days",
    "was a complete waste of money",
    "is terrible",
    "was a huge disappointment",
    "stopped working",
    "is awful",
    "was rude and slow",
    "feels cheap and flimsy",
    "is useless",
    "was a nightmare",
    "ruined the evening",
    "is painfully slow",
    "was dirty",
    "is frustrating",
    "was badly damaged",
    "is the worst I have owned",
    "was horrible",
    "is unreliable",
    "was cold and bland",
    "keeps crashing",
]
SHAPES = [
    "{subject} {judgement}.",
    "Honestly, {subject} {judgement}.",
    "I have to say {subject} {judgement}.",
    "{Subject} {judgement}, {coda}",
    "After a week of use: {subject} {judgement}.",
    "Review: {subject} {judgement}!",
]
CODA = {
    "positive": ["I would buy it again.", "highly recommended.", "five stars.", "I am very happy."],
    "negative": ["never again.", "I want a refund.", "one star.", "avoid it."],
}
HELD_OUT = 5  # the last judgements of each list appear only in validation


def sentence(rng: random.Random, label: str, judgements: list[str]) -> dict[str, str]:
    subject = rng.choice(SUBJECTS)
    text = rng.choice(SHAPES).format(
        subject=subject,
        Subject=subject[0].upper() + subject[1:],
        judgement=rng.choice(judgements),
        coda=rng.choice(CODA[label]),
    )
    return {"text": text[0].upper() + text[1:], "label": label}


def build(rng: random.Random, n: int, split: slice) -> list[dict[str, str]]:
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        pool = (POSITIVE if label == "positive" else NEGATIVE)[split]
        rows.append(sentence(rng, label, pool))
    rng.shuffle(rows)
    return rows


def main() -> None:
    rng = random.Random(7)
    sets = {
        "train": build(rng, 240, slice(0, -HELD_OUT)),
        "validation": build(rng, 60, slice(-HELD_OUT, None)),
    }
    for name, rows in sets.items():
        with (HERE / f"{name}.jsonl").open("w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
