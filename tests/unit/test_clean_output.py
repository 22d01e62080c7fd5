"""What `finetune run` puts on the screen and the disk, without a training run: log lines
as key=value, log lines and the bar sharing a terminal, the bar's width, where /metrics
is served locally and in a pod, and where the tokenization cache goes."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import pty
import re
import socket
import struct
import sys
import termios
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import pytest
from typer.testing import CliRunner

from finetune_api.manifests import check_documents
from finetune_api.render import render_trainer_config
from finetune_cli.app import app
from finetune_trainer import runner as trainer_runner
from finetune_trainer.data import cache as data_cache
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.logs import BAR_WIDTH, bar_width, kv, stderr_handler
from finetune_trainer.recipe.setup import ProgressBar
from finetune_trainer.runner import RunResult
from finetune_trainer.state import StepReport
from finetune_trainer.storage.cache import CACHE_DIR_ENV, cache_root
from finetune_trainer.telemetry import Telemetry

# --------------------------------------------------------------------------- kv


def test_kv_writes_pairs_in_order_and_quotes_what_needs_it() -> None:
    line = kv(
        rows=12,
        uri="file:///data/train.jsonl",
        when="before training",
        loss=0.123456789,
        big=1234567.0,
        ok=True,
        missing=None,
        empty="",
        quote='say "hi"',
        eq="a=b",
        nan=float("nan"),
    )
    assert line == (
        "rows=12 uri=file:///data/train.jsonl "
        'when="before training" loss=0.123457 big=1.23457e+06 ok=true missing=null '
        'empty="" quote="say \\"hi\\"" eq="a=b" nan=nan'
    )
    assert kv() == ""


def test_kv_values_parse_back() -> None:
    """Every value reads back: bare tokens as they are, quoted ones as JSON strings."""
    fields = {"a": "two words", "b": 'q"uote', "c": "tab\there", "d": "x"}
    pairs = re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', kv(**fields))
    parsed = {k: json.loads(v) if v.startswith('"') else v for k, v in pairs}
    assert parsed == fields


# --------------------------------------------------------------------------- terminal


@contextmanager
def terminal(columns: int) -> Iterator[tuple[TextIO, Callable[[], str]]]:
    """A pseudo-terminal ``columns`` wide: its slave as a text stream, and a function
    that returns what was written to it so far."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    stream = os.fdopen(slave, "w", buffering=1)
    os.set_blocking(master, False)
    seen: list[bytes] = []

    def read() -> str:
        stream.flush()
        while True:
            try:
                chunk = os.read(master, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            seen.append(chunk)
        return b"".join(seen).decode()

    try:
        yield stream, read
    finally:
        stream.close()
        os.close(master)


def segments(text: str) -> list[str]:
    """What a terminal shows line by line: the text split at every CR and LF."""
    return [s for s in re.split(r"[\r\n]", text) if s.strip()]


def step(n: int, total: int) -> StepReport:
    return StepReport(n, total, n / total, 1.5, 1e-3, 250.0, 1.0, None, 8 * n)


@pytest.mark.parametrize(("columns", "width"), [(0, BAR_WIDTH), (57, 57), (132, 132)])
def test_bar_width_is_the_terminal_s_or_a_fixed_one_for_zero_columns(
    columns: int, width: int
) -> None:
    with terminal(columns) as (stream, _):
        assert bar_width(stream) == width


def test_no_terminal_no_width() -> None:
    assert bar_width(io.StringIO()) is None


@pytest.mark.parametrize("columns", [0, 120])
def test_the_bar_is_drawn_on_a_terminal_of_any_width(
    columns: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    with terminal(columns) as (stream, read):
        monkeypatch.setattr(sys, "stderr", stream)
        bar = ProgressBar(3)
        for n in (1, 2, 3):
            bar(step(n, 3))
        bar.close()
        shown = read()
    final = [s for s in segments(shown) if "3/3" in s][-1]
    assert final.startswith("training: 100%|") and final.endswith("]"), shown
    if columns:
        assert len(final) <= columns, final
    else:  # no columns reported: a fixed width, the numbers whole
        assert len(final) == BAR_WIDTH, final


def test_log_lines_never_land_inside_the_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    log = logging.getLogger("finetune.test-clean-output")
    log.propagate = False
    log.setLevel(logging.INFO)
    handler = stderr_handler()
    log.addHandler(handler)
    try:
        with terminal(100) as (stream, read):
            monkeypatch.setattr(sys, "stderr", stream)
            bar = ProgressBar(4)
            for n in (1, 2, 3, 4):
                bar(step(n, 4))
                log.info("checkpoint %s", kv(step=n))
            bar.close()
            shown = read()
    finally:
        log.removeHandler(handler)
    lines = segments(shown)
    logged = [s for s in lines if "checkpoint step=" in s]
    assert len(logged) == 4, shown
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d checkpoint step=\d", s) for s in logged), logged
    assert any(s.startswith("training: 100%|") for s in lines), shown


# --------------------------------------------------------------------------- /metrics


runner = CliRunner()


def free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


class FakeTraining:
    """Stands in for run_training: records where the telemetry serves, and scrapes it."""

    def __init__(self) -> None:
        self.url: str | None = None
        self.port: int | None = None
        self.scraped = ""

    def __call__(self, config: Any, telemetry: Telemetry) -> RunResult:
        self.url, self.port = telemetry.url, telemetry.port
        if self.port is not None:
            address = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(address, timeout=5) as response:
                self.scraped = response.read().decode()
        metrics = {"steps": 1, "trainSeconds": 1.0, "tokensPerSecond": 10.0}
        return RunResult(config.output.uri, metrics)


@pytest.fixture
def fake_training(monkeypatch: pytest.MonkeyPatch) -> FakeTraining:
    fake = FakeTraining()
    monkeypatch.setattr(trainer_runner, "run_training", fake)
    return fake


def test_a_local_run_serves_metrics_on_localhost_at_a_free_port(
    make_job: Callable[..., Path], fake_training: FakeTraining
) -> None:
    result = runner.invoke(app, ["run", str(make_job())], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    port = fake_training.port
    assert port is not None and port != 9090
    assert fake_training.url == f"http://127.0.0.1:{port}/metrics"
    assert "finetune_trainer_step" in fake_training.scraped
    assert f"metrics: http://127.0.0.1:{port}/metrics" in result.stderr
    # Human lines, the summary included, are all on stderr.
    assert "trained 1 steps" in result.stderr
    assert result.stdout == ""


def test_a_local_run_honours_a_port_the_manifest_sets(
    make_job: Callable[..., Path], fake_training: FakeTraining
) -> None:
    port = free_port()
    job = make_job(training={"metricsPort": port})

    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert fake_training.url == f"http://127.0.0.1:{port}/metrics"
    assert "finetune_trainer_step" in fake_training.scraped
    assert f"metrics: http://127.0.0.1:{port}/metrics" in result.stderr


def test_metrics_port_zero_still_turns_metrics_off_locally(
    make_job: Callable[..., Path], fake_training: FakeTraining
) -> None:
    result = runner.invoke(
        app, ["run", str(make_job(training={"metricsPort": 0}))], catch_exceptions=False
    )

    assert result.exit_code == 0, result.output
    assert (fake_training.port, fake_training.url) == (None, None)
    assert "metrics:" not in result.output


def test_a_pod_serves_on_every_interface_at_the_configured_port(
    make_job: Callable[..., Path], fake_training: FakeTraining, tmp_path: Path
) -> None:
    port = free_port()
    job = make_job(training={"metricsPort": port})
    [doc] = check_documents(job.read_text(), str(job))
    assert doc.job is not None
    config = tmp_path / "trainer.json"
    config.write_text(render_trainer_config(doc.job).to_json())

    result = runner.invoke(
        app,
        ["train", "--config", str(config), "--termination-log", str(tmp_path / "log")],
        catch_exceptions=False,
    )

    assert result.exit_code == 0, result.output
    assert fake_training.url == f"http://0.0.0.0:{port}/metrics"
    assert "finetune_trainer_step" in fake_training.scraped
    assert "metrics:" not in result.output


# --------------------------------------------------------------------------- cache


def test_the_cache_dir_is_the_variable_s_then_xdg_then_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "explicit"

    monkeypatch.delenv(CACHE_DIR_ENV)
    assert cache_root() == tmp_path / "xdg" / "finetune-operator"

    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # not absolute: ignored (XDG)
    assert cache_root() == tmp_path / "home" / ".cache" / "finetune-operator"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "finetune-operator"


def test_tokenized_data_is_cached_under_xdg_never_beside_the_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    data.mkdir()
    train = data / "train.jsonl"
    train.write_text("{}\n")
    examples = [TokenizedExample([1, 2, 3], [-100, 2, 3]), TokenizedExample([4], [4])]

    entry = data_cache.store(train, "k" * 64, examples)

    assert entry is not None
    assert entry.parent == tmp_path / "xdg" / "finetune-operator" / "tokenized"
    assert [p.name for p in data.iterdir()] == ["train.jsonl"]
    assert data_cache.load(train, "k" * 64, expected=2) == examples
