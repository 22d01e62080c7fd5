"""Generate the quickstart dataset: dates written the way people write them, to be
answered in ISO 8601 form (YYYY-MM-DD) and nothing else.

SmolLM2-135M-Instruct gets this wrong out of the box: it answers in prose, or
garbles the month number. A few hundred examples of LoRA teach it both the
format and the mapping, which makes a clear before/after for the demo.

Deterministic (seeded): `python make_data.py` rewrites train.jsonl and
validation.jsonl byte for byte. Validation dates never appear in train.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

HERE = Path(__file__).parent
TRAIN, VALIDATION = 320, 64

PROMPTS = [
    "Convert this date to ISO 8601 (YYYY-MM-DD): {date}",
    "Write {date} in ISO 8601 format.",
    "What is {date} as an ISO date?",
    "ISO 8601 form of: {date}",
]


def ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def spellings(d: dt.date) -> list[str]:
    month, short, day, year = d.strftime("%B"), d.strftime("%b"), d.day, d.year
    return [
        f"{month} {day}, {year}",
        f"{day} {month} {year}",
        f"the {ordinal(day)} of {month}, {year}",
        f"{short} {day}, {year}",
        f"{ordinal(day)} {month} {year}",
        f"{d.strftime('%A')}, {month} {day}, {year}",
        f"{short}. {ordinal(day)} {year}",
    ]


def example(d: dt.date, rng: random.Random) -> dict[str, object]:
    written = rng.choice(spellings(d))
    prompt = rng.choice(PROMPTS).format(date=written)
    return {
        "messages": [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": d.isoformat()},
        ]
    }


def main() -> None:
    rng = random.Random(20261122)
    start, end = dt.date(1950, 1, 1).toordinal(), dt.date(2035, 12, 31).toordinal()
    days = rng.sample(range(start, end + 1), TRAIN + VALIDATION)
    dates = [dt.date.fromordinal(n) for n in days]
    for name, chunk in (("train", dates[:TRAIN]), ("validation", dates[TRAIN:])):
        with (HERE / f"{name}.jsonl").open("w") as handle:
            for d in chunk:
                handle.write(json.dumps(example(d, rng)) + "\n")


if __name__ == "__main__":
    main()
