"""Task sentence-embedding's own pieces: the contrastive losses on hand-computed
similarities, retrieval scores on a hand-made similarity matrix, pooling, the pairs
format, its tokenization, collation and cache entry, and the sentence-transformers
layout of a published set."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from finetune_api.config import ColumnMapping
from finetune_api.config.embedding import ContrastiveSpec
from finetune_trainer.data import cache
from finetune_trainer.data.batching import collate
from finetune_trainer.data.cleaning import clean
from finetune_trainer.data.formats import to_examples
from finetune_trainer.data.loading import SourceRow
from finetune_trainer.data.tokenize import IGNORE_INDEX, PairExample, tokenize_example
from finetune_trainer.embedding.layout import Layout, read_layout, write_layout
from finetune_trainer.embedding.loss import (
    PairVectors,
    multiple_negatives_losses,
    pair_losses,
    triplet_losses,
)
from finetune_trainer.embedding.pooling import model_pooling, pool, resolve_pooling
from finetune_trainer.embedding.retrieval import positive_ranks, retrieval_scores
from finetune_trainer.errors import ConfigError, DataError

# --------------------------------------------------------------------------- losses


def unit(degrees: float) -> list[float]:
    """A unit vector in the plane at ``degrees``: cosines are then known by hand."""
    return [math.cos(math.radians(degrees)), math.sin(math.radians(degrees))]


def test_multiple_negatives_is_cross_entropy_over_scaled_cosines() -> None:
    # Anchor 0 at 0 degrees, anchor 1 at 90; positive 0 at 0, positive 1 at 150 degrees.
    anchors = torch.tensor([unit(0), unit(90)])
    positives = torch.tensor([unit(0), unit(150)]) * 3  # lengths do not matter: cosines
    losses = multiple_negatives_losses(anchors, positives, scale=2.0)
    # row 0: logits 2 x [cos 0, cos 150], class 0; row 1: 2 x [cos 90, cos 60], class 1
    c150 = math.cos(math.radians(150))
    expected_0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(2 * c150)))
    expected_1 = -math.log(math.exp(1) / (math.exp(0) + math.exp(1)))
    assert losses.tolist() == pytest.approx([expected_0, expected_1], rel=1e-5)


def test_negatives_join_every_anchors_candidates() -> None:
    anchors = torch.tensor([unit(0)])
    positives = torch.tensor([unit(0)])
    negative = torch.tensor([unit(60)])  # cos 0.5
    vectors = PairVectors(anchors, positives, negative, torch.tensor([True]))
    loss = pair_losses(vectors, ContrastiveSpec(scale=1.0))
    assert loss.item() == pytest.approx(-math.log(math.e / (math.e + math.e**0.5)), rel=1e-5)


def test_triplet_is_a_hinge_on_cosine_distances() -> None:
    anchors = torch.tensor([unit(0), unit(0)])
    positives = torch.tensor([unit(60), unit(0)])  # distance 0.5, then 0
    negatives = torch.tensor([unit(90), unit(180)])  # distance 1, then 2
    losses = triplet_losses(anchors, positives, negatives, margin=0.75)
    assert losses.tolist() == pytest.approx([0.5 - 1 + 0.75, 0.0], abs=1e-6)


@pytest.mark.parametrize("loss", ["multipleNegatives", "triplet"])
def test_the_gradient_pulls_the_anchor_towards_its_positive(loss: str) -> None:
    anchors = torch.tensor([unit(40), unit(130)], requires_grad=True)
    positives = torch.tensor([unit(0), unit(90)])
    negatives = torch.tensor([unit(60), unit(200)])  # within the triplet margin of both
    spec = ContrastiveSpec.model_validate({"loss": loss, "scale": 5.0})
    vectors = PairVectors(anchors, positives, negatives, torch.tensor([True, True]))
    pair_losses(vectors, spec).sum().backward()
    assert anchors.grad is not None
    with torch.no_grad():
        moved = anchors - 0.01 * anchors.grad  # a small gradient step
    before = torch.nn.functional.cosine_similarity(anchors.detach(), positives)
    after = torch.nn.functional.cosine_similarity(moved, positives)
    assert bool((after > before).all()), (before, after)


def test_triplet_without_a_negative_says_which_column() -> None:
    vectors = PairVectors(torch.ones(1, 2), torch.ones(1, 2), None, torch.tensor([False]))
    with pytest.raises(DataError, match=r"dataset\.columns\.negative"):
        pair_losses(vectors, ContrastiveSpec(loss="triplet"))


def test_margin_belongs_to_the_triplet_loss() -> None:
    with pytest.raises(ValueError, match=r"contrastive\.margin is the triplet loss's"):
        ContrastiveSpec(margin=0.2)
    assert ContrastiveSpec(loss="triplet", margin=0.2).margin == 0.2


# --------------------------------------------------------------------------- retrieval


def test_retrieval_scores_of_a_hand_made_matrix() -> None:
    # Rows: anchors; columns 0-3 their positives, column 4 a negative.
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2, 0.3, 0.0],  # own positive first: rank 1
            [0.8, 0.7, 0.1, 0.0, 0.9],  # behind column 0 and the negative: rank 3
            [0.1, 0.2, 0.3, 0.4, 0.5],  # behind columns 3 and 4: rank 3
            [0.6, 0.6, 0.6, 0.6, 0.6],  # a tie with everything counts against it: rank 5
        ]
    )
    assert positive_ranks(similarity).tolist() == [1, 3, 3, 5]
    scores = retrieval_scores(similarity, loss=1.5)
    assert scores.recall == {1: 0.25, 5: 1.0}
    assert scores.mrr == pytest.approx((1 + 1 / 3 + 1 / 3 + 1 / 5) / 4)
    assert scores.as_metrics() == {
        "evalLoss": 1.5,
        "recallAt1": 0.25,
        "recallAt5": 1.0,
        "mrr": pytest.approx(scores.mrr),
    }


def test_retrieval_metric_names_are_the_contracts() -> None:
    from finetune_api.tasks import TASKS

    scores = retrieval_scores(torch.eye(3), loss=0.0)
    assert set(scores.as_metrics()) == set(TASKS["sentence-embedding"].metrics)


# --------------------------------------------------------------------------- pooling


def test_mean_pooling_ignores_padding_and_cls_takes_the_first_token() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert pool(hidden, mask, "mean").tolist() == [[2.0, 3.0]]
    assert pool(hidden, mask, "cls").tolist() == [[1.0, 2.0]]


def test_pooling_comes_from_the_setting_then_the_model_then_mean(tmp_path: Path) -> None:
    assert resolve_pooling(None, tmp_path) == "mean"
    write_layout(tmp_path, Layout("cls", normalize=True), dimension=8, max_seq_length=64)
    assert model_pooling(tmp_path) == "cls"
    assert resolve_pooling(None, tmp_path) == "cls"
    assert resolve_pooling("mean", tmp_path) == "mean"


def test_a_pooling_this_trainer_cannot_reproduce_is_refused(tmp_path: Path) -> None:
    write_layout(tmp_path, Layout("mean", normalize=False), dimension=8, max_seq_length=64)
    (tmp_path / "1_Pooling" / "config.json").write_text('{"pooling_mode_max_tokens": true}')
    with pytest.raises(ConfigError, match=r"contrastive\.pooling"):
        resolve_pooling(None, tmp_path)


def test_layout_reads_back_as_written(tmp_path: Path) -> None:
    write_layout(tmp_path, Layout("mean", normalize=False), dimension=8, max_seq_length=64)
    assert read_layout(tmp_path) == Layout("mean", normalize=False)
    other = tmp_path / "other"
    write_layout(other, Layout("cls", normalize=True), dimension=8, max_seq_length=64)
    assert read_layout(other) == Layout("cls", normalize=True)
    assert read_layout(tmp_path / "nothing") is None


# --------------------------------------------------------------------------- data


def rows(*items: dict[str, Any]) -> list[SourceRow]:
    return [SourceRow(row, f"line {i + 1}") for i, row in enumerate(items)]


def test_pairs_rows_become_anchor_positive_and_optional_negative() -> None:
    examples = to_examples(
        rows(
            {"anchor": "q1", "positive": "a1", "negative": "n1"},
            {"anchor": "q2", "positive": "a2"},
            {"anchor": "q3", "positive": "a3", "negative": "  "},
        ),
        "pairs",
        ColumnMapping(),
        "dataset.train",
    )
    assert [(e.text, e.text_pair, e.negative) for e in examples] == [
        ("q1", "a1", "n1"),
        ("q2", "a2", None),
        ("q3", "a3", None),
    ]
    assert all(e.pairs for e in examples)


def test_renamed_pair_columns() -> None:
    cols = ColumnMapping(anchor="query", positive="passage", negative="hard")
    [example] = to_examples(
        rows({"query": "q", "passage": "p", "hard": "h"}), "pairs", cols, "dataset.train"
    )
    assert (example.text, example.text_pair, example.negative) == ("q", "p", "h")


@pytest.mark.parametrize(
    ("row", "said"),
    [
        (
            {"positive": "a"},
            "column 'anchor' is missing (columns: positive); set dataset.columns.anchor",
        ),
        ({"anchor": "q"}, "set dataset.columns.positive"),
        ({"anchor": "q", "positive": 3}, "column 'positive' must be a string, got int"),
        ({"anchor": "q", "positive": "a", "negative": ["x"]}, "column 'negative' must be a string"),
    ],
)
def test_a_bad_pairs_row_is_reported_with_its_line_and_fix(row: dict[str, Any], said: str) -> None:
    with pytest.raises(DataError) as caught:
        to_examples(rows(row), "pairs", ColumnMapping(), "dataset.train (t.jsonl)")
    assert "dataset.train (t.jsonl): line 1 (format pairs)" in str(caught.value)
    assert said in str(caught.value)


def test_duplicates_are_the_same_anchor_positive_and_negative() -> None:
    examples = to_examples(
        rows(
            {"anchor": "q", "positive": "a", "negative": "n"},
            {"anchor": "q ", "positive": "a", "negative": "n"},  # trimmed: the same
            {"anchor": "q", "positive": "a", "negative": "other"},  # another triplet
            {"anchor": "q", "positive": " "},  # a blank positive: nothing to pull towards
        ),
        "pairs",
        ColumnMapping(),
        "dataset.train",
    )
    kept, counts = clean(examples, deduplicate=True)
    assert kept == [0, 2]
    assert (counts.duplicates, counts.empty) == (1, 1)


@pytest.fixture(scope="module")
def bert_tokenizer() -> Any:
    from tiny_bert import build_bert_tokenizer

    return build_bert_tokenizer(["the red car is near the river", "a blue boat", "green"])


def test_each_text_is_encoded_alone_with_special_tokens(bert_tokenizer: Any) -> None:
    [example] = to_examples(
        rows({"anchor": "red car", "positive": "the river", "negative": "blue boat"}),
        "pairs",
        ColumnMapping(),
        "dataset.train",
    )
    tokens = tokenize_example(bert_tokenizer, example, max_length=16)
    assert isinstance(tokens, PairExample)
    assert tokens.input_ids == bert_tokenizer("red car")["input_ids"]
    assert tokens.positive_ids == bert_tokenizer("the river")["input_ids"]
    assert tokens.negative_ids == bert_tokenizer("blue boat")["input_ids"]
    assert tokens.labels == [IGNORE_INDEX] * len(tokens.input_ids)
    assert tokens.has_target and not tokens.truncated
    # what tokens/s and the data report count: every text the encoder reads
    assert tokens.input_tokens == sum(
        len(bert_tokenizer(t)["input_ids"]) for t in ("red car", "the river", "blue boat")
    )


def test_a_long_text_keeps_its_start_and_is_flagged(bert_tokenizer: Any) -> None:
    [example] = to_examples(
        rows({"anchor": "red " * 20, "positive": "car"}), "pairs", ColumnMapping(), "t"
    )
    tokens = tokenize_example(bert_tokenizer, example, max_length=5)
    assert isinstance(tokens, PairExample)
    assert tokens.truncated and len(tokens.input_ids) == 5
    assert tokens.input_ids[-1] == bert_tokenizer.sep_token_id  # still a whole sentence
    assert tokens.negative_ids is None


def test_collate_pads_anchors_positives_and_the_negatives_there_are() -> None:
    batch = collate(
        [
            PairExample([1, 2, 3], [IGNORE_INDEX] * 3, positive_ids=[4], negative_ids=[5, 6]),
            PairExample([7], [IGNORE_INDEX], positive_ids=[8, 9], negative_ids=None),
        ],
        pad_id=0,
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [7, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["positive_ids"].tolist() == [[4, 0], [8, 9]]
    assert batch["positive_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["negative_ids"].tolist() == [[5, 6]]
    assert batch["has_negative"].tolist() == [True, False]


def test_the_cache_gives_back_the_same_pairs(tmp_path: Path) -> None:
    examples = [
        PairExample([1, 2], [IGNORE_INDEX] * 2, positive_ids=[3], negative_ids=[4, 5, 6]),
        PairExample([7], [IGNORE_INDEX], truncated=True, positive_ids=[8, 9], negative_ids=None),
        PairExample([10], [IGNORE_INDEX], positive_ids=[11], negative_ids=[]),
    ]
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    assert cache.store(data, "k" * 64, examples) is not None
    assert cache.load(data, "k" * 64, expected=3) == examples


# --------------------------------------------------------------------------- planner

TINY_BERT: dict[str, Any] = {
    "model_type": "bert",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "vocab_size": 400,
    "max_position_embeddings": 128,
}


def embedding_job(**sections: Any) -> Any:
    from finetune_api.config.job import JobSections

    return JobSections.model_validate(
        {
            "task": "sentence-embedding",
            "model": {"uri": "file:///m"},
            "dataset": {"train": "file:///d.jsonl", "format": "pairs"},
            **sections,
        }
    )


def test_freeze_on_an_encoder_trains_the_top_blocks_and_no_head() -> None:
    from finetune_api.plan import ModelShape
    from finetune_api.plan.trainable import trainable_for

    shape = ModelShape.from_config(TINY_BERT)
    freeze = embedding_job(method={"type": "freeze", "freeze": {"trainableLayers": 1}})
    trainable = trainable_for(shape, freeze)
    # One BertLayer by hand: q, k, v and the attention output (32x32 + 32 bias each), the
    # intermediate (32x64 + 64) and output (64x32 + 32) dense layers, two LayerNorms (2x32
    # each); no vocabulary head, no pooler.
    assert trainable.params == 4 * (32 * 32 + 32) + (32 * 64 + 64) + (64 * 32 + 32) + 2 * 64
    assert trainable.lowest_trained_block == 1  # backward stops at the top block


def test_an_encoder_plan_has_no_logits_and_a_row_per_text() -> None:
    from finetune_api.plan import ModelShape, Target, plan_job

    shape = ModelShape.from_config(TINY_BERT)
    small = {"training": {"batchSize": 4, "maxSeqLength": 32}, "evaluation": {"batchSize": 4}}
    pairs = plan_job(embedding_job(**small), shape, Target())
    triplets = plan_job(embedding_job(contrastive={"loss": "triplet"}, **small), shape, Target())
    terms = {t.name: t.bytes for t in pairs.memory.terms}
    assert terms.get("logits", 0) == 0
    activations = {
        name: next(t.bytes for t in plan.memory.terms if t.name == "activations")
        for name, plan in (("pairs", pairs), ("triplets", triplets))
    }
    assert activations["triplets"] == pytest.approx(1.5 * activations["pairs"], rel=0.01)
