"""Generate the second source of the mixture example: 12-hour clock times, written the
way people write them, to be answered in 24-hour form (HH:MM) and nothing else.

It is in ``instruction`` format (instruction / output columns) on purpose: a mixture's
sources may each have their own format and columns. The first source is the
quickstart's dates (``messages`` format).

Deterministic (seeded): `python make_data.py` rewrites times.jsonl byte for byte.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
ROWS = 160

INSTRUCTIONS = [
    "Convert this time to 24-hour form (HH:MM): {time}",
    "Write {time} on a 24-hour clock.",
    "What is {time} in 24-hour time?",
]


def spellings(hour: int, minute: int) -> list[str]:
    twelve = hour % 12 or 12
    half = "AM" if hour < 12 else "PM"
    words = (
        "in the morning" if hour < 12 else ("in the afternoon" if hour < 18 else "in the evening")
    )
    forms = [f"{twelve}:{minute:02d} {half}", f"{twelve}:{minute:02d} {half.lower()}"]
    if minute == 0:
        forms.append(f"{twelve} o'clock {words}")
    if minute == 30:
        forms.append(f"half past {twelve} {words}")
    return forms


def main() -> None:
    rng = random.Random(20261123)
    seen: set[tuple[int, int]] = set()
    rows = []
    while len(rows) < ROWS:
        hour, minute = rng.randrange(24), rng.choice([0, 30, rng.randrange(60)])
        if (hour, minute) in seen:
            continue
        seen.add((hour, minute))
        time = rng.choice(spellings(hour, minute))
        rows.append(
            {
                "instruction": rng.choice(INSTRUCTIONS).format(time=time),
                "output": f"{hour:02d}:{minute:02d}",
            }
        )
    with (HERE / "times.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
