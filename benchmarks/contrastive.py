"""Contrastive fine-tuning of a sentence encoder: full fine-tuning against LoRA.

    python benchmarks/contrastive.py [--methods full lora] [--steps 60] [--batch 32]
        [--max-seq-length 32] [--out benchmarks/results/contrastive.json]

Same base model (models/all-MiniLM-L6-v2), same generated retrieval task (the
sentence-embedding example's jargon: examples/embedding/generate.py, 1200 train and 200
held-out pairs, a hard negative each), same steps, batch, maximum length, schedule and
seed; only the method and its learning rate differ (full: 5e-5, the usual rate for
fine-tuning a whole BERT; LoRA: 1e-3, r 16 on every linear layer, the rate LoRA usually
needs). Each method is a FineTuneJob manifest written here and ``finetune run`` in its
own subprocess, as a user runs it.

Reported per method, from the run's metrics.json and the process: held-out retrieval
before and after (recall@1, recall@5, MRR over all 200 held-out positives and negatives;
evalLoss), trainable and total parameters, the training loop's peak memory (the trainer's
progress lines), the process's peak RSS (``wait4``) and wall and training seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from _finetune_run import run_finetune  # benchmarks/ is this script's sys.path[0]

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "all-MiniLM-L6-v2"
DATA = REPO / "examples" / "embedding"

METHODS: dict[str, tuple[dict[str, Any], float]] = {
    "full": ({"type": "full"}, 5e-5),
    "lora": ({"type": "lora", "lora": {"r": 16, "alpha": 32, "dropout": 0.05}}, 1e-3),
}
"""Each method's ``spec.method`` section and learning rate."""

QUALITY = ("recallAt1", "recallAt5", "mrr", "evalLoss")


def manifest(name: str, args: argparse.Namespace) -> dict[str, Any]:
    method, rate = METHODS[name]
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"contrastive-{name}"},
        "spec": {
            "task": "sentence-embedding",
            "model": {"uri": f"file://{MODEL}"},
            "dataset": {
                "train": f"file://{DATA / 'train.jsonl'}",
                "validation": f"file://{DATA / 'validation.jsonl'}",
                "format": "pairs",
            },
            "contrastive": {"loss": "multipleNegatives", "scale": 20},
            "method": method,
            "training": {
                "maxSteps": args.steps,
                "learningRate": rate,
                "batchSize": args.batch,
                "maxSeqLength": args.max_seq_length,
                "warmupRatio": 0.05,
                "seed": 0,
            },
            "evaluation": {"batchSize": 64},
        },
    }


def run_one(name: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``finetune run`` of the method's manifest in a subprocess; its numbers."""
    run = run_finetune(name, manifest(name, args), work, threads=args.threads)
    if run.returncode != 0:
        return {"method": name, "failed": True, "stderrTail": run.stderr_tail()}
    metrics = run.metrics
    return {
        "method": name,
        "options": METHODS[name][0],
        "learningRate": METHODS[name][1],
        "before": {k: metrics.get(f"{k}Before") for k in QUALITY},
        "after": {k: metrics.get(k) for k in QUALITY},
        "pooling": metrics.get("pooling"),
        "trainableParameters": metrics.get("trainableParameters"),
        "totalParameters": metrics.get("totalParameters"),
        "loopPeakMemoryBytes": run.loop_peak_bytes,
        "processPeakRssBytes": run.process_peak_rss_bytes,
        "trainSeconds": metrics.get("trainSeconds"),
        "wallSeconds": run.wall_seconds,
        "steps": metrics.get("steps"),
        "device": metrics.get("device"),
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| method | lr | trainable params | recall@1 (before → after) | recall@5 | MRR | "
        "loop peak MB | process peak RSS MB | train s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("failed"):
            rows.append(f"| {r['method']} | failed | | | | | | | | |")
            continue
        b, a = r["before"], r["after"]
        rows.append(
            f"| {r['method']} | {r['learningRate']:g} | {r['trainableParameters']:,} | "
            f"{b['recallAt1']:.3f} → {a['recallAt1']:.3f} | "
            f"{b['recallAt5']:.3f} → {a['recallAt5']:.3f} | {b['mrr']:.3f} → {a['mrr']:.3f} | "
            f"{(r['loopPeakMemoryBytes'] or 0) / 2**20:.0f} | "
            f"{r['processPeakRssBytes'] / 2**20:.0f} | {r['trainSeconds']:.0f} | "
            f"{r['wallSeconds']:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/contrastive.json")
    args = parser.parse_args()
    if not (MODEL / "config.json").is_file():
        sys.exit(f"{MODEL} is missing: run `make model` first")
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": str(MODEL.relative_to(REPO)),
        "steps": args.steps,
        "batch": args.batch,
        "maxSeqLength": args.max_seq_length,
        "threads": args.threads,
        "results": [],
    }
    results: list[dict[str, Any]] = report["results"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-contrastive-") as tmp:
        for name in args.methods:  # written after each: an interrupted run keeps its rows
            results.append(run_one(name, Path(tmp), args))
            args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
