"""Image classification by transfer learning: full, freeze and LoRA on one budget.

    python benchmarks/image_transfer.py [--methods full freeze lora] [--steps 130]
        [--batch 32] [--out benchmarks/results/image_transfer.json]

RANDOM-INIT backbone: no pretrained vision backbone installs offline here, so the
backbone is the example's random-weight tiny ViT (examples/image-classification/
prepare.py: 4 blocks, hidden 64, 32x32 pixels), written fresh into a work folder. The
numbers compare the methods' mechanics (what trains, its memory, its time, how much
the new head and the trained blocks learn from scratch), not transfer from pretrained
features: freeze trains a head over random frozen features here.

Same data (the example's generated shapes: 400 training and 100 held-out 32x32 images,
4 classes), steps, batch, learning rate (1e-3), schedule, augmentation and seed; the
new head learns at 10x the rate in every method (imageClassification.headLrMultiplier,
method.freeze.headLrMultiplier for freeze). Each method is a FineTuneJob manifest
written here and ``finetune run`` in its own subprocess, one thread
(OMP_NUM_THREADS=1).

Reported per method, from the run's metrics.json and the process: held-out accuracy,
macro-F1 and evalLoss before and after, trainable and total parameters, the training
loop's peak memory (the trainer's progress lines), the process's peak RSS (``wait4``),
training and wall seconds.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import tempfile
from pathlib import Path
from typing import Any

from _finetune_run import run_finetune  # benchmarks/ is this script's sys.path[0]

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "image-classification"
SHAPES = EXAMPLE / "shapes"

METHODS: dict[str, dict[str, Any]] = {
    "full": {"type": "full"},
    "freeze": {"type": "freeze", "freeze": {"trainableLayers": 2, "headLrMultiplier": 10}},
    "lora": {"type": "lora", "lora": {"r": 8, "alpha": 16}},
}
"""Each method's options; every one trains at the same learning rate, its head at 10x."""


def write_backbone(work: Path) -> Path:
    """The example's random-weight ViT, written by its prepare.py."""
    spec = importlib.util.spec_from_file_location("image_prepare", EXAMPLE / "prepare.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written: Path = module.write_tiny_vit(work / "vit-tiny-random")
    return written


def manifest(name: str, backbone: Path, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": f"images-{name}"},
        "spec": {
            "task": "image-classification",
            "model": {"uri": f"file://{backbone}"},
            "dataset": {
                "train": f"file://{SHAPES}/train/",
                "validation": f"file://{SHAPES}/validation/",
                "format": "image-folder",
            },
            "imageClassification": {"headLrMultiplier": 10},
            "method": METHODS[name],
            "training": {
                "maxSteps": args.steps,
                "batchSize": args.batch,
                "learningRate": args.learning_rate,
                "seed": 0,
            },
            "evaluation": {"batchSize": 100},
        },
    }


def run_one(name: str, backbone: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """``finetune run`` of the method's manifest in a subprocess; its numbers."""
    out = work / f"out-{name}"
    run = run_finetune(
        name, manifest(name, backbone, args), work, threads=1, output=f"file://{out}"
    )
    if run.returncode != 0:
        return {"method": name, "failed": True, "stderrTail": run.stderr_tail()}
    metrics = run.metrics
    quality = ("accuracy", "macroF1", "evalLoss")
    return {
        "method": name,
        "options": METHODS[name],
        "before": {k: metrics.get(f"{k}Before") for k in quality},
        "after": {k: metrics.get(k) for k in quality},
        "trainableParameters": metrics["trainableParameters"],
        "totalParameters": metrics["totalParameters"],
        "loopPeakMemoryBytes": run.loop_peak_bytes,
        "processPeakRssBytes": run.process_peak_rss_bytes,
        "trainSeconds": metrics["trainSeconds"],
        "wallSeconds": run.wall_seconds,
        "steps": metrics["steps"],
    }


def table(results: list[dict[str, Any]]) -> str:
    rows = [
        "| method | trainable params | accuracy (before → after) | macro-F1 | eval loss "
        "(before → after) | loop peak MB | process peak RSS MB | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.get("failed"):
            rows.append(f"| {r['method']} | failed | | | | | | |")
            continue
        b, a = r["before"], r["after"]
        rows.append(
            f"| {r['method']} | {r['trainableParameters']:,} of {r['totalParameters']:,} | "
            f"{b['accuracy']:.2f} → {a['accuracy']:.2f} | {a['macroF1']:.3f} | "
            f"{b['evalLoss']:.3f} → {a['evalLoss']:.3f} | "
            f"{r['loopPeakMemoryBytes'] / 2**20:.0f} | {r['processPeakRssBytes'] / 2**20:.0f} | "
            f"{r['trainSeconds']:.1f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, default=130, help="130: 10 epochs at batch 32")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/image_transfer.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="image-transfer-") as tmp:
        work = Path(tmp)
        backbone = write_backbone(work)
        results = [run_one(name, backbone, work, args) for name in args.methods]
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "backbone": "random-init tiny ViT (examples/image-classification/prepare.py)",
        "steps": args.steps,
        "batch": args.batch,
        "learningRate": args.learning_rate,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
