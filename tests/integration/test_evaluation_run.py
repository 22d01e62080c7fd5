"""The evaluation's scores in a tiny run's metrics.json and status: BLEU, chrF and
BERTScore of the generations, the retention set before and after, fractions in 0-1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import write_jsonl
from finetune_api.outcome import headline_metrics
from finetune_api.resource import Metrics
from finetune_api.tasks import METRICS
from finetune_cli.app import app

MINILM = Path(__file__).resolve().parents[2] / "models" / "all-MiniLM-L6-v2"


def general_rows(n: int) -> list[dict[str, Any]]:
    """General knowledge the colour task never trains on."""
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": str(2 * i)},
            ]
        }
        for i in range(n)
    ]


def run(job: Path) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # Stored as a fraction, printed as a percentage.
    assert "held-out exact match: base model" in result.output and "%" in result.output
    metrics: dict[str, Any] = json.loads((job.parent / "out" / "metrics.json").read_text())
    return metrics


def fractions_in_range(metrics: dict[str, Any]) -> None:
    for name, value in metrics.items():
        info = METRICS.get(name.removesuffix("Before"))
        if info is not None and isinstance(value, float):
            low, high = info.bounds
            assert low <= value and (high is None or value <= high), (name, value)


@pytest.mark.skipif(not (MINILM / "config.json").is_file(), reason="no local MiniLM")
def test_run_reports_overlap_bert_score_and_retention(
    make_job: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer.data.prepare import prepare_general
    from finetune_trainer.evaluation import retention_scores

    general = write_jsonl(tmp_path / "general.jsonl", general_rows(10))
    job = make_job(
        evaluation={
            "retention": {"dataset": f"file://{general}", "maxRows": 6},
            "bertScore": {"model": f"file://{MINILM}"},
        }
    )
    metrics = run(job)

    for name in ("bleu", "chrF", "bertScoreF1", "rougeL", "exactMatch"):
        assert metrics[name] is not None and metrics[f"{name}Before"] is not None, name
    assert metrics["exactMatch"] >= 0.5 > metrics["exactMatchBefore"]
    assert metrics["chrF"] > metrics["chrFBefore"]
    assert metrics["retentionRows"] == 6
    assert metrics["retentionLossIncrease"] == pytest.approx(
        metrics["retentionLoss"] - metrics["retentionLossBefore"]
    )
    assert metrics["retentionExactMatchDrop"] == pytest.approx(
        metrics["retentionExactMatchBefore"] - metrics["retentionExactMatch"]
    )
    fractions_in_range(metrics)

    # The before value is the untouched base model's, scored on its own (with the
    # tokenizer the run used, as published: its pad token set).
    tokenizer = AutoTokenizer.from_pretrained(job.parent / "out")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    data = prepare_general(
        tokenizer,
        f"file://{general}",
        "messages",
        _columns(),
        max_rows=6,
        max_length=64,
        eval_samples=8,
    )
    alone = retention_scores(base, tokenizer, data, batch_size=16, max_new_tokens=4)
    assert alone is not None
    assert metrics["retentionLossBefore"] == pytest.approx(alone.loss, rel=1e-4)
    assert metrics["retentionExactMatchBefore"] == pytest.approx(alone.exact_match)
    assert metrics["retentionLoss"] != pytest.approx(alone.loss, rel=1e-4)

    # What the operator's status gets: the same numbers, every share within 0-1.
    fields = {f.alias for f in Metrics.model_fields.values()}
    headline = headline_metrics(metrics)
    status = Metrics.model_validate({k: v for k, v in headline.items() if k in fields})
    assert status.retention_loss == metrics["retentionLoss"]
    assert status.bleu == metrics["bleu"] and status.chr_f == metrics["chrF"]
    assert status.exact_match is not None and 0.0 <= status.exact_match <= 1.0
    fractions_in_range(status.model_dump(by_alias=True, exclude_none=True))


def _columns() -> Any:
    from finetune_api.config import ColumnMapping

    return ColumnMapping()


def test_a_retention_file_without_rows_to_score_fails_before_training(
    make_job: Any, tmp_path: Path
) -> None:
    general = tmp_path / "general.jsonl"
    general.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    job = make_job(evaluation={"retention": {"dataset": f"file://{general}"}})
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    assert "evaluation.retention.dataset" in result.output
    assert not (job.parent / "out" / "metrics.json").exists()
