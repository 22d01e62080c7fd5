"""Shard-by-shard merge (finetune_trainer.export.merge) against peft's merge_and_unload,
peak memory and wall time, on SmolLM2-135M-Instruct.

Each merge runs in a child process of its own; its peak RSS is the kernel's
``ru_maxrss`` from ``os.wait4`` (the high-water mark of that process alone), its time
the child's wall clock around the merge and the write. A child that only imports the
same libraries gives the floor both stand on (Python, torch, transformers, peft).

Two bases: SmolLM2 as published (one 540 MB fp32 file, so "one shard" is the whole
model) and the same weights re-saved with ``max_shard_size="100MB"``, where the
shard-by-shard merge holds one shard at a time. The adapter is a LoRA (r 16, alpha 32,
every linear layer) with random B, so the merge changes every targeted weight; the two
merged models are compared tensor by tensor.

    .venv/bin/python benchmarks/merge_export.py --out benchmarks/results/merge_export-smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = REPO / "models" / "SmolLM2-135M-Instruct"


def child(mode: str, base: str, adapter: str, out: str) -> None:
    """One measured merge (or just the imports), in this process; prints its seconds."""
    import peft  # noqa: F401 - the floor imports what both merges import
    import torch  # noqa: F401
    import transformers  # noqa: F401

    if mode == "setup":  # not measured: the adapter and the sharded copy of the base
        make_adapter(Path(base), Path(adapter))
        resave_sharded(Path(base), Path(out), os.environ["SHARD_SIZE"])
        print(json.dumps({"seconds": 0}))
        return

    start = time.perf_counter()
    if mode == "shards":
        from finetune_trainer.export.artifact import write_model_dir

        write_model_dir(Path(adapter), Path(base), Path(out))
    elif mode == "peft":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = PeftModel.from_pretrained(
            AutoModelForCausalLM.from_pretrained(base, dtype="auto"), adapter
        )
        model.merge_and_unload().save_pretrained(out)
        AutoTokenizer.from_pretrained(adapter).save_pretrained(out)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def measure(mode: str, base: Path, adapter: Path, out: Path) -> dict[str, float]:
    """Run ``mode`` in a child; its wall seconds and peak RSS (MB).

    The parent imports no torch and loads no model: Linux carries the RSS a child had
    at fork into its ``ru_maxrss`` across exec, so a heavy parent would inflate it."""
    args = [sys.executable, __file__, "--child", mode, str(base), str(adapter), str(out)]
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"}
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{mode} failed ({status})")
    seconds = json.loads(output.decode().strip().splitlines()[-1])["seconds"]
    return {"seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def make_adapter(base: Path, out: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules="all-linear",
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


def resave_sharded(base: Path, out: Path, max_shard_size: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(base).save_pretrained(out, max_shard_size=max_shard_size)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)


def max_difference(a: Path, b: Path) -> float:
    """The largest elementwise difference between two saved models' tensors."""
    from safetensors import safe_open

    def tensors(d: Path) -> dict[str, Any]:
        found = {}
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as h:
                found.update({k: h.get_tensor(k) for k in h.keys()})  # noqa: SIM118
        return found

    ta, tb = tensors(a), tensors(b)
    assert set(ta) == set(tb), set(ta) ^ set(tb)
    return max(float((ta[k].float() - tb[k].float()).abs().max()) for k in ta)


def shard_sizes(d: Path) -> list[float]:
    return [round(f.stat().st_size / 1e6, 1) for f in sorted(d.glob("*.safetensors"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=REPO / "benchmarks/results/merge_export-smollm2.json"
    )
    parser.add_argument("--shard-size", default="100MB")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    results: dict[str, Any] = {
        "model": "SmolLM2-135M-Instruct (fp32)",
        "adapter": "LoRA r=16 alpha=32 all-linear, random B",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "bases": {},
    }
    with tempfile.TemporaryDirectory(prefix="merge-bench-") as tmp:
        root = Path(tmp)
        os.environ["SHARD_SIZE"] = args.shard_size
        measure("setup", SMOLLM2, root / "adapter", root / "sharded")
        floor = measure("imports", SMOLLM2, root / "adapter", root / "none")
        results["imports_only"] = floor
        bases = (("single file", SMOLLM2), (f"shards of {args.shard_size}", root / "sharded"))
        for label, base in bases:
            shards = measure("shards", base, root / "adapter", root / f"{label}-shards")
            whole = measure("peft", base, root / "adapter", root / f"{label}-peft")
            results["bases"][label] = {
                "base_shards_mb": shard_sizes(base),
                "shard_by_shard": shards,
                "peft_merge_and_unload": whole,
                "peak_rss_ratio": round(shards["peak_rss_mb"] / whole["peak_rss_mb"], 3),
                "above_imports_ratio": round(
                    (shards["peak_rss_mb"] - floor["peak_rss_mb"])
                    / (whole["peak_rss_mb"] - floor["peak_rss_mb"]),
                    3,
                ),
                "time_ratio": round(shards["seconds"] / whole["seconds"], 3),
            }
        for label, _ in bases:  # after every measurement: this loads tensors here
            results["bases"][label]["max_abs_difference"] = max_difference(
                root / f"{label}-shards", root / f"{label}-peft"
            )
            print(label, json.dumps(results["bases"][label]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
