"""Cleaning: empty rows and exact duplicates are dropped, counted, and nothing else."""

from __future__ import annotations

import random

import pytest

from finetune_trainer.data.cleaning import Cleaner, clean, content_key, is_empty
from finetune_trainer.data.formats import Example


def chat(*turns: str) -> Example:
    roles = ["user", "assistant"] * len(turns)
    return Example(
        messages=tuple({"role": r, "content": c} for r, c in zip(roles, turns, strict=False))
    )


@pytest.mark.parametrize(
    ("example", "empty"),
    [
        (chat("q", "a"), False),
        (chat("q", " \n\t"), True),
        (chat("q", "", "q2", "a2"), False),  # one non-blank answer is something to learn
        (chat("", "a"), False),  # a blank question still teaches the answer
        (Example(text="  "), True),
        (Example(text="x"), False),
        (Example(text="x", label="pos"), False),
        (Example(text="\n", label="pos"), True),
        (Example(text="x", text_pair=" ", label=1), True),
    ],
)
def test_what_counts_as_empty(example: Example, empty: bool) -> None:
    assert is_empty(example) is empty


def test_duplicates_match_after_light_normalisation_only() -> None:
    base = chat("What is colour 0?", "red")
    # CRLF, surrounding whitespace and composed/decomposed accents are the same content.
    assert content_key(chat("What is colour 0?\r\n", "  red ")) == content_key(base)
    assert content_key(chat("caf\u00e9", "x")) == content_key(chat("cafe\u0301", "x"))
    # Case, inner whitespace, roles and labels are content.
    assert content_key(chat("what is colour 0?", "red")) != content_key(base)
    assert content_key(chat("What is  colour 0?", "red")) != content_key(base)
    assert content_key(Example(text="x", label="a")) != content_key(Example(text="x", label="b"))
    assert content_key(Example(text="x")) != content_key(Example(text="x", label="x"))
    assert content_key(Example(text="a", text_pair="b", label=1)) != content_key(
        Example(text="a", text_pair="c", label=1)
    )


def test_clean_keeps_first_occurrences_in_order_and_counts_the_rest() -> None:
    examples = [
        chat("q1", "a"),
        chat("q2", ""),
        chat("q1", "a "),
        chat("q3", "a"),
        chat("q1", "a"),
        chat("q4", "  "),
    ]

    kept, counts = clean(examples, deduplicate=True)

    assert kept == [0, 3]
    assert (counts.empty, counts.duplicates) == (2, 2)


def test_deduplicate_off_keeps_repeats_but_still_drops_empty_rows() -> None:
    examples = [chat("q", "a"), chat("q", "a"), chat("q", "")]

    kept, counts = clean(examples, deduplicate=False)

    assert kept == [0, 1]
    assert (counts.empty, counts.duplicates) == (1, 0)


@pytest.mark.parametrize("seed", range(4))
def test_a_file_cleaned_in_chunks_keeps_what_cleaning_it_whole_keeps(seed: int) -> None:
    """Duplicates many chunks apart, inside one chunk, and empty rows: the chunked
    cleaner (what prepare_data runs) keeps exactly the rows whole-file cleaning keeps."""
    rng = random.Random(seed)
    texts = [f"row {rng.randrange(300)}" if rng.random() > 0.05 else "  " for _ in range(2000)]
    examples = [Example(text=t) for t in texts]
    whole, counts = clean(examples, deduplicate=True)
    seen: set[bytes] = set()
    first = []
    for i, e in enumerate(examples):
        if not is_empty(e) and content_key(e) not in seen:
            seen.add(content_key(e))
            first.append(i)
    assert whole == first

    cleaner, kept, start = Cleaner(deduplicate=True), [], 0
    while start < len(examples):
        size = rng.randint(1, 97)
        chunk = examples[start : start + size]
        kept += [start + i for i in cleaner.keep(chunk)]
        start += size

    assert kept == whole
    assert cleaner.counts == counts
    assert counts.duplicates > 1000 and counts.empty > 0
