"""The label vocabulary: ids from the training labels, sorted, the same on every run."""

from __future__ import annotations

import random

import pytest

from finetune_trainer.data.labels import LabelVocabulary
from finetune_trainer.errors import DataError


def test_string_labels_are_sorted_whatever_order_they_come_in() -> None:
    labels = ["positive", "negative", "neutral", "negative", "positive"]
    shuffled = labels[:]
    random.Random(0).shuffle(shuffled)

    vocabulary = LabelVocabulary.from_labels(labels)

    assert vocabulary.names == ("negative", "neutral", "positive")
    assert LabelVocabulary.from_labels(shuffled) == vocabulary
    assert vocabulary.label2id == {"negative": 0, "neutral": 1, "positive": 2}
    assert vocabulary.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert len(vocabulary) == 3


def test_integer_labels_sort_numerically_and_match_their_text() -> None:
    vocabulary = LabelVocabulary.from_labels([10, 2, 1, 2, -1])

    assert vocabulary.names == ("-1", "1", "2", "10")  # not "-1", "1", "10", "2"
    # The CSV spelling of a class is the same class as the JSON integer.
    assert vocabulary.id_of("10", "dataset.validation row 0") == vocabulary.id_of(10, "x") == 3


def test_mixed_labels_sort_as_text() -> None:
    assert LabelVocabulary.from_labels([1, "b", "a"]).names == ("1", "a", "b")


def test_a_label_unknown_to_training_is_reported_with_the_classes() -> None:
    vocabulary = LabelVocabulary.from_labels(["neg", "pos"])

    with pytest.raises(DataError) as info:
        vocabulary.id_of("neutral", "dataset.validation row 4")
    message = str(info.value)
    assert message.startswith("dataset.validation row 4: label 'neutral' does not occur")
    assert "classes: neg, pos" in message


def test_a_single_class_is_not_a_classifier() -> None:
    with pytest.raises(DataError, match=r"at least 2 classes.*only.*dataset\.columns\.label"):
        LabelVocabulary.from_labels(["only", "only"])
