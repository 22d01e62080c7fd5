"""Generate the alignment examples' data: preference pairs and prompts with answers.

The preference is a style rule a 135M model can learn in minutes on a CPU and that code
can check: the chosen answer is ``ANSWER: <x>`` and nothing else, the rejected one gives
the same (correct) answer without the prefix, often wrapped in chatter ("Great
question! ... So the answer is 7. I hope this helps!"). Correctness is the same on both
sides, so a model (or a reward model) has to learn the style, not arithmetic.
SmolLM2-135M-Instruct prefers the chatty form out of the box, which makes the before and
after of reward-model, dpo and simpo visible.

The prompts (task reinforcement) are small sums (1..19 + 1..9) after one worked exchange
in the form ``ANSWER: <n>``; the reference answer is ``ANSWER: <sum>``. The rewards check
the exact answer (exactMatch), the form (regex ``^ANSWER: \\d+$``) and the length. With the
worked exchange the base model keeps the form but often gets the sum wrong (it copies
the shown answer), so sampled groups differ in reward and GRPO has something to
reinforce.

Deterministic (seeded): ``python examples/alignment/generate.py`` rewrites data/*.jsonl
byte for byte. Held-out questions never appear in the training files.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).parent
DATA = HERE / "data"
PAIRS_TRAIN, PAIRS_VALIDATION = 384, 96
PROMPTS_TRAIN, PROMPTS_VALIDATION = 128, 40
WORDS = [
    *["apple", "river", "planet", "garden", "window", "silver", "forest", "candle"],
    *["bridge", "rocket", "pencil", "orange", "winter", "castle", "dragon", "jacket"],
    *["kettle", "lemon", "mirror", "needle", "pepper", "rabbit", "saddle", "tunnel"],
    *["violin", "walnut", "yellow", "zebra", "anchor", "button", "copper", "desert"],
]
OPENERS = [
    "Great question! Let me think about this step by step.",
    "Sure, I'd be happy to help with that.",
    "Okay, let's work through it together.",
    "That's an interesting one.",
]
CLOSERS = [
    "I hope this helps!",
    "Let me know if you have any other questions.",
    "Feel free to ask if anything is unclear.",
    "",
]

FORM = "Reply in the form 'ANSWER: <number>'."
Question = tuple[str, str, str]
"""A question, its answer, and one sentence of working that leads to it."""


def addition(rng: random.Random) -> Question:
    a, b = rng.randint(2, 49), rng.randint(2, 49)
    return f"What is {a} + {b}?", str(a + b), f"Adding {a} and {b} gives {a + b}."


def small_sum(rng: random.Random) -> Question:
    """A sum the base model gets right some of the time (171 distinct questions)."""
    a, b = rng.randint(1, 19), rng.randint(1, 9)
    return f"What is {a} + {b}?", str(a + b), ""


def subtraction(rng: random.Random) -> Question:
    a, b = sorted((rng.randint(2, 60), rng.randint(2, 60)), reverse=True)
    return f"What is {a} - {b}?", str(a - b), f"Taking {b} away from {a} leaves {a - b}."


def letters(rng: random.Random) -> Question:
    word = rng.choice(WORDS)
    n = len(word)
    return (
        f"How many letters are in the word '{word}'?",
        str(n),
        f"Spelling it out, {'-'.join(word)} has {n} letters.",
    )


def next_letter(rng: random.Random) -> Question:
    i = rng.randrange(25)
    a, b = string.ascii_lowercase[i], string.ascii_lowercase[i + 1]
    return (
        f"Which letter comes right after '{a}' in the alphabet?",
        b,
        f"In the alphabet, '{a}' is followed by '{b}'.",
    )


def larger(rng: random.Random) -> Question:
    a, b = rng.sample(range(1, 200), 2)
    big = max(a, b)
    return f"Which is larger, {a} or {b}?", str(big), f"Comparing the two, {big} is bigger."


def capitals(rng: random.Random) -> Question:
    word = rng.choice(WORDS)
    return (
        f"Write the word '{word}' in capital letters.",
        word.upper(),
        f"Each letter of '{word}' in upper case gives {word.upper()}.",
    )


def last_word(rng: random.Random) -> Question:
    words = rng.sample(WORDS, rng.randint(3, 5))
    phrase = " ".join(words)
    return (
        f"What is the last word of '{phrase}'?",
        words[-1],
        f"The phrase ends with '{words[-1]}'.",
    )


KINDS: list[Callable[[random.Random], Question]] = [
    addition,
    subtraction,
    letters,
    next_letter,
    larger,
    capitals,
    last_word,
]


def rejected(answer: str, working: str, rng: random.Random) -> str:
    """The same answer, in one of the styles the rule rejects (no ``ANSWER:`` form)."""
    style = rng.randrange(4)
    if style == 0:
        return f"The answer is {answer}."
    if style == 1:
        return f"{working} So the answer is {answer}."
    closer = rng.choice(CLOSERS)
    return " ".join(
        p for p in (rng.choice(OPENERS), working, f"The answer is {answer}.", closer) if p
    )


def turn(role: str, content: str) -> list[dict[str, str]]:
    return [{"role": role, "content": content}]


def unique_questions(
    make: Callable[[random.Random], Question], n: int, rng: random.Random, seen: set[str]
) -> list[Question]:
    """n questions from ``make`` whose text is not in ``seen`` (which they join)."""
    out: list[Question] = []
    while len(out) < n:
        question = make(rng)
        if question[0] not in seen:
            seen.add(question[0])
            out.append(question)
    return out


def pairs(n: int, rng: random.Random, seen: set[str]) -> list[dict[str, object]]:
    """Preference rows: prompt, chosen (``ANSWER: x``), rejected (the same x, chattier)."""
    rows = []
    for question, answer, working in unique_questions(lambda r: r.choice(KINDS)(r), n, rng, seen):
        rows.append(
            {
                "prompt": turn("user", question),
                "chosen": turn("assistant", f"ANSWER: {answer}"),
                "rejected": turn("assistant", rejected(answer, working, rng)),
            }
        )
    return rows


def prompts(n: int, rng: random.Random, seen: set[str]) -> list[dict[str, object]]:
    """Prompt rows for reinforcement: a small sum, its reference answer ``ANSWER: <n>``."""
    rows = []
    for question, answer, _ in unique_questions(small_sum, n, rng, seen):
        shown, shown_answer, _ = small_sum(rng)
        rows.append(
            {
                # One worked exchange first: the base model then often imitates the form,
                # so sampled groups differ in reward and GRPO has a gradient to follow.
                "prompt": [
                    *turn("user", f"{shown} {FORM}"),
                    *turn("assistant", f"ANSWER: {shown_answer}"),
                    *turn("user", f"{question} {FORM}"),
                ],
                "answer": f"ANSWER: {answer}",
            }
        )
    return rows


def write(name: str, rows: list[dict[str, object]]) -> None:
    DATA.mkdir(exist_ok=True)
    (DATA / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    rng = random.Random(20261201)
    seen: set[str] = set()
    validation = pairs(PAIRS_VALIDATION, rng, seen)  # held out first: train avoids them
    write("pairs-validation.jsonl", validation)
    write("pairs-train.jsonl", pairs(PAIRS_TRAIN, rng, seen))
    seen = set()
    held_out = prompts(PROMPTS_VALIDATION, rng, seen)
    write("prompts-validation.jsonl", held_out)
    write("prompts-train.jsonl", prompts(PROMPTS_TRAIN, rng, seen))


if __name__ == "__main__":
    main()
