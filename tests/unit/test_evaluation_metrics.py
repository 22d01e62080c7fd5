"""The evaluation's scores: library values (sacrebleu, torchmetrics), hand-counted
per-class scores, retention changes, and the contract's metrics table and units."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from finetune_api.config import EvaluationSpec
from finetune_api.outcome import HEADLINE_METRICS
from finetune_api.resource import Metrics
from finetune_api.tasks import METRICS, TASKS
from finetune_trainer.evaluation import (
    ClassScores,
    EvalResult,
    OverlapScores,
    Prediction,
    RetentionScores,
    TokenScores,
    bert_score_f1,
    exact_match,
    overlap_scores,
    per_class_scores,
    retention_changes,
)

MINILM = Path(__file__).resolve().parents[2] / "models" / "all-MiniLM-L6-v2"

PREDICTIONS = [
    Prediction("the cat sat on the mat", "the cat sat on the mat"),
    Prediction("there is a dog in the garden", "a dog is in the garden"),
    Prediction("2021-03-05", "2021-03-06"),
    Prediction("blue", "red"),
]


# --------------------------------------------------------------------------- BLEU, chrF


def test_bleu_and_chrf_are_sacrebleus_corpus_scores_as_fractions() -> None:
    import sacrebleu

    hypotheses = [p.generated for p in PREDICTIONS]
    references = [[p.answer for p in PREDICTIONS]]
    scores = overlap_scores(PREDICTIONS)
    assert scores is not None
    assert scores.bleu == pytest.approx(sacrebleu.corpus_bleu(hypotheses, references).score / 100)
    assert scores.chrf == pytest.approx(sacrebleu.corpus_chrf(hypotheses, references).score / 100)
    assert 0.0 < scores.bleu < 1.0 and 0.0 < scores.chrf < 1.0


def test_bleu_and_chrf_bounds() -> None:
    same = overlap_scores([Prediction("a b c d e", "a b c d e")])
    assert same == OverlapScores(pytest.approx(1.0), pytest.approx(1.0))
    disjoint = overlap_scores([Prediction("red green blue", "xyz")])
    assert disjoint is not None and disjoint.bleu == 0.0 and disjoint.chrf == 0.0
    assert overlap_scores([]) is None


def test_exact_match_is_a_fraction() -> None:
    assert exact_match(PREDICTIONS) == pytest.approx(0.25)
    assert exact_match([Prediction(" red ", "red\n")]) == 1.0
    assert exact_match([]) is None


# --------------------------------------------------------------------------- classes


def test_per_class_precision_recall_f1_match_hand_counts() -> None:
    names = ["bad", "good", "meh"]
    target = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])
    predicted = torch.tensor([0, 0, 1, 1, 1, 1, 0, 1])
    scores = per_class_scores(predicted, target, names)
    # bad: tp 2, fp 1 (a good row), fn 1 -> P 2/3, R 2/3
    # good: tp 3, fp 2 (a bad row, the meh row), fn 1 -> P 3/5, R 3/4
    # meh: never predicted -> P 0 (torchmetrics' convention), R 0, F1 0
    expected = {
        "bad": (2 / 3, 2 / 3, 3),
        "good": (3 / 5, 3 / 4, 4),
        "meh": (0.0, 0.0, 1),
    }
    for name, (p, r, support) in expected.items():
        score = scores.per_class[name]
        f1 = 0.0 if p + r == 0 else 2 * p * r / (p + r)
        assert score.precision == pytest.approx(p), name
        assert score.recall == pytest.approx(r), name
        assert score.f1 == pytest.approx(f1), name
        assert score.support == support, name
    assert scores.accuracy == pytest.approx(5 / 8)
    assert scores.macro_precision == pytest.approx((2 / 3 + 3 / 5 + 0) / 3)
    assert scores.macro_recall == pytest.approx((2 / 3 + 3 / 4 + 0) / 3)
    f1s = [2 * 4 / 9 / (4 / 3), 2 * 0.45 / 1.35, 0.0]
    assert scores.macro_f1 == pytest.approx(sum(f1s) / 3)
    assert scores.per_class_metrics()["good"] == {
        "precision": pytest.approx(0.6),
        "recall": pytest.approx(0.75),
        "f1": pytest.approx(2 * 0.45 / 1.35),
        "support": 4,
    }


def test_classifier_metrics_and_per_class_details() -> None:
    scores = per_class_scores(torch.tensor([0, 1]), torch.tensor([0, 1]), ["no", "yes"])
    result = EvalResult(scores)
    metrics = result.as_metrics()
    assert set(metrics) == {"evalLoss", "accuracy", "macroPrecision", "macroRecall", "macroF1"}
    assert result.details()["perClass"] == {
        "no": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
        "yes": {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1},
    }


# --------------------------------------------------------------------------- retention


def test_retention_changes_compare_after_with_before() -> None:
    before = {"retentionLossBefore": 2.0, "retentionExactMatchBefore": 0.5}
    after = {"retentionLoss": 2.5, "retentionExactMatch": 0.25}
    assert retention_changes(before, after) == {
        "retentionLossIncrease": pytest.approx(0.5),
        "retentionExactMatchDrop": pytest.approx(0.25),
    }
    # Only what was measured on both sides: no exact match without answers.
    assert retention_changes({"retentionLossBefore": 2.0}, {"retentionLoss": 1.5}) == {
        "retentionLossIncrease": pytest.approx(-0.5)
    }
    assert retention_changes({}, after) == {}


def test_language_model_result_names_every_score_in_the_contract_table() -> None:
    result = EvalResult(
        TokenScores(1.5, 0.4, 10),
        exact_match=0.5,
        rouge_l=0.6,
        overlap=OverlapScores(0.3, 0.4),
        bert_score_f1=0.8,
        retention=RetentionScores(2.0, 0.25, 12),
    )
    metrics = result.as_metrics()
    assert set(metrics) <= set(METRICS)
    assert set(TASKS["causal-lm"].metrics) <= set(metrics)
    assert metrics["retentionLoss"] == 2.0 and metrics["retentionExactMatch"] == 0.25
    assert result.details() == {"retentionRows": 12}
    assert set(result.as_metrics("Before")) == {f"{name}Before" for name in metrics}
    assert set(EvalResult(ClassScores(0.1, 0.9, 0.8)).as_metrics()) <= set(METRICS)


# --------------------------------------------------------------------------- the table


def test_every_headline_score_is_in_the_table_and_status() -> None:
    """The termination message's scores (and their Before twins) are described once, in
    finetune_api.tasks.METRICS, and each is a status.metrics field."""
    status_fields = {f.alias for f in Metrics.model_fields.values()}
    not_scores = {"trainLoss", "tokensPerSecond", "steps", "trainSeconds"}
    for name in set(HEADLINE_METRICS) - not_scores:
        base = name.removesuffix("Before")
        assert base in METRICS, name
        assert name == base or METRICS[base].before, name
    assert set(HEADLINE_METRICS) - {"steps", "trainSeconds"} <= status_fields


def test_the_table_gives_units_and_directions() -> None:
    for name, info in METRICS.items():
        assert info.name == name
        assert info.better in ("higher", "lower")
        assert set(info.tasks) <= set(TASKS), name
        low, high = info.bounds
        if info.unit == "fraction":
            assert (low, high) == (0.0, 1.0), name
            assert info.better == "higher", name
    assert METRICS["exactMatch"].unit == "fraction"
    assert METRICS["retentionLoss"].better == "lower"
    for task in TASKS.values():
        assert all(task.name in METRICS[m].tasks for m in task.metrics)


def test_status_describes_shares_as_fractions_never_percents() -> None:
    for field_name, field in Metrics.model_fields.items():
        alias = field.alias or field_name
        if alias.removesuffix("Before") in METRICS:
            assert "percent" not in (field.description or "").lower(), alias


# --------------------------------------------------------------------------- the spec


def test_retention_and_bert_score_fields() -> None:
    spec = EvaluationSpec.model_validate(
        {
            "retention": {"dataset": "s3://bucket/general.jsonl", "maxRows": 32},
            "bertScore": {"model": "hf://sentence-transformers/all-MiniLM-L6-v2"},
        }
    )
    assert spec.retention is not None and spec.retention.max_rows == 32
    assert spec.retention.format is None  # dataset.format
    assert spec.bert_score is not None
    assert EvaluationSpec().retention is None and EvaluationSpec().bert_score is None


@pytest.mark.parametrize(
    ("retention", "field"),
    [
        ({"dataset": "file:///d/general.jsonl", "format": "classification"}, "format"),
        ({"dataset": "file:///d/general.jsonl", "maxRows": 0}, "maxRows"),
        ({"dataset": "ftp://host/general.jsonl"}, "dataset"),
        ({}, "dataset"),
    ],
)
def test_a_bad_retention_setting_names_its_field(retention: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        EvaluationSpec.model_validate({"retention": retention})
    assert field in {str(part) for e in caught.value.errors() for part in e["loc"]}


# --------------------------------------------------------------------------- BERTScore


@pytest.mark.skipif(not (MINILM / "config.json").is_file(), reason="no local MiniLM")
def test_bert_score_with_a_local_encoder_matches_torchmetrics() -> None:
    from torchmetrics.functional.text.bert import bert_score

    score = bert_score_f1(PREDICTIONS, MINILM)
    assert score is not None and 0.0 < score < 1.0
    reference = bert_score(
        [p.generated for p in PREDICTIONS],
        [p.answer for p in PREDICTIONS],
        model_name_or_path=str(MINILM),
        num_layers=6,
    )
    assert score == pytest.approx(float(torch.as_tensor(reference["f1"]).mean()), abs=1e-4)
    same = bert_score_f1([Prediction("a red car", "a red car")], MINILM)
    assert same == pytest.approx(1.0, abs=1e-4)
    assert bert_score_f1([], MINILM) is None
