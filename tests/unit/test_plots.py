"""The published pictures: each figure holds the metrics' own series, the PNGs are valid
and byte-identical for identical metrics, and the staged set lists and embeds them.

Figures are read back through matplotlib's object API (Line2D data, bar heights), so a
wrong series fails here rather than in a reader's eyes. Runs without torch.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from finetune_api.config import TrainerConfig
from finetune_trainer import plots
from finetune_trainer.plots import (
    Curve,
    curve_figures,
    eval_figure,
    figures,
    titles,
    write_plots,
)
from finetune_trainer.publish import stage_artifacts, verify_manifest

CONFIG = TrainerConfig.model_validate(
    {
        "jobName": "plots",
        "model": {"uri": "hf://org/base"},
        "dataset": {"train": "file://./train.jsonl"},
        "method": {"type": "lora", "lora": {"r": 4}},
        "output": {"uri": "file://./out"},
    }
)


class FakeModel:
    """Writes what ``save_pretrained`` would (test_publish.py has the same stand-ins)."""

    def save_pretrained(self, directory: Path) -> None:
        (directory / "adapter_config.json").write_text(json.dumps({"r": 4}))
        (directory / "adapter_model.safetensors").write_bytes(b"\0" * 64)


class FakeTokenizer:
    def save_pretrained(self, directory: Path) -> None:
        (directory / "tokenizer.json").write_text("{}")


HISTORY = [
    {"step": 1, "epoch": 0.1, "loss": 2.5, "learningRate": 1e-4},
    {"step": 2, "epoch": 0.2, "loss": 2.0, "learningRate": 2e-4},
    {"step": 3, "epoch": 0.3, "loss": 1.25, "learningRate": 1.5e-4},
    {"step": 4, "epoch": 0.4, "loss": 1.0, "learningRate": 5e-5},
]
METRICS: dict[str, Any] = {
    "trainLoss": 1.0,
    "evalLossBefore": 2.4,
    "perplexityBefore": 11.0,
    "tokenAccuracyBefore": None,  # not measured before: no bar pair
    "exactMatchBefore": 0.1,
    "evalLoss": 1.1,
    "perplexity": 3.0,
    "tokenAccuracy": 0.8,
    "exactMatch": 0.75,
    "evalHistory": [{"step": 2, "evalLoss": 1.9}, {"step": 4, "evalLoss": 1.2}],
    "steps": 4,
    "history": HISTORY,
}


def lines(figure: Any) -> dict[str, tuple[list[float], list[float]]]:
    """The figure's lines by label: (x, y) as plain lists."""
    return {
        line.get_label(): ([float(x) for x in line.get_xdata()], list(line.get_ydata()))
        for line in figure.axes[0].get_lines()
    }


# --------------------------------------------------------------------------- figures


def test_loss_and_learning_rate_figures_hold_the_history() -> None:
    found = curve_figures(METRICS)

    assert list(found) == ["loss", "learning_rate"]
    loss = lines(found["loss"])
    assert loss["training loss"] == ([1, 2, 3, 4], [2.5, 2.0, 1.25, 1.0])
    assert lines(found["learning_rate"]) == {
        "learning rate": ([1, 2, 3, 4], [1e-4, 2e-4, 1.5e-4, 5e-5])
    }
    axes = found["loss"].axes[0]
    assert (axes.get_title(), axes.get_xlabel(), axes.get_ylabel()) == (
        "Training loss",
        "optimizer step",
        "loss",
    )


def test_periodic_eval_loss_is_drawn_as_points_on_the_loss_figure() -> None:
    loss = curve_figures(METRICS)["loss"]

    assert lines(loss)["validation loss"] == ([2, 4], [1.9, 1.2])
    [eval_line] = [ln for ln in loss.axes[0].get_lines() if ln.get_label() == "validation loss"]
    assert eval_line.get_marker() == "o"
    assert loss.axes[0].get_legend() is not None


def test_without_periodic_evaluation_the_loss_figure_has_one_line_and_no_legend() -> None:
    loss = curve_figures({"history": HISTORY, "evalHistory": []})["loss"]

    assert list(lines(loss)) == ["training loss"]
    assert loss.axes[0].get_legend() is None


def test_before_after_bars_for_every_score_measured_both_times() -> None:
    figure = eval_figure(METRICS)

    assert figure is not None
    panels = {axes.get_title().split("\n")[0]: axes for axes in figure.axes}
    # tokenAccuracy has no before value, trainLoss no pair: neither is drawn.
    assert list(panels) == ["eval loss", "perplexity", "exact match"]
    heights = {name: [bar.get_height() for bar in axes.patches] for name, axes in panels.items()}
    assert heights == {
        "eval loss": [2.4, 1.1],
        "perplexity": [11.0, 3.0],
        "exact match": [0.1, 0.75],
    }
    ticks = [t.get_text() for t in panels["eval loss"].get_xticklabels()]
    assert ticks == ["before", "after"]
    assert "lower is better" in panels["eval loss"].get_title()


def test_no_score_measured_before_and_after_means_no_eval_figure(tmp_path: Path) -> None:
    metrics = {"evalLoss": 0.5, "evalLossBefore": None, "history": HISTORY}

    assert eval_figure(metrics) is None
    assert write_plots(metrics, tmp_path) == ["plots/loss.png", "plots/learning_rate.png"]
    assert not (tmp_path / "plots" / "eval.png").exists()


def test_a_history_key_without_a_row_gets_its_own_figure() -> None:
    history = [
        {**row, "rewardMargin": row["step"] / 10, "KL": 0.01 * row["step"]} for row in HISTORY
    ]

    found = curve_figures({"history": history})

    assert list(found) == ["loss", "learning_rate", "reward_margin", "KL".lower()]
    assert lines(found["reward_margin"]) == {"reward margin": ([1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])}
    assert found["reward_margin"].axes[0].get_title() == "Reward margin"
    assert lines(found["kl"])["KL"][1] == [0.01, 0.02, 0.03, 0.04]


def test_rows_of_the_table_that_share_a_figure_are_drawn_together(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """How a preference task adds its curves: rows naming one figure."""
    reward = [
        Curve("rewardChosen", "chosen", "reward", "Rewards", "reward"),
        Curve("rewardRejected", "rejected", "reward", "Rewards", "reward"),
    ]
    monkeypatch.setattr(plots, "CURVES", (*plots.CURVES, *reward))
    history = [
        {**row, "rewardChosen": float(row["step"]), "rewardRejected": -float(row["step"])}
        for row in HISTORY
    ]

    found = curve_figures({"history": history})

    assert list(found) == ["loss", "learning_rate", "reward"]
    assert lines(found["reward"]) == {
        "chosen": ([1, 2, 3, 4], [1.0, 2.0, 3.0, 4.0]),
        "rejected": ([1, 2, 3, 4], [-1.0, -2.0, -3.0, -4.0]),
    }
    assert titles({"history": history})["plots/reward.png"] == "Rewards"


def test_a_single_step_run_draws_a_marker() -> None:
    found = curve_figures({"history": HISTORY[:1]})

    for figure in found.values():
        [line] = figure.axes[0].get_lines()
        assert len(line.get_xdata()) == 1
        assert line.get_marker() == "o", "a one-point line without a marker is invisible"
        low, high = figure.axes[0].get_xlim()
        assert low < 1 < high and high - low >= 2


def test_a_long_run_draws_lines_without_markers() -> None:
    history = [{"step": s, "loss": 1.0 / s} for s in range(1, 201)]

    [line] = curve_figures({"history": history})["loss"].axes[0].get_lines()

    assert len(line.get_xdata()) == 200
    assert line.get_marker() == "None"


def test_a_row_missing_a_key_is_skipped_not_drawn_as_zero() -> None:
    history = [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5, "learningRate": 1e-4}]

    found = curve_figures({"history": history})

    assert lines(found["learning_rate"])["learning rate"] == ([2], [1e-4])


def test_no_history_means_no_curves() -> None:
    assert figures({"evalLoss": 1.0}) == {}


# --------------------------------------------------------------------------- files


def test_the_pngs_are_valid_images_of_the_fixed_size(tmp_path: Path) -> None:
    written = write_plots(METRICS, tmp_path)

    assert written == ["plots/loss.png", "plots/learning_rate.png", "plots/eval.png"]
    assert set(titles(METRICS)) == set(written)
    for rel in written:
        with Image.open(tmp_path / rel) as image:
            image.verify()
        with Image.open(tmp_path / rel) as image:
            assert image.format == "PNG"
            assert image.size == (700, 400)
            assert "Software" not in image.info


def test_identical_metrics_give_identical_bytes(tmp_path: Path) -> None:
    first = write_plots(METRICS, tmp_path / "a")
    second = write_plots(json.loads(json.dumps(METRICS)), tmp_path / "b")

    assert first == second
    for rel in first:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    changed = json.loads(json.dumps(METRICS))
    changed["history"][1]["loss"] = 2.2
    write_plots(changed, tmp_path / "c")
    digest = hashlib.sha256
    loss = "plots/loss.png"
    assert digest((tmp_path / "c" / loss).read_bytes()) != digest(
        (tmp_path / "a" / loss).read_bytes()
    )


# --------------------------------------------------------------------------- staging


def embedded(card: str) -> list[str]:
    return re.findall(r"!\[[^\]]+\]\(([^)]+)\)", card)


def test_staging_lists_the_plots_in_the_manifest_and_embeds_them_in_the_card(
    tmp_path: Path,
) -> None:
    manifest = stage_artifacts(tmp_path, FakeModel(), FakeTokenizer(), CONFIG, METRICS, "org/base")

    assert verify_manifest(tmp_path) == []
    listed = {f["path"]: f["sha256"] for f in manifest["files"]}
    for rel in ("plots/loss.png", "plots/learning_rate.png", "plots/eval.png"):
        assert listed[rel] == hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest()
    card = (tmp_path / "README.md").read_text()
    assert "## Training curves" in card
    assert embedded(card) == ["plots/loss.png", "plots/learning_rate.png", "plots/eval.png"]
    assert "![Training loss](plots/loss.png)" in card
    assert card.index("## Training curves") < card.index("## Method")


def test_the_card_embeds_only_the_plots_that_exist(tmp_path: Path) -> None:
    metrics = {"evalLoss": 0.5, "history": [{"step": 1, "loss": 1.0}]}

    stage_artifacts(tmp_path, FakeModel(), FakeTokenizer(), CONFIG, metrics, "org/base")

    card = (tmp_path / "README.md").read_text()
    assert embedded(card) == ["plots/loss.png"]
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["loss.png"]
    assert verify_manifest(tmp_path) == []


def test_a_run_without_history_has_no_curves_section(tmp_path: Path) -> None:
    stage_artifacts(tmp_path, FakeModel(), FakeTokenizer(), CONFIG, {"evalLoss": 0.5}, "org/base")

    card = (tmp_path / "README.md").read_text()
    assert "## Training curves" not in card and embedded(card) == []
    assert not (tmp_path / "plots").exists()
    assert verify_manifest(tmp_path) == []
