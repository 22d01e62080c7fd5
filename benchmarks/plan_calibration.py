"""How close ``finetune plan`` comes to the run: predicted against measured peak memory
and training time, on this machine's CPUs, with the real SmolLM2-135M-Instruct.

    .venv/bin/python benchmarks/plan_calibration.py [--only NAME ...] [--all] [--list]
        [--model models/SmolLM2-135M-Instruct] [--out benchmarks/results/plan_calibration.json]
        [--keep]

Run it with nothing else busy on the machine: the measured time moves with the load (the
load average before and after each run is recorded).

**Configurations.** Each one is a FineTuneJob manifest the benchmark writes: a method
(lora, qlora, full, freeze, prefix, ia3, prompt), micro-batch (1 to 16), gradient
accumulation, maxSeqLength (128 to 1024), packing, gradient checkpointing and optimizer
(adamw, sgd, adamw-8bit), always fp32 (the CPU's precision), ``training.maxSteps`` small
enough for a run of about a minute, no exact-match generation. The default set (14) takes
about 15 minutes on 2 cores; ``--all`` adds 6 more, ``--only`` picks by name, ``--list``
prints them. ``--keep`` keeps each configuration's directory (manifest, data, run log,
published output); otherwise it is deleted after the run.

**Data.** Synthetic chat rows (format ``messages``: a user turn listing words, the
assistant's turn as long), generated with a fixed seed so every run sees the same tokens.
The words are single tokens of SmolLM2's tokenizer, so a row's length in tokens is set
by its word count (36 tokens of chat template and system prompt, 2 per word: it is in
both turns).
Two kinds: *short*, rows of 60 to 120 tokens; *long*, rows of 0.8 to 1.3 x the
configuration's maxSeqLength, so most are truncated and every micro-batch is about
maxSeqLength long. The training set holds one epoch of the run's steps (packed: enough
short rows to fill them); the validation set is 4 rows of the same kind, evaluated in
one batch of 4, since the evaluation runs before and after training.

**Prediction.** ``finetune plan FILE -o json`` (exit 0, or 6 when it does not fit): the
predicted peak is ``memory.perDeviceBytes`` (the process's peak RSS on a CPU) with its
terms and phase, the predicted time ``time.seconds`` (the training loop), and the
steps and tokens it counted from the tokenized data.

**Measurement.** ``finetune run FILE`` in a child process; its peak resident memory is
``ru_maxrss`` from ``os.wait4`` on that child (exact, no sampling), its training time is
``trainSeconds`` of the published ``metrics.json`` (the training loop alone: not the model
load, the evaluations or the publishing), with the steps it made. The plan and the run of
one configuration share a fresh ``FINETUNE_CACHE_DIR``: the plan tokenizes the data and
the run reuses it, as a user's would. Threads are torch's default (recorded, with the
CPU set the process may use and the load average before and after each run).

**Reported** (JSON at ``--out``, and a markdown table on stdout): per configuration its
settings, the predicted bytes and terms, the measured peak, the relative error
``(predicted - measured) / measured`` for memory and for time, and the largest absolute
errors over all configurations.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

REPO = Path(__file__).resolve().parent.parent
MODEL = REPO / "models" / "SmolLM2-135M-Instruct"
OUT = REPO / "benchmarks" / "results" / "plan_calibration.json"
FINETUNE = Path(sys.executable).parent / "finetune"
PLAN_EXIT_CODES = (0, 6)
"""``finetune plan`` exits 6 when the job does not fit: still a plan."""

# Single tokens of SmolLM2's tokenizer with a leading space: a row's length is its words.
WORDS = [
    *["alpha", "delta", "echo", "golf", "hotel", "india", "uniform", "whiskey", "red"],
    *["green", "blue", "yellow", "cyan", "black", "white", "amber", "orange", "purple"],
    *["silver", "gold", "stone", "river", "cloud", "house", "apple", "water", "light"],
    *["paper", "table", "chair"],
]
TEMPLATE_TOKENS = 36
"""Tokens of a row with no words: system prompt, turn markers, the instruction."""
SHORT_TOKENS = (60, 120)
LONG_FACTOR = (0.8, 1.3)
VALIDATION_ROWS = 4
SEED = 1234

DataKind = Literal["short", "long"]


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Config:
    """One FineTuneJob the benchmark plans and runs."""

    name: str
    method: dict[str, Any]
    batch: int
    seq_len: int
    data: DataKind
    steps: int
    accumulation: int = 1
    packing: bool = False
    checkpointing: bool = False
    optimizer: str = "adamw"
    learning_rate: float = 2e-4

    def settings(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "name"}

    def describe(self) -> str:
        """One line: method, micro-batch x accumulation, length and data, the options."""
        parts = [
            self.method["type"],
            f"batch {self.batch}" + (f" x {self.accumulation}" if self.accumulation > 1 else ""),
            f"maxSeqLength {self.seq_len}",
            f"{self.data} rows",
            f"{self.steps} steps",
            self.optimizer,
        ]
        parts += ["packing"] * self.packing + ["gradient checkpointing"] * self.checkpointing
        return ", ".join(parts)


LORA = {"type": "lora", "lora": {"r": 16, "alpha": 32, "targetModules": "all-linear"}}
FULL = {"type": "full"}
FREEZE = {"type": "freeze", "freeze": {"trainableLayers": 2}}
PREFIX = {"type": "prefix", "prefix": {"numVirtualTokens": 20}}
PROMPT = {"type": "prompt", "prompt": {"numVirtualTokens": 16}}


def lora(name: str, batch: int, seq_len: int, data: DataKind, **more: Any) -> Config:
    return Config(name, LORA, batch, seq_len, data, steps=more.pop("steps", 6), **more)


def full(name: str, batch: int, seq_len: int, data: DataKind, **more: Any) -> Config:
    more.setdefault("learning_rate", 2e-5)
    return Config(name, FULL, batch, seq_len, data, steps=more.pop("steps", 6), **more)


CONFIGS = [
    lora("lora-b4-short", 4, 256, "short", steps=5),
    lora("lora-b1-short", 1, 128, "short", steps=8),
    lora("lora-b16-short", 16, 256, "short"),
    lora("lora-b1x4-short", 1, 256, "short", accumulation=4),
    lora("lora-b2-long512", 2, 512, "long"),
    lora("lora-b2-long512-ckpt", 2, 512, "long", checkpointing=True),
    lora("lora-b1-long1024", 1, 1024, "long"),
    lora("lora-pack-b2-512", 2, 512, "short", packing=True),
    Config("qlora-b4-short", {"type": "qlora"}, 4, 256, "short", steps=6),
    full("full-b2-short", 2, 256, "short"),
    full("full-b2-short-sgd", 2, 256, "short", optimizer="sgd"),
    full("full-b2-short-adamw8bit", 2, 256, "short", optimizer="adamw-8bit"),
    Config("freeze-b4-short", FREEZE, 4, 256, "short", steps=6, learning_rate=5e-5),
    Config("prefix-b4-short", PREFIX, 4, 256, "short", steps=6, learning_rate=3e-3),
]
"""The default set: about 15 minutes on 2 cores."""

EXTRA = [
    lora("lora-b8-long128", 8, 128, "long"),
    lora("lora-b4-long512", 4, 512, "long"),
    lora("lora-pack-b2-512-ckpt", 2, 512, "short", packing=True, checkpointing=True),
    full("full-b2-long512-ckpt", 2, 512, "long", checkpointing=True),
    Config("ia3-b4-short", {"type": "ia3"}, 4, 256, "short", steps=6, learning_rate=1e-2),
    Config("prompt-b4-short", PROMPT, 4, 256, "short", steps=6, learning_rate=3e-2),
]
"""Run with ``--all`` or by name with ``--only``."""

HOLDOUT = [
    Config(
        "holdout-lora-r64-b8-short",
        {"type": "lora", "lora": {"r": 64, "alpha": 64, "targetModules": "all-linear"}},
        8,
        256,
        "short",
        steps=6,
    ),
    Config(
        "holdout-lora-qv-b4-long256",
        {"type": "lora", "lora": {"r": 8, "dropout": 0.0, "targetModules": ["q_proj", "v_proj"]}},
        4,
        256,
        "long",
        steps=6,
    ),
    full("holdout-full-b4-short", 4, 256, "short"),
    Config("holdout-qlora-b2-long512", {"type": "qlora"}, 2, 512, "long", steps=6),
    Config(
        "holdout-freeze4-b2-long512",
        {"type": "freeze", "freeze": {"trainableLayers": 4}},
        2,
        512,
        "long",
        steps=6,
        learning_rate=5e-5,
    ),
    lora("holdout-lora-b4x2-long384-ckpt", 4, 384, "long", accumulation=2, checkpointing=True),
]
"""Configurations the calibration was not fitted on (``--holdout``): its check."""


# --------------------------------------------------------------------------- data


def chat_row(rng: random.Random, tokens: int) -> dict[str, Any]:
    """A row of about ``tokens`` tokens: a list of words and its reverse."""
    words = [rng.choice(WORDS) for _ in range(max(1, (tokens - TEMPLATE_TOKENS) // 2))]
    return {
        "messages": [
            {"role": "user", "content": "Reverse these words: " + " ".join(words)},
            {"role": "assistant", "content": " ".join(reversed(words))},
        ]
    }


def token_range(kind: DataKind, seq_len: int) -> tuple[int, int]:
    if kind == "short":
        return SHORT_TOKENS
    return int(LONG_FACTOR[0] * seq_len), int(LONG_FACTOR[1] * seq_len)


def chat_rows(kind: DataKind, seq_len: int, n: int, seed: int) -> list[dict[str, Any]]:
    low, high = token_range(kind, seq_len)
    rng = random.Random(seed)
    return [chat_row(rng, rng.randint(low, high)) for _ in range(n)]


def train_rows(config: Config) -> int:
    """One epoch of the run's steps; packed, enough short rows to fill every sequence."""
    sequences = config.batch * config.accumulation * config.steps
    if not config.packing:
        return sequences
    mean = sum(token_range(config.data, config.seq_len)) / 2
    return int(sequences * config.seq_len / mean * 1.1) + 1


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"file://{path}"


# --------------------------------------------------------------------------- manifests


def manifest(config: Config, work: Path, model: Path) -> dict[str, Any]:
    """The FineTuneJob of ``config``, its data written under ``work``."""
    train = chat_rows(config.data, config.seq_len, train_rows(config), SEED)
    validation = chat_rows(config.data, config.seq_len, VALIDATION_ROWS, SEED + 1)
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": config.name},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "dataset": {
                "train": write_jsonl(work / "train.jsonl", train),
                "validation": write_jsonl(work / "validation.jsonl", validation),
                "format": "messages",
            },
            "method": config.method,
            "training": {
                "maxSteps": config.steps,
                "learningRate": config.learning_rate,
                "batchSize": config.batch,
                "gradientAccumulation": config.accumulation,
                "maxSeqLength": config.seq_len,
                "packing": config.packing,
                "gradientCheckpointing": config.checkpointing,
                "optimizer": config.optimizer,
                "precision": "fp32",
                "seed": 42,
            },
            "evaluation": {"exactMatchSamples": 0, "batchSize": VALIDATION_ROWS},
            "output": {"uri": f"file://{work / 'out'}"},
        },
    }


# --------------------------------------------------------------------------- plan and run


@dataclass
class Measured:
    exit_code: int
    max_rss_bytes: int
    wall_seconds: float
    log: Path


def child_env(work: Path) -> dict[str, str]:
    """The plan's and the run's environment: their own tokenization cache, offline."""
    return {**os.environ, "FINETUNE_CACHE_DIR": str(work / "cache"), "HF_HUB_OFFLINE": "1"}


def predict(path: Path, env: dict[str, str]) -> dict[str, Any]:
    """``finetune plan`` of the manifest at ``path``, as JSON."""
    proc = subprocess.run(
        [str(FINETUNE), "plan", str(path), "-o", "json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode not in PLAN_EXIT_CODES:
        raise RuntimeError(f"finetune plan exited {proc.returncode}: {proc.stderr[-2000:]}")
    plan: dict[str, Any] = json.loads(proc.stdout)
    return plan


def measure(path: Path, env: dict[str, str], log: Path) -> Measured:
    """``finetune run`` of the manifest at ``path``: its exit code and peak RSS."""
    started = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(FINETUNE), "run", str(path)], cwd=REPO, env=env, stdout=out, stderr=out
        )
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return Measured(
        exit_code=proc.returncode,
        max_rss_bytes=usage.ru_maxrss * 1024,  # KiB on Linux
        wall_seconds=time.perf_counter() - started,
        log=log,
    )


def published_metrics(output: Path) -> dict[str, Any]:
    """The run's ``metrics.json``, wherever under ``output`` it was published."""
    found = sorted(output.rglob("metrics.json"))
    if not found:
        raise RuntimeError(f"no metrics.json under {output}")
    metrics: dict[str, Any] = json.loads(found[0].read_text())
    return metrics


def error(predicted: float | None, measured: float | None) -> float | None:
    """``(predicted - measured) / measured`` in percent."""
    if predicted is None or not measured:
        return None
    return 100 * (predicted - measured) / measured


def benchmark(config: Config, model: Path, keep: bool) -> dict[str, Any]:
    """Plan and run ``config`` in a fresh directory; its row of the report."""
    work = Path(tempfile.mkdtemp(prefix=f"plan-calibration-{config.name}-"))
    path = work / "job.yaml"
    path.write_text(json.dumps(manifest(config, work, model), indent=2) + "\n")
    env = child_env(work)
    result: dict[str, Any] = {"name": config.name, "settings": config.settings()}
    try:
        plan = predict(path, env)
        result["predicted"] = {
            "peakBytes": plan["memory"]["perDeviceBytes"],
            "phase": plan["memory"]["phase"],
            "terms": plan["memory"]["terms"],
            "seconds": plan["time"]["seconds"],
            "steps": plan["data"]["steps"],
            "tokens": plan["data"]["tokens"],
            "longestSequence": plan["data"]["longestSequence"],
            "trainable": plan["parameters"]["trainable"],
        }
        result["loadBefore"] = os.getloadavg()[0]
        run = measure(path, env, work / "run.log")
        result["loadAfter"] = os.getloadavg()[0]
        if run.exit_code != 0:
            tail = run.log.read_text()[-2000:]
            raise RuntimeError(f"finetune run exited {run.exit_code}: {tail}")
        metrics = published_metrics(work / "out")
        result["measured"] = {
            "peakBytes": run.max_rss_bytes,
            "seconds": metrics["trainSeconds"],
            "steps": metrics["steps"],
            "wallSeconds": run.wall_seconds,
            "data": metrics.get("data"),
        }
        result["error"] = {
            "peakPercent": error(result["predicted"]["peakBytes"], run.max_rss_bytes),
            "secondsPercent": error(result["predicted"]["seconds"], metrics["trainSeconds"]),
        }
    except (RuntimeError, OSError, ValueError, KeyError) as exc:
        result["failure"] = str(exc)
    finally:
        if keep:
            result["workDir"] = str(work)
        else:
            shutil.rmtree(work, ignore_errors=True)
    return result


# --------------------------------------------------------------------------- report


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def machine() -> dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)),
        "torchThreads": torch_threads(),
        "memoryBytes": memory_bytes(),
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "transformers", "peft", "bitsandbytes")},
    }


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f} s"


def percent(p: float | None) -> str:
    return "-" if p is None else f"{p:+.1f}%"


def table(results: list[dict[str, Any]]) -> str:
    """The results as markdown, then the largest absolute errors."""
    lines = [
        "| config | predicted peak | measured peak | error | predicted time | measured time "
        "| error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if "failure" in r:
            lines.append(f"| {r['name']} | failed: {r['failure'].splitlines()[0][:80]} |")
            continue
        p, m, e = r["predicted"], r["measured"], r["error"]
        lines.append(
            f"| {r['name']} | {gib(p['peakBytes'])} | {gib(m['peakBytes'])} "
            f"| {percent(e['peakPercent'])} | {seconds(p['seconds'])} | {seconds(m['seconds'])} "
            f"| {percent(e['secondsPercent'])} |"
        )
    lines.append("")
    for key, label in (("peakPercent", "peak memory"), ("secondsPercent", "time")):
        errors = [r["error"][key] for r in results if r.get("error", {}).get(key) is not None]
        if errors:
            lines.append(f"Largest absolute error, {label}: {max(map(abs, errors)):.1f}%")
    return "\n".join(lines)


def write_report(out: Path, info: dict[str, Any], results: list[dict[str, Any]]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")


# --------------------------------------------------------------------------- refit


def _replanned(result: dict[str, Any], model: Path) -> tuple[Any, Any, int, float]:
    """A recorded run's job and data facts, rebuilt for the planner without running it."""
    from finetune_api.config.job import JobSections
    from finetune_api.plan import DataFacts

    st, measured, predicted = result["settings"], result["measured"], result["predicted"]
    data = measured["data"]
    job = JobSections.model_validate(
        {
            "model": {"uri": f"file://{model}"},
            "dataset": {"train": "file:///data.jsonl"},
            "method": st["method"],
            "training": {
                "maxSteps": st["steps"],
                "batchSize": st["batch"],
                "maxSeqLength": st["seq_len"],
                "gradientAccumulation": st["accumulation"],
                "packing": st["packing"],
                "gradientCheckpointing": st["checkpointing"],
                "optimizer": st["optimizer"],
            },
            "evaluation": {"batchSize": VALIDATION_ROWS, "exactMatchSamples": 0},
        }
    )
    facts = DataFacts(
        rows=data["packedSequences"] or data["trainRows"],
        tokens=data["trainTokens"],
        label_tokens=data["trainedTokens"],
        longest=predicted["longestSequence"],
    )
    return job, facts, measured["peakBytes"], measured["seconds"]


def refit(files: list[Path], model: Path, *, fit: bool = True) -> None:
    """Fit the CPU calibration (``finetune_api.plan.devices.CPU``) to recorded runs and
    print the constants and each run's errors with them (``fit`` False: the errors with
    the calibration as it is).

    Memory: the runtime and the four count factors by Nelder-Mead on the squared
    relative errors (the peak is a max over phases, not linear); time: non-negative
    least squares of the relative errors over one feature per constant (each the
    planner's time with only that constant set). It swaps ``devices.CPU`` while it
    fits: a calibration tool, never the planner's own path.
    """
    import dataclasses

    import numpy as np
    from scipy.optimize import minimize, nnls

    from finetune_api.plan import ModelShape, Target, devices, plan_job

    shape = ModelShape.from_config(json.loads((model / "config.json").read_text()))
    results = [r for f in files for r in json.loads(f.read_text())["results"] if "measured" in r]
    cases = [(r["name"], *_replanned(r, model)) for r in results]
    target = Target(cpu_cores=2)

    def calibrate(**changes: Any) -> None:
        devices.CPU = dataclasses.replace(devices.CPU, **changes)

    def plans() -> list[Any]:
        return [plan_job(job, shape, target, facts, suggest=False) for _, job, facts, _, _ in cases]

    def memory_loss(x: Any) -> float:
        calibrate(
            runtime_bytes=int(x[0] * 2**20),
            block=x[1],
            adapter=x[2],
            logits=x[3],
            checkpoint_retained=x[4],
        )
        errors = [p.memory.per_device_bytes / c[3] - 1 for p, c in zip(plans(), cases, strict=True)]
        return float(sum(e * e for e in errors) + 0.5 * max(abs(e) for e in errors) ** 2)

    if not fit:
        report_errors(plans(), cases)
        return
    start = [devices.CPU.runtime_bytes / 2**20, devices.CPU.block, devices.CPU.adapter]
    start += [devices.CPU.logits, devices.CPU.checkpoint_retained]
    fitted = minimize(memory_loss, start, method="Nelder-Mead", options={"maxiter": 800})
    memory_loss(fitted.x)
    zero = {
        "flops": 1e30,
        "seconds_per_block": 0.0,
        "seconds_per_adapter_input": 0.0,
        "seconds_per_parameter_step": 0.0,
        "seconds_per_parameter_step_8bit": 0.0,
    }
    features = []
    for name, value in [("flops", 1.0)] + [(k, 1.0) for k in list(zero)[1:]]:
        calibrate(**{**zero, name: value})
        features.append([p.time.seconds or 0.0 for p in plans()])
    measured = np.array([c[4] for c in cases])
    weights = 1 / measured
    coef, _ = nnls(np.array(features).T * weights[:, None], measured * weights)
    calibrate(flops=1 / coef[0], **dict(zip(list(zero)[1:], coef[1:], strict=True)))
    print(devices.CPU)
    report_errors(plans(), cases)


def report_errors(plans: list[Any], cases: list[Any]) -> None:
    """Each re-planned run's memory and time errors, and the largest of each."""
    worst = [0.0, 0.0]
    for plan, (name, _, _, peak, seconds) in zip(plans, cases, strict=True):
        memory = plan.memory.per_device_bytes / peak - 1
        time_error = (plan.time.seconds or 0) / seconds - 1
        worst = [max(worst[0], abs(memory)), max(worst[1], abs(time_error))]
        print(f"{name:32} memory {memory:+6.1%}  time {time_error:+6.1%}  ({plan.memory.phase})")
    print(f"largest: memory {worst[0]:.1%}, time {worst[1]:.1%}")


# --------------------------------------------------------------------------- main


@dataclass
class Options:
    only: list[str] = field(default_factory=list)
    model: Path = MODEL
    out: Path = OUT
    keep: bool = False
    list: bool = False
    all: bool = False
    holdout: bool = False
    refit: list[Path] = field(default_factory=list)
    replan: list[Path] = field(default_factory=list)


def parse_args() -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", default=[], metavar="NAME", help="these configs")
    parser.add_argument("--all", action="store_true", help="the extra configurations too")
    parser.add_argument("--list", action="store_true", help="print the configurations and exit")
    parser.add_argument("--model", type=Path, default=MODEL, help="the base model's directory")
    parser.add_argument("--out", type=Path, default=OUT, help="the JSON report")
    parser.add_argument("--keep", action="store_true", help="keep each run's work directory")
    parser.add_argument(
        "--holdout", action="store_true", help="run the held-out configurations (not fitted on)"
    )
    parser.add_argument(
        "--refit",
        nargs="+",
        type=Path,
        default=[],
        metavar="RESULTS",
        help="no runs: fit the CPU calibration to these results and re-plan them",
    )
    parser.add_argument(
        "--replan",
        nargs="+",
        type=Path,
        default=[],
        metavar="RESULTS",
        help="no runs: re-plan these results with the current calibration",
    )
    args = parser.parse_args()
    return Options(
        only=args.only,
        model=args.model.resolve(),
        out=args.out,
        keep=args.keep,
        list=args.list,
        all=args.all,
        holdout=args.holdout,
        refit=args.refit,
        replan=args.replan,
    )


def selected(options: Options) -> list[Config]:
    """The configurations ``--only`` names (default or extra), else the default set and,
    with ``--all``, the extra ones."""
    if options.holdout:
        return HOLDOUT
    if not options.only:
        return CONFIGS + EXTRA if options.all else CONFIGS
    known = {c.name: c for c in CONFIGS + EXTRA + HOLDOUT}
    unknown = [n for n in options.only if n not in known]
    if unknown:
        sys.exit(f"unknown configuration(s): {', '.join(unknown)}; see --list")
    return [known[n] for n in options.only]


def main() -> None:
    options = parse_args()
    if options.refit or options.replan:
        refit(options.refit or options.replan, options.model, fit=bool(options.refit))
        return
    configs = selected(options)
    if options.list:
        for c in configs:
            extra = " (extra)" if c in EXTRA else ""
            print(f"{c.name:26} {c.describe()}{extra}")
        return
    info = machine()
    results: list[dict[str, Any]] = []
    started = time.perf_counter()
    for config in configs:
        result = benchmark(config, options.model, options.keep)
        results.append(result)
        print(config.name, json.dumps(result.get("error") or result.get("failure")), flush=True)
        write_report(options.out, info, results)  # a run stopped early keeps its results
    print(f"\n{len(results)} configurations in {time.perf_counter() - started:.0f} s\n")
    print(table(results))


if __name__ == "__main__":
    main()
