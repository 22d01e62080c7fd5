"""`finetune run` as a person runs it, in a real process on the tiny random Llama:
stdout redirected is JSONL line by line with every human line on stderr, and in a
pseudo-terminal the bar stays whole, log lines beside it, however wide the terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from finetune_trainer.logs import BAR_WIDTH

TIMEOUT = 300
# Four steps and a checkpoint every two, so that log lines are written while the bar
# is on the screen.
SMALL_RUN = {
    "training": {"maxSteps": 4},
    "evaluation": {"exactMatchSamples": 2, "maxNewTokens": 2},
    "output": {"checkpointEvery": 2},
}
TIMESTAMP = re.compile(r"\d\d:\d\d:\d\d ")


def finetune(*args: str) -> list[str]:
    return [sys.executable, "-m", "finetune_cli.app", *args]


def environment() -> dict[str, str]:
    """This process's environment (with conftest's private cache), without a width
    override: the terminal's own size is what is tested."""
    return {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}


@pytest.mark.slow
def test_redirected_stdout_is_jsonl_and_the_rest_goes_to_stderr(
    make_job: Callable[..., Path],
) -> None:
    job = make_job(**SMALL_RUN)

    done = subprocess.run(
        finetune("run", str(job)),
        capture_output=True,
        text=True,
        env=environment(),
        timeout=TIMEOUT,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith("\n")
    lines = [json.loads(line) for line in done.stdout.splitlines()]  # each line is JSON
    assert all(isinstance(line, dict) and "event" in line for line in lines)
    assert [line["step"] for line in lines if line["event"] == "step"] == [1, 2, 3, 4]
    # The summary, the metrics address and the log lines are for a person: stderr.
    assert "held-out exact match: base model" in done.stderr
    assert "trained 4 steps" in done.stderr
    assert re.search(r"metrics: http://127\.0\.0\.1:\d+/metrics", done.stderr)
    # Log lines are key=value, not Python reprs.
    assert re.search(r"^\d\d:\d\d:\d\d data rowsRead=\d+ ", done.stderr, re.MULTILINE)
    assert "{'" not in done.stderr, done.stderr


def run_in_terminal(args: list[str], columns: int) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal ``columns`` wide; its
    exit code and everything it wrote there."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=environment()
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the process and its children closed the terminal
                    break
                if not chunk:
                    break
                chunks.append(chunk)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
@pytest.mark.parametrize("columns", [120, 0], ids=["120-columns", "0-columns"])
def test_in_a_terminal_the_bar_stays_whole_beside_the_log_lines(
    make_job: Callable[..., Path], columns: int
) -> None:
    job = make_job(**SMALL_RUN)

    code, shown = run_in_terminal(finetune("run", str(job)), columns)

    assert code == 0, shown
    # What the terminal shows, line by line (the terminal turns each \n into \r\n).
    parts = [p for p in re.split(r"[\r\n]", shown) if p.strip()]
    bars = [p for p in parts if p.startswith("training:")]
    logged = [p for p in parts if " checkpoint " in p or " published " in p]
    assert sum(" checkpoint " in p for p in logged) >= 2, shown
    # Every log line stands alone; no bar segment carries one (`tok_s=252]17:51:24 ...`).
    assert all(TIMESTAMP.match(p) for p in logged), logged
    assert not any(TIMESTAMP.search(p) for p in bars), bars
    final = [p for p in bars if "4/4" in p]
    assert final and final[-1].startswith("training: 100%|"), shown
    assert final[-1].endswith("]"), final[-1]  # not cut short
    # Within the terminal, or a fixed width when the terminal says it has no columns.
    if columns:
        assert len(final[-1]) <= columns, final[-1]
    else:
        assert len(final[-1]) == BAR_WIDTH, final[-1]
    assert "held-out exact match: base model" in shown
