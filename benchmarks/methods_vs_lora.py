"""Every fine-tuning method against LoRA on one budget.

    python benchmarks/methods_vs_lora.py [--methods lora vera lora-fa ...] [--steps 60]
        [--batch 8] [--max-seq-length 256] [--task dates|reverse]
        [--out benchmarks/results/methods_vs_lora.json]

Same base model (models/SmolLM2-135M-Instruct), same generated learnable causal-lm task,
same number of optimizer steps, batch, maximum length, schedule and seed for every method;
only the method's options and its learning rate differ (each family trains at the rate
its paper or peft recommends, see :data:`METHODS`). Each method runs as a real user runs
it: a FineTuneJob manifest written by this script and ``finetune run`` in its own
subprocess, so its peak memory is its own.

Reported per method, from the run's published ``metrics.json`` and the process:

- held-out quality before and after: evalLoss, tokenAccuracy, exactMatch (greedy answers
  on ``--exact-match`` validation prompts);
- trainable and total parameters (the run's own count);
- peak memory: the training loop's (the trainer's progress lines: CUDA allocator peak on
  a GPU, the process's peak RSS on CPU) and the whole process's peak RSS (``wait4``);
- wall time of the process and of the training loop.

Tasks (both generated here, seeded, validation disjoint from train):

- ``dates``: write a date given in prose as ISO 8601 (the quickstart's task; short rows,
  SmolLM2 gets it wrong out of the box, a few dozen steps teach it);
- ``reverse``: reverse a list of words (rows up to ~``--max-seq-length`` tokens): longer
  sequences, where activation memory shows (LoRA-FA's claim).

Adding a method: one entry in :data:`METHODS` (its ``method:`` section and learning rate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _finetune_run import run_finetune  # benchmarks/ is this script's sys.path[0]

REPO = Path(__file__).resolve().parent.parent
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Bench:
    """One method's configuration on the shared budget."""

    method: dict[str, Any]
    """The manifest's ``spec.method`` section."""
    learning_rate: float
    """Its family's learning rate (the note says where it comes from)."""
    note: str = ""
    """Why this learning rate and these options."""
    training: dict[str, Any] = field(default_factory=dict)
    """Extra ``spec.training`` fields this method needs (rarely: keep the budget shared)."""


# One entry per method, keyed by the name given to --methods (usually method.type; a
# variant may take its own key, e.g. "adapter-pfeiffer"). Helpers edit only their entry.
METHODS: dict[str, Bench] = {
    "lora": Bench(
        method={
            "type": "lora",
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": TARGETS},
        },
        learning_rate=1e-3,
        note="the quickstart's LoRA (r 16, alpha 32, every linear projection) at its rate",
    ),
    "vera": Bench(
        method={"type": "vera", "vera": {"r": 256, "targetModules": TARGETS, "dInitial": 0.1}},
        learning_rate=1e-2,
        note="VeRA paper: r 256, d_initial 0.1 and a learning rate ~10x LoRA's (it trains "
        "scaling vectors only)",
    ),
    "lora-fa": Bench(
        method={
            "type": "lora-fa",
            "loraFa": {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": TARGETS},
        },
        learning_rate=1e-3,
        note="LoRA-FA paper: LoRA's hyper-parameters (same r, alpha, rate), only B trains",
    ),
    "adapter-houlsby": Bench(
        method={
            "type": "adapter",
            "adapter": {"variant": "houlsby", "reductionFactor": 16, "nonlinearity": "relu"},
        },
        learning_rate=1e-3,
        note="Houlsby adapters (after attention and feed-forward), reduction factor 16 "
        "(36 units on SmolLM2); Houlsby et al. swept 3e-5..3e-3 and AdapterHub uses 1e-4 "
        "for long runs: on this 60-step budget LoRA's 1e-3, as the adapters start at zero",
    ),
    "adapter-pfeiffer": Bench(
        method={
            "type": "adapter",
            "adapter": {"variant": "pfeiffer", "reductionFactor": 16, "nonlinearity": "relu"},
        },
        learning_rate=1e-3,
        note="Pfeiffer adapters (after the feed-forward only: half of Houlsby's parameters), "
        "AdapterHub's defaults (reduction factor 16, relu) at the Houlsby entry's rate",
    ),
    "progressive": Bench(
        method={
            "type": "progressive",
            "progressive": {"everySteps": 5, "startBlocks": 2, "lrDecay": 0.9},
        },
        learning_rate=1e-4,
        note="gradual unfreezing: the head (SmolLM2's tied embeddings) and the top 2 "
        "blocks, one more every 5 steps (13 of 30 by step 60), block k at 0.9^k; a "
        "whole-model method, so full fine-tuning's rate for a 135M model (1e-4; LoRA's "
        "1e-3 is for adapters that start at zero)",
    ),
}


# --------------------------------------------------------------------------- data


def _ordinal(n: int) -> str:
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def date_rows(n: int, rng: random.Random) -> list[dict[str, Any]]:
    """A date in one of several prose spellings, answered as YYYY-MM-DD (the quickstart's
    task, generated afresh so that the sizes can change)."""
    start, end = dt.date(1950, 1, 1).toordinal(), dt.date(2035, 12, 31).toordinal()
    prompts = [
        "Convert this date to ISO 8601 (YYYY-MM-DD): {date}",
        "Write {date} in ISO 8601 format.",
        "What is {date} as an ISO date?",
    ]
    rows = []
    for day in rng.sample(range(start, end + 1), n):
        d = dt.date.fromordinal(day)
        month, year = d.strftime("%B"), d.year
        written = rng.choice(
            [
                f"{month} {d.day}, {year}",
                f"{d.day} {month} {year}",
                f"the {_ordinal(d.day)} of {month}, {year}",
                f"{d.strftime('%b')} {d.day}, {year}",
            ]
        )
        rows.append(_chat(rng.choice(prompts).format(date=written), d.isoformat()))
    return rows


WORDS = [
    *["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"],
    *["juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"],
    *["red", "green", "blue", "yellow", "cyan", "magenta", "black", "white", "amber"],
]


def reverse_rows(n: int, rng: random.Random, max_words: int) -> list[dict[str, Any]]:
    """Reverse a list of words; lengths uniform from max_words/2 to max_words, so most
    rows are long (the activation-memory case)."""
    rows = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(max_words // 2, max_words))]
        rows.append(_chat("Reverse these words: " + " ".join(words), " ".join(reversed(words))))
    return rows


def _chat(question: str, answer: str) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def write_data(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    rng = random.Random(20261201)
    n = args.train_rows + args.validation_rows
    if args.task == "dates":
        rows = date_rows(n, rng)
    else:
        # ~2 tokens a word in each half plus the template: fill about the maximum length
        rows = reverse_rows(n, rng, max_words=max(4, (args.max_seq_length - 40) // 4))
    train, validation = work / "train.jsonl", work / "validation.jsonl"
    for path, chunk in ((train, rows[: args.train_rows]), (validation, rows[args.train_rows :])):
        path.write_text("".join(json.dumps(r) + "\n" for r in chunk))
    return train, validation


# --------------------------------------------------------------------------- runs


def manifest(name: str, bench: Bench, data: tuple[Path, Path], args: argparse.Namespace) -> Any:
    train, validation = data
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"bench-{name}"},
        "spec": {
            "model": {"uri": f"file://{args.model.resolve()}"},
            "dataset": {
                "train": f"file://{train}",
                "validation": f"file://{validation}",
                "format": "messages",
                "deduplicate": False,
            },
            "method": bench.method,
            "training": {
                "maxSteps": args.steps,
                "learningRate": bench.learning_rate,
                "scheduler": "cosine",
                "warmupRatio": 0.05,
                "batchSize": args.batch,
                "maxSeqLength": args.max_seq_length,
                "seed": 42,
                "metricsPort": 0,
                **bench.training,
            },
            "evaluation": {"exactMatchSamples": args.exact_match, "maxNewTokens": 16},
        },
    }


def run_one(
    name: str, bench: Bench, data: tuple[Path, Path], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    """``finetune run`` of the method's manifest in a subprocess; its numbers."""
    run = run_finetune(name, manifest(name, bench, data, args), work, threads=args.threads)
    if run.returncode != 0:
        return {"method": name, "failed": run.returncode, "stderrTail": run.stderr_tail()}
    metrics = run.metrics
    return {
        "method": name,
        "type": bench.method["type"],
        "options": bench.method,
        "learningRate": bench.learning_rate,
        "note": bench.note,
        "before": _quality(metrics, "Before"),
        "after": _quality(metrics, ""),
        "trainLoss": metrics.get("trainLoss"),
        "trainableParameters": metrics.get("trainableParameters"),
        "totalParameters": metrics.get("totalParameters"),
        "loopPeakMemoryBytes": run.loop_peak_bytes,
        "processPeakRssBytes": run.process_peak_rss_bytes,
        "trainSeconds": metrics.get("trainSeconds"),
        "wallSeconds": run.wall_seconds,
        "device": metrics.get("device"),
        "precision": metrics.get("precision"),
        "steps": metrics.get("steps"),
    }


def _quality(metrics: dict[str, Any], suffix: str) -> dict[str, Any]:
    return {k: metrics.get(f"{k}{suffix}") for k in ("evalLoss", "tokenAccuracy", "exactMatch")}


# --------------------------------------------------------------------------- report


def table(results: list[dict[str, Any]]) -> str:
    """The README's markdown rows."""
    lora = next((r for r in results if r["method"] == "lora" and "failed" not in r), None)

    def mb(value: int | None) -> str:
        return "-" if value is None else f"{value / 2**20:,.0f}"

    def num(value: float | None, digits: int = 3) -> str:
        return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"

    rows = [
        "| method | lr | trainable params | eval loss (before → after) | token acc | "
        "exact match | loop peak MB | process peak RSS MB | train s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "failed" in r:
            rows.append(f"| {r['method']} | failed (exit {r['failed']}) | | | | | | | |")
            continue
        b, a = r["before"], r["after"]
        share = ""
        if lora is not None and lora["trainableParameters"]:
            share = f" ({r['trainableParameters'] / lora['trainableParameters']:.2f}x LoRA)"
        rows.append(
            f"| {r['method']} | {r['learningRate']:g} | {r['trainableParameters']:,}{share} | "
            f"{num(b['evalLoss'])} → **{num(a['evalLoss'])}** | "
            f"{num(b['tokenAccuracy'])} → {num(a['tokenAccuracy'])} | "
            f"{num(b['exactMatch'], 2)} → {num(a['exactMatch'], 2)} | "
            f"{mb(r['loopPeakMemoryBytes'])} | {mb(r['processPeakRssBytes'])} | "
            f"{num(r['trainSeconds'], 0)} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--model", type=Path, default=REPO / "models/SmolLM2-135M-Instruct")
    parser.add_argument("--task", choices=["dates", "reverse"], default="dates")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=256)
    parser.add_argument("--train-rows", type=int, default=480)
    parser.add_argument("--validation-rows", type=int, default=64)
    parser.add_argument(
        "--exact-match",
        type=int,
        default=64,
        help="validation prompts answered greedily for exactMatch (0: none)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--work", type=Path, help="keep manifests, logs and outputs here")
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/methods_vs_lora.json"
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="methods-vs-lora-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = write_data(work, args)
        results = []
        for name in args.methods:
            print(f"== {name}", file=sys.stderr, flush=True)
            result = run_one(name, METHODS[name], data, work, args)
            print(json.dumps(result), file=sys.stderr, flush=True)
            results.append(result)

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"date": dt.date.today().isoformat(), "settings": settings, "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
