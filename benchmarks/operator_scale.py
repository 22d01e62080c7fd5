#!/usr/bin/env python
"""Operator at scale: N FineTuneJobs against the kmock emulator (issue 9).

For each size N (default 100 and 1,000) this starts a fresh emulated API server
(tests/kube_api.py, in this process) and the real operator as a separate process
(``finetune operator -n bench``, logging in through a kubeconfig, as outside a cluster),
creates N valid FineTuneJobs as fast as the API takes them, and measures:

- latency from each FineTuneJob's creation to its batch/v1 Job's creation (p50, p99, max),
  both timestamped inside the emulator when the POST is answered (one clock);
- throughput (Jobs created per second over the burst);
- the operator's peak memory: RSS sampled every 50 ms with psutil, and ``VmHWM`` from
  ``/proc/<pid>/status`` at the end (the kernel's own high-water mark);
- API requests the operator made per FineTuneJob, by verb and resource: in the creation
  phase (first FineTuneJob until the operator has been quiet for ``--quiet`` seconds) and in
  a steady-state window of ``--idle`` seconds after that (requests per job per minute);
- the emulator's own time per request (so its cost can be told apart from the operator's)
  and the operator's CPU seconds.

Not a timed test: run it by hand, benchmarks/README.md's "Operator at scale" section has the command
and the last results. Writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import kube_api  # noqa: E402  (test scaffolding: the emulator)

NS = "bench"
BENCH_AGENT = "python-urllib3"  # the benchmark's own client (tests/kube_api.Kube)
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------- recording


class Recorder:
    """Every request the emulator answers: when, who, what, and how long it took."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[float, bool, str, float]] = []  # t, by operator, what, secs
        self.ftj_created: dict[str, float] = {}
        self.job_created: dict[str, float] = {}

    def record(self, request: Any, started: float, ended: float, ok: bool) -> None:
        agent = (request.headers or {}).get("User-Agent", "")
        by_operator = BENCH_AGENT not in agent
        resource = request.resource
        plural = getattr(resource, "plural", None) or "-"
        action = str(getattr(request.action, "value", request.action) or request.method).lower()
        if action == "watch":  # a stream: answered when it closes; count it when it opens
            ended = started
        what = f"{action} {plural}" + (f"/{request.subresource}" if request.subresource else "")
        with self.lock:
            self.requests.append((ended, by_operator, what, ended - started))
            if ok and action == "create" and isinstance(request.data, dict):
                name = request.data.get("metadata", {}).get("name", "")
                if plural == "finetunejobs":
                    self.ftj_created[name] = ended
                elif plural == "jobs":
                    self.job_created[name] = ended

    def last_operator_request(self) -> float:
        with self.lock:
            return max((t for t, op, _, _ in self.requests if op), default=0.0)


RECORDER = Recorder()
_original_handle = kube_api.Emulator._handle


async def _timed_handle(self: Any, request: Any) -> Any:
    started = time.monotonic()
    ok = False
    try:
        response = await _original_handle(self, request)
        ok = getattr(response, "status", 500) < 400
        return response
    finally:
        RECORDER.record(request, started, time.monotonic(), ok)
        _forget(self, request)


def _forget(emulator: Any, request: Any) -> None:
    """Drop an answered request from kmock's request log.

    kmock keeps every request for assertions and routes each new one by scanning that whole
    log (``request in payload._source`` filters every past request, oldest first), so each
    request costs O(requests so far): 15,000 requests for 1,000 jobs would take hours.
    The benchmark asserts nothing on the log, so it keeps only requests in flight (open
    watches included); the API semantics are untouched.
    """
    log = emulator._requests
    for index in range(len(log) - 1, -1, -1):
        if log[index] is request:
            del log[index]
            return


async def _no_garbage(self: Any) -> None:
    """The emulator scans every stored object for orphans after each write (O(objects) per
    PATCH); the benchmark deletes nothing, so there is never anything to collect."""


kube_api.Emulator._handle = _timed_handle  # type: ignore[method-assign]
kube_api.Emulator._collect_garbage = _no_garbage  # type: ignore[method-assign]


# --------------------------------------------------------------------------- helpers


def finetunejob(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "dataset": {"train": "s3://data-bucket/chat/train.jsonl"},
            "output": {"uri": f"s3://artifacts-bucket/adapters/{name}"},
            "training": {"maxSteps": 100},
        },
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class MemorySampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(self.interval)


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def by_kind(entries: list[tuple[float, bool, str, float]], jobs: int) -> dict[str, float]:
    counts = collections.Counter(what for _, _, what, _ in entries)
    return {what: round(n / jobs, 3) for what, n in sorted(counts.items())}


# --------------------------------------------------------------------------- one run


def run_size(jobs: int, idle: float, quiet: float, rate: float, workdir: Path) -> dict[str, Any]:
    global RECORDER
    RECORDER = Recorder()
    with kube_api.serve_kube() as kube:
        kubeconfig = kube.write_kubeconfig(workdir / "kubeconfig", NS, "bench")
        metrics_port = kube_api.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBERNETES_"))}
        env.update(
            KUBECONFIG=str(kubeconfig),
            FINETUNE_TRAINER_IMAGE="registry.example/finetune-trainer:bench",
            FINETUNE_METRICS_PORT=str(metrics_port),
            FINETUNE_HEALTH_PORT=str(kube_api.free_port()),
            PYTHONUNBUFFERED="1",
        )
        log_path = workdir / f"operator-{jobs}.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    *_operator_command(workdir / f"operator-{jobs}.prof"),
                    "operator",
                    "-n",
                    NS,
                    "--liveness",
                    f"http://127.0.0.1:{kube_api.free_port()}/healthz",
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        sampler = MemorySampler(proc.pid)
        sampler.start()
        try:
            return _measure(kube, proc, sampler, metrics_port, jobs, idle, quiet, rate, log_path)
        finally:
            sampler.stopped.set()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


def _operator_command(profile: Path) -> list[str]:
    """``finetune``, or under cProfile with ``BENCH_PROFILE=1`` (stats written to ``profile``
    when the operator stops; read them with ``python -m pstats``)."""
    if os.environ.get("BENCH_PROFILE"):
        return [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "finetune_cli.app"]
    return [str(BIN / "finetune")]


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the operator exited:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("the operator was not ready within 60 s")


def _measure(
    kube: kube_api.Kube,
    proc: subprocess.Popen[bytes],
    sampler: MemorySampler,
    metrics_port: int,
    jobs: int,
    idle: float,
    quiet: float,
    rate: float,
    log_path: Path,
) -> dict[str, Any]:
    _wait_ready(proc, metrics_port, log_path)
    time.sleep(1.0)  # let kopf's watches settle
    assert kube._thread is not None and kube._thread.native_id is not None
    emulator_tid = kube._thread.native_id  # the emulator's event loop runs in this thread

    def emulator_cpu() -> float:
        for thread in psutil.Process().threads():
            if thread.id == emulator_tid:
                return float(thread.user_time + thread.system_time)
        return 0.0

    emu_before = emulator_cpu()
    ps = psutil.Process(proc.pid)
    rss_idle = ps.memory_info().rss
    cpu_before = ps.cpu_times()
    load_before = os.getloadavg()

    names = [f"ftj-{i:05d}" for i in range(jobs)]
    started = time.monotonic()
    for index, name in enumerate(names):
        if rate > 0:
            time.sleep(max(0.0, started + index / rate - time.monotonic()))
        kube.create(finetunejob(name))
    created_all = time.monotonic()

    deadline = created_all + max(120.0, jobs * 0.5)
    while len(RECORDER.job_created) < jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    all_jobs_at = time.monotonic()
    # the creation phase ends when the operator has been quiet for `quiet` seconds
    while time.monotonic() - RECORDER.last_operator_request() < quiet:
        time.sleep(0.1)
    creation_end = RECORDER.last_operator_request()
    cpu_creation = ps.cpu_times()
    emu_creation = emulator_cpu()
    time.sleep(idle)
    steady_end = time.monotonic()
    cpu_after = ps.cpu_times()
    load_after = os.getloadavg()
    hwm = vm_hwm(proc.pid)
    rss_end = ps.memory_info().rss

    with RECORDER.lock:
        requests = list(RECORDER.requests)
        ftj_created = dict(RECORDER.ftj_created)
        job_created = dict(RECORDER.job_created)
    operator = [r for r in requests if r[1]]
    creation = [r for r in operator if started <= r[0] <= creation_end + 1e-6]
    steady = [r for r in operator if creation_end + 1e-6 < r[0] <= steady_end]
    latencies = [job_created[n] - ftj_created[n] for n in names if n in job_created]
    done = [job_created[n] for n in names if n in job_created]
    handled = [r for r in requests if not r[2].startswith("watch")]
    emulator_by_what: dict[str, list[float]] = collections.defaultdict(list)
    for _, _, what, secs in handled:
        emulator_by_what[what].append(secs)

    def cpu(a: Any, b: Any) -> float:
        return round((b.user + b.system) - (a.user + a.system), 2)

    minutes = (steady_end - creation_end) / 60
    return {
        "jobs": jobs,
        "jobs_created": len(latencies),
        "paced_rate_per_second": rate or None,
        "create_burst_seconds": round(created_all - started, 3),
        "create_rate_per_second": round(jobs / (created_all - started), 1),
        "latency_seconds": {
            "p50": round(percentile(latencies, 50), 4),
            "p90": round(percentile(latencies, 90), 4),
            "p99": round(percentile(latencies, 99), 4),
            "max": round(max(latencies, default=float("nan")), 4),
            "mean": round(statistics.fmean(latencies), 4) if latencies else None,
        },
        "p99_by_tenth_seconds": [  # in creation order: does latency grow as jobs pile up?
            round(
                percentile(
                    latencies[i * len(latencies) // 10 : (i + 1) * len(latencies) // 10], 99
                ),
                3,
            )
            for i in range(10)
        ],
        "throughput_jobs_per_second": round(len(done) / (max(done) - started), 1) if done else 0,
        "last_job_after_seconds": round(max(done) - started, 3) if done else None,
        "waited_for_all_jobs_seconds": round(all_jobs_at - started, 3),
        "operator_memory_mb": {
            "idle_rss": round(rss_idle / 2**20, 1),
            "peak_rss_sampled": round(sampler.peak / 2**20, 1),
            "vm_hwm": round(hwm / 2**20, 1),
            "end_rss": round(rss_end / 2**20, 1),
        },
        "operator_cpu_seconds": {
            "creation_phase": cpu(cpu_before, cpu_creation),
            "steady_window": cpu(cpu_creation, cpu_after),
        },
        "requests_per_job": {
            "creation_phase": round(len(creation) / jobs, 2),
            "creation_phase_by_kind": by_kind(creation, jobs),
            "steady_per_minute": round(len(steady) / jobs / minutes, 3) if minutes else None,
            "steady_by_kind_per_minute": {
                k: round(v / minutes, 3) for k, v in by_kind(steady, jobs).items()
            },
            "steady_window_seconds": round(steady_end - creation_end, 1),
        },
        "emulator_request_seconds": {
            what: {
                "count": len(secs),
                "p50": round(percentile(secs, 50), 5),
                "p99": round(percentile(secs, 99), 5),
            }
            for what, secs in sorted(emulator_by_what.items())
            if len(secs) >= 10
        },
        "emulator_cpu_seconds_creation_phase": round(emu_creation - emu_before, 2),
        "creation_phase_seconds": round(creation_end - started, 2),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--idle", type=float, default=30.0, help="steady-state window, s")
    parser.add_argument("--quiet", type=float, default=3.0, help="quiet that ends creation, s")
    parser.add_argument("--rate", type=float, default=0, help="create at most R jobs/s; 0: burst")
    parser.add_argument("--log-dir", type=Path, help="keep the operator's logs here")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/operator_scale.json")
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory(prefix="operator-scale-") as tmp:
        for jobs in args.jobs:
            print(f"--- {jobs} FineTuneJobs", flush=True)
            logs = args.log_dir or Path(tmp)
            logs.mkdir(parents=True, exist_ok=True)
            result = run_size(jobs, args.idle, args.quiet, args.rate, logs)
            print(json.dumps(result, indent=2), flush=True)
            results.append(result)
    report = {
        "benchmark": "operator_scale",
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": sys.version.split()[0],
        },
        "operator": "separate process: finetune operator -n bench (kubeconfig login)",
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
