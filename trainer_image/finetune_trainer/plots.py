"""The run's pictures: training curves and the before/after scores, as PNG files.

Pure functions from the metrics dict (``metrics.json``: ``history`` per optimizer step,
``evalHistory`` per periodic evaluation, ``<score>Before``/``<score>`` pairs) to
matplotlib figures, drawn with the object API on the Agg canvas (no pyplot, no display),
and :func:`write_plots`, which saves them under ``plots/`` of the artifact directory for
the model card to embed.

Each per-step curve is a row of :data:`CURVES`: the ``history`` key it reads, its legend
label and the figure it goes on. A task that records more per step (a preference task's
reward or margin, an RL task's KL) adds rows; a numeric ``history`` key without a row
still gets a figure of its own, named after the key.

Identical metrics give identical bytes: fixed size and dpi, no timestamp or software
version in the PNG, the fonts matplotlib ships.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.tasks import LOWER_IS_BETTER

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PLOTS_DIR = "plots"
DPI = 100
SIZE = (7.0, 4.0)
"""Inches: 700 x 400 pixels at :data:`DPI`."""
EVAL_FIGURE = "eval"
EVAL_TITLE = "Validation scores before and after fine-tuning"
STEP_KEYS = frozenset({"step", "epoch"})
"""History keys that place a row rather than measure something."""


@dataclass(frozen=True)
class Curve:
    """One per-step series: ``history[i][key]`` against ``history[i]["step"]``."""

    key: str
    """The key in each ``history`` row."""
    label: str
    """Its legend label."""
    figure: str
    """The figure it is drawn on: ``plots/<figure>.png``; rows may share one."""
    title: str
    """The figure's title (also the model card's alt text); the first row's wins."""
    axis: str
    """The figure's y-axis label; the first row's wins."""
    eval_key: str | None = None
    """An ``evalHistory`` score drawn as points on the same axes, when the run has it."""
    eval_label: str = ""
    """Its legend label."""


CURVES: tuple[Curve, ...] = (
    Curve(
        "loss",
        "training loss",
        "loss",
        "Training loss",
        "loss",
        eval_key="evalLoss",
        eval_label="validation loss",
    ),
    Curve("learningRate", "learning rate", "learning_rate", "Learning rate", "learning rate"),
)

SCORE_NAMES = {
    "evalLoss": "eval loss",
    "perplexity": "perplexity",
    "tokenAccuracy": "token accuracy",
    "exactMatch": "exact match",
    "rougeL": "ROUGE-L",
    "bleu": "BLEU",
    "chrF": "chrF",
    "bertScoreF1": "BERTScore F1",
    "accuracy": "accuracy",
    "macroPrecision": "macro precision",
    "macroRecall": "macro recall",
    "macroF1": "macro F1",
    "retentionLoss": "retention loss",
    "retentionExactMatch": "retention exact match",
}
"""Titles of the before/after scores; which way is better is the contract's
(finetune_api.tasks.METRICS), as is the unit: every share is a fraction 0-1."""
BEFORE, AFTER = "#9aa5b1", "#1f77b4"


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _new_figure(size: tuple[float, float] = SIZE) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=size, dpi=DPI, layout="constrained")


def curves_for(history: Sequence[Mapping[str, Any]]) -> list[Curve]:
    """The table's rows whose key the history has, then a row for each other numeric key
    (in the order first seen), so that nothing a run measured per step goes undrawn."""
    seen: dict[str, None] = {}
    for row in history:
        for key, value in row.items():
            if key not in STEP_KEYS and _number(value):
                seen.setdefault(key)
    known = {c.key for c in CURVES}
    rows = [c for c in CURVES if c.key in seen]
    for key in seen:
        if key not in known:
            words = _words(key)
            name = re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_") or "series"
            rows.append(Curve(key, words, name, words[:1].upper() + words[1:], words))
    return rows


def _words(key: str) -> str:
    """``rewardMargin`` -> ``reward margin``; an all-capitals key (``KL``) stays as it is."""
    if key.isupper():
        return key
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", key).replace("_", " ").lower()


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[key]) for row in rows if _number(row.get(key))]
    return [float(s) for s, _ in points], [float(v) for _, v in points]


MARKED_STEPS = 60
"""Up to this many points a curve marks each one (a single point drawn as a line alone
would be invisible); beyond, markers would hide the line."""


def _plot(axes: Axes, xs: list[float], ys: list[float], **style: Any) -> None:
    if len(xs) <= 1:
        style.update(marker="o")
    elif len(xs) <= MARKED_STEPS:
        style.update(marker="o", markersize=3)
    axes.plot(xs, ys, **style)


def curve_figures(metrics: Mapping[str, Any]) -> dict[str, Figure]:
    """One figure per :class:`Curve` figure name the history has, in table order."""
    from matplotlib.ticker import MaxNLocator

    history: list[Mapping[str, Any]] = list(metrics.get("history") or [])
    evals: list[Mapping[str, Any]] = list(metrics.get("evalHistory") or [])
    figures: dict[str, Figure] = {}
    for curve in curves_for(history):
        if curve.figure not in figures:
            figures[curve.figure] = _new_figure()
            axes = figures[curve.figure].add_subplot()
            axes.set_title(curve.title)
            axes.set_xlabel("optimizer step")
            axes.set_ylabel(curve.axis)
            axes.grid(True, alpha=0.3)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
            # 1e-3 as "1.0" under "1e-3" rather than "0.0010"; losses stay plain.
            axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 4))
        axes = figures[curve.figure].axes[0]
        xs, ys = _series(history, curve.key)
        _plot(axes, xs, ys, label=curve.label, linewidth=1.5)
        if curve.eval_key is not None:
            ex, ey = _series(evals, curve.eval_key)
            if ex:
                label = curve.eval_label or _words(curve.eval_key)
                axes.plot(ex, ey, marker="o", linestyle="--", label=label)
    for figure in figures.values():
        axes = figure.axes[0]
        if len(axes.lines) > 1:
            axes.legend()
        low, high = axes.get_xlim()
        if high - low < 2:  # one or two steps: whole-step ticks need a wider axis
            middle = (low + high) / 2
            axes.set_xlim(middle - 1, middle + 1)
    return figures


def compared_scores(metrics: Mapping[str, Any]) -> list[tuple[str, float, float]]:
    """``(score, before, after)`` for every score measured both before and after training,
    in the metrics' order."""
    return [
        (key, float(metrics[f"{key}Before"]), float(value))
        for key, value in metrics.items()
        if not key.endswith("Before") and _number(value) and _number(metrics.get(f"{key}Before"))
    ]


def eval_figure(metrics: Mapping[str, Any]) -> Figure | None:
    """Before vs after bars, one panel per score (their scales differ); None when nothing
    was measured both before and after."""
    scores = compared_scores(metrics)
    if not scores:
        return None
    figure = _new_figure((max(SIZE[0], 2.2 * len(scores)), SIZE[1]))
    figure.suptitle(EVAL_TITLE)
    for axes, (key, before, after) in zip(
        figure.subplots(1, len(scores), squeeze=False)[0], scores, strict=True
    ):
        bars = axes.bar(["before", "after"], [before, after], color=[BEFORE, AFTER])
        axes.bar_label(bars, labels=[_short(before), _short(after)], padding=2)
        name = SCORE_NAMES.get(key, _words(key))
        better = "lower is better" if key in LOWER_IS_BETTER else "higher is better"
        axes.set_title(f"{name}\n({better})", fontsize="medium")
        axes.margins(y=0.15)
        axes.grid(True, axis="y", alpha=0.3)
        axes.set_axisbelow(True)
    return figure


def _short(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def figures(metrics: Mapping[str, Any]) -> dict[str, Figure]:
    """Every picture of the run, by file stem: the curves, then the before/after scores."""
    found = curve_figures(metrics)
    scores = eval_figure(metrics)
    if scores is not None:
        found[EVAL_FIGURE] = scores
    return found


def plot_path(name: str) -> str:
    return f"{PLOTS_DIR}/{name}.png"


def save_png(figure: Figure, path: Path) -> None:
    """The PNG, byte for byte the same for the same figure (no Software/date chunk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png", dpi=DPI, metadata={"Software": None})


def write_plots(metrics: Mapping[str, Any], directory: Path) -> list[str]:
    """Write every picture under ``directory/plots/``; return their relative paths."""
    written = []
    for name, figure in figures(metrics).items():
        save_png(figure, directory / plot_path(name))
        written.append(plot_path(name))
    return written


def titles(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Each plot :func:`write_plots` writes for ``metrics`` (relative path) with its
    title, the model card's alt text; no figure is drawn."""
    found: dict[str, str] = {}
    for curve in curves_for(list(metrics.get("history") or [])):
        found.setdefault(plot_path(curve.figure), curve.title)
    if compared_scores(metrics):
        found[plot_path(EVAL_FIGURE)] = EVAL_TITLE
    return found
