"""Data preparation at scale: generated chat sets of 100k, 1M and 3M rows, today against new.

    python benchmarks/data_scale.py [--sizes 100000 1000000 3000000] [--baseline-ref 74280cd]
        [--baseline-max-rows 1000000] [--work DIR] [--out benchmarks/results/data_scale_cpu.json]
    python benchmarks/data_scale.py --quick        # 10k rows, one size: checks the harness

Each measurement is a FineTuneJob run by ``finetune run`` in its own process, as a user
runs it, up to its first optimizer step (``training.maxSteps: 1``, exact match off, 16 rows
held out by ``validationSplit``), on a tiny random Llama (2 layers, hidden 64) saved with
SmolLM2-135M-Instruct's tokenizer and chat template: the model costs nothing, the
tokenisation is the real one. The data are seeded support-chat conversations (an optional
system turn, 1 to 3 exchanges; 168 bytes and 62 tokens a row on average with SmolLM2's
template, near the issue's 300k-row set of 45 MB and 22 M tokens: 150 bytes, 73 tokens),
written once into the work folder and reused.

Paths, for each size:

- ``today``: the code at ``--baseline-ref`` (74280cd: the contract of the data-at-scale
  change, none of its trainer code), run from a ``git worktree`` the benchmark creates in
  its work folder, with this virtual environment and PYTHONPATH on the worktree's sources;
  skipped (and said so) above ``--baseline-max-rows``, where it would need tens of GB;
- ``today warm``: today's rerun on today's own local cache;
- ``new 1 proc`` and ``new 2 procs``: this checkout with ``dataset.tokenizeProcesses`` 1
  and 2 (the machine has 2 cores), each on a fresh local cache;
- ``warm rerun``: the 2-process run again on its warm local cache;
- ``output-cache rerun``: a fresh local cache and a fresh output folder holding only the
  first run's ``checkpoints/data-cache/`` (a rescheduled pod: same output storage, new node).

Measured per run: wall seconds of the whole process, and to its first step (when the
trainer logs the step's ``checkpoint``); data-preparation seconds, from the moment the
trainer logs ``job`` (settings read) to the moment it logs ``data`` (tokenizer loaded,
every file read, cleaned, tokenised, split), both lines stamped by this script as they
arrive (the trainer's own stamps are whole seconds); peak RSS from ``os.wait4`` (the
largest single process of the run's tree: the helper in _finetune_run.py) and the peak
of the tree's summed RSS, sampled every 0.5 s with psutil (tokenising workers run beside
the trainer; pages they share with it copy-on-write are counted in each, so this is an
upper bound; PSS would depend on what else on the machine maps the same libraries); the
data report (rows, tokens) from metrics.json. A 64-row run of each checkout gives the
fixed cost (imports, tokenizer, model, step, publishing): tokenisation rows/s is rows
read over the preparation seconds less the 64-row run's, and ``wall - fixed``
cross-checks it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from _finetune_run import Finished, run_finetune  # benchmarks/ is this script's sys.path[0]

REPO = Path(__file__).resolve().parent.parent
SMOLLM2 = REPO / "models" / "SmolLM2-135M-Instruct"
SOURCE_FOLDERS = ("api", "trainer_image", "cli", "operator")
"""Where the four packages live in a checkout (pyproject's packages.find)."""
DEFAULT_SIZES = (100_000, 1_000_000, 3_000_000)
QUICK_ROWS = 10_000
FIXED_ROWS = 64
DATA_CACHE = Path("checkpoints/data-cache")
"""Where the trainer keeps its copy of the tokenized data in the output (inside
checkpoints/, which nothing publishes)."""
HELD_OUT_ROWS = 16
GENERATOR_VERSION = 1
"""Bumped when the generated rows change, so an old dataset in the work folder is rewritten."""
SAMPLE_SECONDS = 0.5

# --------------------------------------------------------------------------- the data

PRODUCTS = ["router", "laptop", "headset", "blender", "kettle", "printer", "phone", "watch"]
ISSUES = [
    "won't turn on",
    "keeps restarting",
    "is making a noise",
    "arrived broken",
    "is not charging",
    "lost its settings",
]
ASKS = [
    "Where is order {n}?",
    "My {p} {i}, order {n}.",
    "Return the {p} from {n}?",
    "How do I reset {p} {m}?",
    "Is {p} {m} under warranty?",
    "Order {n} was charged twice.",
    "New address for order {n}?",
]
ANSWERS = [
    "Order {n} ships {d}, 3 days.",
    "Hold power 10 s on {m}, then retry.",
    "Yes, return {n} by {d}.",
    "{m} is covered until {d}.",
    "Refunded ${c} on order {n}.",
    "Done: {n} goes to the new address.",
    "A new {p} ships {d}.",
]
FOLLOW_UPS = ["Thanks!", "And the receipt?", "How long will it take?", "OK, it works now."]
REPLIES = ["You're welcome.", "It's in your email.", "About 3 days.", "Glad it helped!"]
SYSTEMS = ["You are a support agent.", "Answer briefly."]
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def chat_row(rng: random.Random) -> dict[str, Any]:
    """One support conversation: an optional system turn, then 1 (80%), 2 (15%) or 3 (5%)
    exchanges; order numbers, model numbers and dates make nearly every row unique, so deduplication
    (on, as by default) keeps them."""
    fill = {
        "n": str(rng.randrange(10_000, 99_999)),
        "p": rng.choice(PRODUCTS),
        "i": rng.choice(ISSUES),
        "d": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
        "m": f"{rng.choice('ABCDEFGHKMNPRSTX')}{rng.randrange(100, 9999)}",
        "c": f"{rng.randrange(5, 500)}.{rng.randrange(100):02d}",
    }
    messages = []
    if rng.random() < 0.1:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    messages.append({"role": "user", "content": rng.choice(ASKS).format(**fill)})
    messages.append({"role": "assistant", "content": rng.choice(ANSWERS).format(**fill)})
    for _ in range(rng.choices((0, 1, 2), weights=(80, 15, 5))[0]):
        messages.append({"role": "user", "content": rng.choice(FOLLOW_UPS)})
        messages.append({"role": "assistant", "content": rng.choice(REPLIES)})
    return {"messages": messages}


def chat_rows(n: int, seed: int) -> Iterator[dict[str, Any]]:
    """``n`` rows, one at a time (a 3M-row set is never held in memory)."""
    rng = random.Random(seed)
    for _ in range(n):
        yield chat_row(rng)


@dataclass(frozen=True)
class DataFile:
    path: Path
    rows: int
    bytes: int


def write_dataset(work: Path, rows: int, seed: int) -> DataFile:
    """``work/chat-<rows>-<seed>.jsonl``, generated streaming into a temporary name and
    renamed, so an interrupted generation is never taken for a finished one; reused
    while its sidecar says the same rows, seed and generator."""
    path = work / f"chat-{rows}-{seed}.jsonl"
    sidecar = path.with_suffix(".json")
    wanted = {"rows": rows, "seed": seed, "generator": GENERATOR_VERSION}
    if path.is_file() and sidecar.is_file():
        known = json.loads(sidecar.read_text())
        if {k: known.get(k) for k in wanted} == wanted:
            return DataFile(path, rows, path.stat().st_size)
    partial = path.with_suffix(".jsonl.partial")
    started = time.perf_counter()
    with partial.open("w") as handle:
        for row in chat_rows(rows, seed):
            handle.write(json.dumps(row, separators=(",", ":")) + "\n")
    partial.replace(path)
    size = path.stat().st_size
    sidecar.write_text(json.dumps({**wanted, "bytes": size}))
    print(
        f"generated {path.name}: {rows} rows, {size / 1e6:.1f} MB in "
        f"{time.perf_counter() - started:.0f} s",
        flush=True,
    )
    return DataFile(path, rows, size)


# --------------------------------------------------------------------------- model, trees


def write_tiny_model(work: Path) -> Path:
    """A 2-layer random Llama (hidden 64) with SmolLM2's tokenizer and chat template."""
    if not (SMOLLM2 / "tokenizer.json").is_file():
        sys.exit(
            f"data_scale: {SMOLLM2} has no tokenizer.json: convert SmolLM2 first with "
            "`make model` (the benchmark tokenises with its real tokenizer)"
        )
    target = work / "tiny-llama-smollm2-tokenizer"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(SMOLLM2)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    partial = work / "tiny-llama.partial"
    shutil.rmtree(partial, ignore_errors=True)
    LlamaForCausalLM(config).save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    partial.rename(target)
    return target


def baseline_tree(work: Path, ref: str) -> Path:
    """A detached ``git worktree`` of ``ref`` in the work folder (reused when it is at
    ``ref`` already): today's code, run with this virtual environment."""
    commit = _git("rev-parse", "--verify", f"{ref}^{{commit}}")
    tree = work / f"baseline-{commit[:12]}"
    if (tree / ".git").exists():
        if _git("-C", str(tree), "rev-parse", "HEAD") == commit:
            return tree
        sys.exit(f"data_scale: {tree} is a worktree at another commit; remove it")
    _git("worktree", "add", "--detach", str(tree), commit)
    return tree


def _git(*args: str) -> str:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    return done.stdout.strip()


def sources_env(tree: Path) -> dict[str, str]:
    """PYTHONPATH on a checkout's four packages: ahead of the editable install's finder
    (which sys.meta_path consults after the path), so the run imports that checkout."""
    return {"PYTHONPATH": os.pathsep.join(str(tree / f) for f in SOURCE_FOLDERS)}


def knows_field(tree: Path, snake_name: str) -> bool:
    """Whether a checkout's dataset section has a field: a field unknown to a checkout is
    not set for it (its manifests would be refused)."""
    data_py = tree / "api" / "finetune_api" / "config" / "data.py"
    return f"    {snake_name}:" in data_py.read_text()


# --------------------------------------------------------------------------- one run


def manifest(data: DataFile, model: Path, processes: int | None) -> dict[str, Any]:
    dataset: dict[str, Any] = {
        "train": f"file://{data.path}",
        "format": "messages",
        "validationSplit": HELD_OUT_ROWS / data.rows,
    }
    if processes is not None:
        dataset["tokenizeProcesses"] = processes
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "data-scale"},
        "spec": {
            "model": {"uri": f"file://{model}"},
            "dataset": dataset,
            "method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}},
            "training": {
                "epochs": 1,
                "maxSteps": 1,
                "batchSize": 8,
                "maxSeqLength": 256,
                "warmupRatio": 0.0,
            },
            "evaluation": {"exactMatchSamples": 0, "batchSize": HELD_OUT_ROWS},
        },
    }


@dataclass
class Watch:
    """What a sampler thread sees of a running ``finetune run``: the summed RSS of this
    script's child processes (the run and any workers it starts) and when each line of
    its log arrived."""

    log: Path
    peak_tree_rss: int = 0
    stamps: dict[str, float] = field(default_factory=dict)
    """First arrival (perf_counter) of each log line's first word: ``job``, ``data``..."""
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        me, offset, sampled = psutil.Process(), 0, 0.0
        while not self.stop.wait(0.05):
            offset = self._read_log(offset)  # every 50 ms: the stamps' resolution
            if time.perf_counter() - sampled >= SAMPLE_SECONDS:
                self.peak_tree_rss = max(self.peak_tree_rss, _tree_rss(me))
                sampled = time.perf_counter()
        self._read_log(offset)

    def _read_log(self, offset: int) -> int:
        try:
            with self.log.open("rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            return offset
        complete = chunk[: chunk.rfind(b"\n") + 1]
        now = time.perf_counter()
        for line in complete.decode(errors="replace").splitlines():
            words = line.split(" ", 2)  # "HH:MM:SS message key=value..."
            if len(words) > 1:
                self.stamps.setdefault(words[1], now)
        return offset + len(complete)


def _tree_rss(me: psutil.Process) -> int:
    total = 0
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


@dataclass(frozen=True)
class Measured:
    finished: Finished
    started: float
    stamps: dict[str, float]
    peak_tree_rss: int


def measured_run(
    name: str,
    spec: dict[str, Any],
    work: Path,
    env: dict[str, str],
    threads: int,
    data_cache: Path | None = None,
) -> Measured:
    """``finetune run`` into a fresh ``work/out-<name>`` (holding a copy of ``data_cache``
    as its ``data-cache/`` when given), watched by a sampler thread."""
    shutil.rmtree(work / f"out-{name}", ignore_errors=True)
    if data_cache is not None:
        shutil.copytree(data_cache, work / f"out-{name}" / DATA_CACHE)
    (work / f"{name}.log").unlink(missing_ok=True)
    watch = Watch(work / f"{name}.log")
    sampler = threading.Thread(target=watch.run, daemon=True)
    sampler.start()
    started = time.perf_counter()
    finished = run_finetune(name, spec, work, threads=threads, env=env)
    watch.stop.set()
    sampler.join()
    return Measured(finished, started, watch.stamps, watch.peak_tree_rss)


@dataclass(frozen=True)
class Fixed:
    """A checkout's 64-row run: what every run of it costs whatever the data's size."""

    wall_seconds: float
    data_seconds: float


def row_of(size: int, path: str, run: Measured, fixed: Fixed | None) -> dict[str, Any]:
    """One row of the results: the run's measurements, or why it failed."""
    finished = run.finished
    row: dict[str, Any] = {
        "rows": size,
        "path": path,
        "returncode": finished.returncode,
        "wallSeconds": round(finished.wall_seconds, 2),
        "peakRssBytes": finished.process_peak_rss_bytes,
        "peakTreeRssBytes": run.peak_tree_rss,
    }
    if finished.returncode != 0:
        row["error"] = finished.stderr_tail()[-600:]
        return row
    if "job" in run.stamps and "data" in run.stamps:
        row["dataSeconds"] = round(run.stamps["data"] - run.stamps["job"], 2)
    if "checkpoint" in run.stamps:
        row["firstStepSeconds"] = round(run.stamps["checkpoint"] - run.started, 2)
    report = finished.metrics.get("data", {})
    row["data"] = report
    if fixed is None:
        return row
    row["wallMinusFixedSeconds"] = round(finished.wall_seconds - fixed.wall_seconds, 2)
    seconds = row.get("dataSeconds", 0.0) - fixed.data_seconds
    if report.get("filesTokenized", 1) and report.get("rowsRead") and seconds > 0:
        row["tokenizeRowsPerSecond"] = round(report["rowsRead"] / seconds)
    return row


# --------------------------------------------------------------------------- the paths


@dataclass(frozen=True)
class Checkout:
    name: str
    tree: Path
    tokenize_processes: bool
    """Whether its contract has dataset.tokenizeProcesses."""

    def processes(self, n: int) -> int | None:
        return n if self.tokenize_processes else None


class Bench:
    def __init__(self, args: argparse.Namespace, model: Path) -> None:
        self.args, self.model, self.work = args, model, args.work
        self.rows: list[dict[str, Any]] = []
        self.fixed: dict[str, Fixed | None] = {}
        """Each checkout's fixed cost (:func:`fixed_cost`), once measured."""

    def run(
        self,
        key: str,
        checkout: Checkout,
        data: DataFile,
        processes: int | None,
        cache: Path,
        *,
        fresh_cache: bool = True,
        data_cache: Path | None = None,
    ) -> Measured:
        """One run of ``checkout`` with ``cache`` as its local cache (emptied first
        unless ``fresh_cache`` is false)."""
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir(parents=True, exist_ok=True)
        env = {**sources_env(checkout.tree), "FINETUNE_CACHE_DIR": str(cache)}
        spec = manifest(data, self.model, processes)
        return measured_run(key, spec, self.work, env, self.args.threads, data_cache)

    def record(self, row: dict[str, Any]) -> None:
        self.rows.append(row)
        shown = {k: v for k, v in row.items() if k not in ("data", "error")}
        print(json.dumps(shown), flush=True)
        if "error" in row:
            print(row["error"], file=sys.stderr)


def fixed_cost(bench: Bench, checkout: Checkout) -> Fixed | None:
    """A 64-row run: everything but the data's size."""
    data = write_dataset(bench.work, FIXED_ROWS, bench.args.seed)
    name = f"fixed-{checkout.name}"
    run = bench.run(name, checkout, data, checkout.processes(1), bench.work / f"cache-{name}")
    bench.record(row_of(FIXED_ROWS, f"{checkout.name} fixed cost", run, None))
    if run.finished.returncode != 0 or not {"job", "data"} <= run.stamps.keys():
        return None
    return Fixed(run.finished.wall_seconds, run.stamps["data"] - run.stamps["job"])


def one_size(bench: Bench, size: int, today: Checkout, new: Checkout) -> None:
    args, work = bench.args, bench.work
    data = write_dataset(work, size, args.seed)

    def record(path: str, run: Measured, checkout: Checkout, note: str = "") -> None:
        row = row_of(size, path, run, bench.fixed.get(checkout.name))
        if note:
            row["note"] = note
        bench.record(row)

    if size <= args.baseline_max_rows:
        cache = work / f"cache-{size}-today"
        # tokenizeProcesses 1, when today's contract has the field (74280cd does, and
        # nothing in its trainer reads it): the manifest is new 1 proc's.
        one = today.processes(1)
        record("today", bench.run(f"{size}-today", today, data, one, cache), today)
        warm = bench.run(f"{size}-today-warm", today, data, one, cache, fresh_cache=False)
        record("today warm", warm, today)
    else:
        bench.record(
            {
                "rows": size,
                "path": "today",
                "skipped": f"above --baseline-max-rows {args.baseline_max_rows}: today's code "
                "holds every row as Python objects (about 6-9 KB a row)",
            }
        )
    note = processes_note(new)
    for processes in (1, 2):
        if processes == 1 and size > args.one_process_max_rows:
            bench.record(
                {
                    "rows": size,
                    "path": "new 1 proc",
                    "skipped": f"above --one-process-max-rows {args.one_process_max_rows}",
                }
            )
            continue
        cache = work / f"cache-{size}-new{processes}"
        run = bench.run(f"{size}-new{processes}", new, data, new.processes(processes), cache)
        record(f"new {processes} proc{'s' if processes > 1 else ''}", run, new, note)
    cache = work / f"cache-{size}-new2"
    warm = bench.run(f"{size}-warm", new, data, new.processes(2), cache, fresh_cache=False)
    record("warm rerun", warm, new)
    rescheduled(bench, size, data, new)


def processes_note(checkout: Checkout) -> str:
    """Why ``new 1 proc`` and ``new 2 procs`` may not differ: the option is missing, or
    the code that would honour it (data/parallel.py) has not landed in this checkout."""
    if not checkout.tokenize_processes:
        return "this checkout has no dataset.tokenizeProcesses"
    if not (checkout.tree / "trainer_image/finetune_trainer/data/parallel.py").is_file():
        return "no data/parallel.py here: tokenizeProcesses not honoured yet"
    return ""


def rescheduled(bench: Bench, size: int, data: DataFile, new: Checkout) -> None:
    """A fresh local cache and an output folder that holds only the first run's
    ``data-cache/``: what a pod rescheduled onto another node finds."""
    remote = bench.work / f"out-{size}-new2" / DATA_CACHE
    if not remote.is_dir():
        bench.record(
            {
                "rows": size,
                "path": "output-cache rerun",
                "skipped": "the new 2-process run left no data-cache/ in its output",
            }
        )
        return
    name = f"{size}-rescheduled"
    cache = bench.work / f"cache-{name}"
    run = bench.run(name, new, data, new.processes(2), cache, data_cache=remote)
    row = row_of(size, "output-cache rerun", run, bench.fixed.get(new.name))
    if run.finished.returncode == 0 and row.get("data", {}).get("filesTokenized"):
        row["note"] = "tokenised again: the output's data-cache/ was not used"
    bench.record(row)


# --------------------------------------------------------------------------- the table


COLUMNS = (
    "rows",
    "path",
    "wall s",
    "to first step s",
    "data prep s",
    "tokenisation rows/s",
    "peak RSS MB (wait4)",
    "tree RSS MB (sampled)",
    "wall: today / this",
    "peak RSS: this / today",
    "note",
)


def table(rows: list[dict[str, Any]]) -> str:
    """The markdown table: each path against today's cold run of the same size."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    today = {r["rows"]: r for r in rows if r.get("path") == "today" and r.get("returncode") == 0}
    blank = " - |" * (len(COLUMNS) - 3)
    for r in rows:
        if "skipped" in r or r["returncode"] != 0:
            why = f"skipped: {r['skipped']}" if "skipped" in r else "failed"
            why += f" (exit {r['returncode']})" if "returncode" in r else ""
            lines.append(f"| {r['rows']:,} | {r['path']} |{blank} {why} |")
            continue
        base = today.get(r["rows"])
        cached = r.get("data", {}).get("filesTokenized") == 0
        rate = "cache hit" if cached else _num(r.get("tokenizeRowsPerSecond"), ",")
        cells = [
            f"{r['rows']:,}",
            r["path"],
            f"{r['wallSeconds']:.1f}",
            _num(r.get("firstStepSeconds"), ".1f"),
            _num(r.get("dataSeconds"), ".1f"),
            rate,
            f"{r['peakRssBytes'] / 2**20:,.0f}",
            f"{r['peakTreeRssBytes'] / 2**20:,.0f}",
            f"{base['wallSeconds'] / r['wallSeconds']:.2f}x" if base else "-",
            f"{r['peakRssBytes'] / base['peakRssBytes']:.2f}x" if base else "-",
            r.get("note", ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(DEFAULT_SIZES))
    parser.add_argument("--quick", action="store_true", help="10k rows, one size")
    parser.add_argument("--baseline-ref", default="74280cd")
    parser.add_argument("--baseline-max-rows", type=int, default=1_000_000)
    parser.add_argument(
        "--one-process-max-rows",
        type=int,
        default=10_000_000,
        help="skip the new path's 1-process run above this size (time)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument(
        "--work",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "finetune-benchmarks"
        / "data_scale",
        help="datasets, the model, the baseline worktree, runs (reused across invocations)",
    )
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--keep-runs",
        action="store_true",
        help="keep each size's caches and output folders (GBs at 3M rows); logs are kept",
    )
    args = parser.parse_args()
    if args.quick:
        args.sizes = [QUICK_ROWS]
    if args.out is None:
        name = "data_scale_cpu-quick.json" if args.quick else "data_scale_cpu.json"
        args.out = REPO / "benchmarks" / "results" / name
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)

    model = write_tiny_model(args.work)
    tree = baseline_tree(args.work, args.baseline_ref)
    today = Checkout("today", tree, knows_field(tree, "tokenize_processes"))
    new = Checkout("new", REPO, knows_field(REPO, "tokenize_processes"))
    bench = Bench(args, model)
    bench.fixed = {c.name: fixed_cost(bench, c) for c in (today, new)}
    for size in args.sizes:
        one_size(bench, size, today, new)
        write_results(args, bench.rows)
        if not args.keep_runs:
            drop_runs(args.work, size)
    write_results(args, bench.rows)
    print(table(bench.rows))


def drop_runs(work: Path, size: int) -> None:
    """A measured size's local caches and output folders: a few GB at 3M rows, and no
    later size reads them (its logs and manifests stay)."""
    for folder in [*work.glob(f"cache-{size}-*"), *work.glob(f"out-{size}-*")]:
        shutil.rmtree(folder, ignore_errors=True)


def write_results(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    """Written after each size, so a long run that is stopped keeps what it measured."""
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)),
            "memoryBytes": psutil.virtual_memory().total,
            "python": platform.python_version(),
            "loadAverage": os.getloadavg(),
        },
        "baselineRef": args.baseline_ref,
        "baselineCommit": _git("rev-parse", f"{args.baseline_ref}^{{commit}}"),
        "newCommit": _git("rev-parse", "HEAD"),
        "newTreeDirty": bool(_git("status", "--porcelain", "--", *SOURCE_FOLDERS)),
        "settings": {
            "sizes": args.sizes,
            "seed": args.seed,
            "threads": args.threads,
            "baselineMaxRows": args.baseline_max_rows,
            "heldOutRows": HELD_OUT_ROWS,
            "maxSeqLength": 256,
        },
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
