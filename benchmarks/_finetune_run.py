"""``finetune run`` of one benchmark manifest in its own process, measured.

Shared by the benchmarks that compare methods or tasks run as a user runs them
(methods_vs_lora.py, contrastive.py, image_transfer.py): the manifest is written next to
its log, the run's stdout progress lines are kept, and ``os.wait4`` gives the process's
own peak RSS (exact, no sampling).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Finished:
    """What one run left: its exit code, its output folder and its measurements."""

    returncode: int
    out: Path
    log: Path
    steps: list[dict[str, Any]]
    """The trainer's JSON progress lines of event ``step``."""
    process_peak_rss_bytes: int
    wall_seconds: float

    @property
    def metrics(self) -> dict[str, Any]:
        """The published metrics.json (only after a successful run)."""
        loaded: dict[str, Any] = json.loads((self.out / "metrics.json").read_text())
        return loaded

    @property
    def loop_peak_bytes(self) -> int | None:
        """The training loop's peak memory as the trainer reported it."""
        return max((s.get("peakMemoryBytes") or 0 for s in self.steps), default=None)

    def stderr_tail(self) -> str:
        return self.log.read_text()[-2000:]


def run_finetune(
    name: str,
    manifest: dict[str, Any],
    work: Path,
    *,
    threads: int,
    output: str | None = None,
    env: dict[str, str] | None = None,
) -> Finished:
    """Write ``manifest`` as ``work/<name>.yaml`` and ``finetune run`` it into
    ``work/out-<name>`` (``output`` names that folder as a URI when given) with
    ``OMP_NUM_THREADS=threads``; stderr goes to ``work/<name>.log``. ``env`` adds or
    replaces environment variables of the run (a private cache directory, a PYTHONPATH
    that runs another checkout's sources with this virtual environment)."""
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    out = work / f"out-{name}"
    log = work / f"{name}.log"
    finetune = Path(sys.executable).parent / "finetune"
    variables = {**os.environ, "OMP_NUM_THREADS": str(threads), **(env or {})}
    started = time.perf_counter()
    with open(log, "w") as stderr:
        proc = subprocess.Popen(
            [str(finetune), "run", str(path), "--output", output or str(out)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=variables,
            cwd=REPO,
        )
        assert proc.stdout is not None
        lines = proc.stdout.read().splitlines()
        _, status, usage = os.wait4(proc.pid, 0)
    return Finished(
        returncode=os.waitstatus_to_exitcode(status),
        out=out,
        log=log,
        steps=[r for r in map(_json_line, lines) if r.get("event") == "step"],
        process_peak_rss_bytes=usage.ru_maxrss * 1024,  # KiB on Linux
        wall_seconds=time.perf_counter() - started,
    )


def _json_line(line: str) -> dict[str, Any]:
    """One progress line of the trainer's stdout (JSON objects; anything else is skipped)."""
    try:
        found = json.loads(line)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}
