"""Outputs: nothing written over an input, nothing outside its root, one writer at a
time, no debris and no private modes from publishing, and failures found before the
model loads, each with the exit code and words that point at the fix.

The contract's checks run on URIs alone (``finetune validate``); the trainer's again on
real paths, links resolved. The lease is tested across processes (``kill -9`` of the
holder frees it); its S3 form is in tests/integration/test_s3.py.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from finetune_api.config import TrainerConfig
from finetune_api.uri import ParsedUri, Role, UriError, overlap, parse_uri
from finetune_cli.app import app
from finetune_trainer import runner
from finetune_trainer.errors import ConfigError, StorageError
from finetune_trainer.publish import publish, verify_manifest
from finetune_trainer.recipe.setup import check_local_output, hold_output
from finetune_trainer.storage import store as store_module
from finetune_trainer.storage.backends import MANIFEST, fetch_file, open_store
from finetune_trainer.storage.local import PVC_ROOT_ENV, pvc_path
from finetune_trainer.storage.store import LEASE, PARTIAL, Holder, LocalStore, OutputBusy

REPO = Path(__file__).resolve().parents[2]


def config(output: str, model: str = "file://./model", **dataset: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "jobName": "outputs",
            "model": {"uri": model},
            "dataset": dataset or {"train": "file://./data/train.jsonl"},
            "method": {"type": "full"},
            "output": {"uri": output},
        }
    )


def job_yaml(path: Path, output: str, **spec: Any) -> Path:
    body = {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "outputs"},
        "spec": {
            "model": {"uri": "file://./models/tiny"},
            "dataset": {"train": "file://./data/train.jsonl"},
            "method": {"type": "full"},
            "output": {"uri": output},
            **spec,
        },
    }
    path.write_text(yaml.safe_dump(body))
    return path


def staged(root: Path) -> Path:
    """A small artifact set with a manifest, as stage_artifacts leaves it."""
    import hashlib

    files = {"model.safetensors": b"w" * 300, "sub/tokenizer.json": b'{"a": 1}'}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    entries = [
        {"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        for rel, data in sorted(files.items())
    ]
    (root / MANIFEST).write_text(json.dumps({"kind": "ArtifactManifest", "files": entries}))
    return root


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize(
    ("output", "other", "how"),
    [
        ("file://./models/tiny", "file://models/tiny/", "is the same place as"),
        ("file:///data/x/../models/tiny", "file:///data/models/tiny", "is the same place as"),
        ("file://models/tiny/out", "file://./models/tiny", "is inside"),
        ("file://data", "file://./data/train.jsonl", "contains"),
        ("pvc://claim/a", "pvc://claim/a/train.jsonl", "contains"),
        ("s3://bucket/models/x", "s3://bucket/models/x", "is the same place as"),
        ("s3://bucket/models", "s3://bucket/models/x/config.json", "contains"),
        ("s3://bucket/models/x-ft", "s3://bucket/models/x", None),
        ("s3://bucket/models/x", "s3://other-bucket/models/x", None),
        ("pvc://claim/a", "pvc://other/a", None),
        ("file:///abs/models", "file://models", None),  # the working directory decides
        ("s3://bucket/a", "hf://org/model", None),
        ("hf://org/model@candidate", "hf://org/model", "is the same place as"),
        ("hf://org/model", "hf://org", None),  # Hub repositories do not nest
        ("hf://org/data", "hf://datasets/org/data/train.jsonl", None),  # another repo type
    ],
)
def test_overlap_compares_places_segment_by_segment(output: str, other: str, how: str) -> None:
    assert overlap(output, other) == how


_SEGMENT = st.sampled_from(["a", "b", "models", "x", ".", "sub"])


@settings(max_examples=150, deadline=1000)
@given(
    scheme=st.sampled_from(["file:///", "file://", "pvc://claim/", "s3://bucket/"]),
    a=st.lists(_SEGMENT, min_size=1, max_size=4),
    b=st.lists(_SEGMENT, min_size=1, max_size=4),
)
def test_overlap_is_the_same_relation_seen_from_either_side(
    scheme: str, a: list[str], b: list[str]
) -> None:
    one, two = scheme + "/".join(a), scheme + "/".join(b)
    mirror = {"is inside": "contains", "contains": "is inside"}
    forward, backward = overlap(one, two), overlap(two, one)
    assert backward == mirror.get(forward or "", forward)
    # the same place whatever '.' segments and trailing slashes say
    assert overlap(one, one + "/.") == "is the same place as"


@pytest.mark.parametrize(
    ("output", "field"),
    [
        ("file://models/tiny/", "model.uri"),  # method full: the weights replaced
        ("file://./data", "dataset.train"),  # the user's files replaced
        ("file://models", "model.uri"),
    ],
)
def test_validate_refuses_an_output_over_an_input(tmp_path: Path, output: str, field: str) -> None:
    result = CliRunner().invoke(app, ["validate", str(job_yaml(tmp_path / "job.yaml", output))])
    assert result.exit_code == 2, result.output
    assert "spec.output.uri:" in result.output and field in result.output
    assert "Traceback" not in result.output


def test_every_input_field_is_compared_with_the_output() -> None:
    teacher = {"distillation": {"teacherUri": "s3://bucket/teacher"}}
    for spec, field in [
        (
            {"validation": "s3://bucket/out/val.jsonl", "train": "s3://bucket2/t.jsonl"},
            "validation",
        ),
        (
            {"mixture": [{"train": "s3://bucket2/t.jsonl"}, {"train": "s3://bucket/out/m.csv"}]},
            "[1]",
        ),
    ]:
        with pytest.raises(ValidationError, match=rf"output.uri: .*dataset\.\S*{re.escape(field)}"):
            config("s3://bucket/out", **spec)
    with pytest.raises(ValidationError, match=r"output.uri: .*teacherUri"):
        TrainerConfig.model_validate(
            {**config("s3://bucket/elsewhere").redacted(), "training": teacher}
            | {"output": {"uri": "s3://bucket/teacher/ft"}}
        )
    config("s3://bucket/elsewhere", train="s3://bucket/data/t.jsonl")  # apart: accepted


@pytest.mark.parametrize("uri", ["pvc://claim//etc/shadow", "pvc://claim/a//b", "pvc://c/../x"])
def test_the_contract_refuses_a_pvc_path_that_could_leave_its_claim(uri: str) -> None:
    for role in Role:
        with pytest.raises(UriError, match=r"'//'|'\.\.'"):
            parse_uri(uri + "/t.jsonl", role)


# --------------------------------------------------------------------------- paths


def test_a_pvc_path_cannot_leave_its_claim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PVC_ROOT_ENV, str(tmp_path / "pvc"))
    claim = tmp_path / "pvc" / "claim"
    claim.mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    (claim / "out").symlink_to(tmp_path)  # a link in the claim that leads out of it
    (claim / "inner").symlink_to(claim / "data")  # one that stays inside is fine
    inner = pvc_path(ParsedUri("pvc", "claim/inner/t.jsonl"))
    assert inner == Path(os.path.realpath(claim / "data" / "t.jsonl"))
    for location in ["claim//etc/passwd", "claim/../other", "claim/out/secret.txt"]:
        with pytest.raises(StorageError, match="claim") as caught:
            pvc_path(ParsedUri("pvc", location))
        assert caught.value.exit_code == 5


def test_a_missing_relative_file_names_the_directory_it_was_looked_for_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StorageError) as caught:
        fetch_file("file://data/train.jsonl", Role.DATASET)
    assert str(tmp_path / "data" / "train.jsonl") in str(caught.value)
    too_long = "n" * 300 + ".jsonl"  # ENAMETOOLONG: a storage error too, not a traceback
    with pytest.raises(StorageError, match=f"no such file \\({tmp_path}/n+"):
        fetch_file(f"file://{too_long}", Role.DATASET)


# --------------------------------------------------------------------------- preflight


def test_the_trainer_refuses_an_output_that_reaches_an_input_through_a_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "elsewhere").symlink_to(tmp_path / "model")  # the URIs alone cannot tell
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "t.jsonl").write_text("{}\n")
    (tmp_path / "data-link").symlink_to(tmp_path / "data")
    cases = [
        ("file://elsewhere", "model.uri", "is"),
        (f"file://{tmp_path}/elsewhere/ft", "model.uri", "is inside"),
        ("file://data-link", "dataset.train", "contains"),
    ]
    for output, field, how in cases:
        cfg = config(output, train="file://data/t.jsonl")
        with pytest.raises(ConfigError, match=rf"^output.uri: .* {how} {field}") as caught:
            check_local_output(cfg, Path(os.path.realpath(output.removeprefix("file://"))))
        assert caught.value.exit_code == 2
    check_local_output(config("file://out", train="file://data/t.jsonl"), tmp_path / "out")


def test_an_output_that_is_a_file_or_cannot_be_written_fails_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    loaded: list[str] = []
    monkeypatch.setattr(runner, "fine_tune", lambda *a, **k: loaded.append("model"))
    (tmp_path / "a-file").write_text("x")
    for output, words in [
        ("file://a-file", "is a file"),
        ("file://" + "n" * 300, "File name too long"),
        ("file://a-file/sub", "Not a directory"),
    ]:
        with pytest.raises(StorageError, match=words) as caught:
            runner.run_training(config(output))
        assert caught.value.exit_code == 5 and "output.uri" in str(caught.value)
    assert loaded == []


def test_a_read_only_output_fails_before_the_model_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read-only as a read-only mount answers (root ignores a directory's mode bits, so
    the answer is put in the probe's mouth)."""
    monkeypatch.chdir(tmp_path)
    loaded: list[str] = []
    monkeypatch.setattr(runner, "fine_tune", lambda *a, **k: loaded.append("model"))

    def read_only(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr("tempfile.TemporaryFile", read_only)
    with pytest.raises(StorageError, match=r"output.uri: .*cannot write in .*Read-only") as caught:
        runner.run_training(config("file://out"))
    assert caught.value.exit_code == 5 and loaded == []


# --------------------------------------------------------------------------- the lease

_HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from finetune_trainer.storage.store import Holder, LocalStore
    store = LocalStore("file://out", Path(sys.argv[1]))
    with store.lease(Holder(sys.argv[2])):
        print("held", flush=True)
        time.sleep(60)
    """
)


def hold_in_another_process(root: Path, run: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(root), run], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_run_on_a_held_output_fails_naming_the_holder_and_kill_9_frees_it(
    tmp_path: Path,
) -> None:
    store = LocalStore("file://out", tmp_path / "out")
    holder = hold_in_another_process(tmp_path / "out", "run-a")
    try:
        busy = pytest.raises(OutputBusy, match=r"file://out: another run .*run run-a")
        with busy as caught, store.lease(Holder("run-b")):
            pass
        assert caught.value.exit_code == 5
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with store.lease(Holder("run-b")):  # the kernel let go with the process
        assert json.loads((tmp_path / "out" / LEASE).read_text())["run"] == "run-b"
    assert not (tmp_path / "out" / LEASE).exists()


def test_the_same_run_restarted_waits_for_its_predecessor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store_module, "LEASE_POLL_SECONDS", 0.05)
    holder = hold_in_another_process(tmp_path / "out", "job-uid")
    try:
        # the predecessor (still saving its checkpoint) ends a moment later
        subprocess.Popen(["sh", "-c", f"sleep 0.5; kill -9 {holder.pid}"])
        started = time.monotonic()
        with LocalStore("file://out", tmp_path / "out").lease(Holder("job-uid")):
            waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    assert 0.3 < waited < 10


def test_the_run_holds_its_output_and_lets_go_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FINETUNE_RUN_ID", "uid-1")
    with hold_output(config("file://out")):
        lease = json.loads((tmp_path / "out" / LEASE).read_text())
        assert lease["run"] == "uid-1"
        monkeypatch.setenv("FINETUNE_RUN_ID", "uid-2")
        with pytest.raises(OutputBusy, match="run uid-1"), hold_output(config("file://out")):
            pass
    assert not (tmp_path / "out" / LEASE).exists()


# --------------------------------------------------------------------------- publishing

_KILLED_PUBLISH = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from finetune_trainer.storage import store
    from finetune_trainer.publish import publish
    def killed(src, dst):  # the rename a SIGKILL never lets happen
        os.kill(os.getpid(), signal.SIGKILL)
    store.os.replace = killed
    publish(Path(sys.argv[1]), "file://" + sys.argv[2])
    """
)


def test_a_publish_killed_midway_leaves_nothing_a_republish_does_not_clear(
    tmp_path: Path,
) -> None:
    staging, target = staged(tmp_path / "staging"), tmp_path / "out"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_PUBLISH, str(staging), str(target)], check=False
    )
    assert killed.returncode == -signal.SIGKILL
    debris = [p for p in target.rglob("*") if p.is_file()]
    assert debris and all(PARTIAL in p.relative_to(target).parts for p in debris)
    assert verify_manifest(target) != []  # no manifest: incomplete, and said so

    with open_store(f"file://{target}").lease(Holder("rerun")):
        publish(staging, f"file://{target}")
    assert verify_manifest(target) == []
    assert not (target / PARTIAL).exists()
    result = CliRunner().invoke(app, ["verify", str(target)])
    assert result.exit_code == 0, result.output


def test_verify_reports_debris_it_does_not_vouch_for(tmp_path: Path) -> None:
    target = tmp_path / "out"
    publish(staged(tmp_path / "staging"), f"file://{target}")
    (target / PARTIAL).mkdir()
    (target / PARTIAL / "model.safetensors.0123").write_bytes(b"half")
    assert verify_manifest(target) == [
        f"{PARTIAL}/model.safetensors.0123: not listed in the manifest"
    ]


def test_published_and_checkpointed_files_are_readable_by_others(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        target = tmp_path / "out"
        publish(staged(tmp_path / "staging"), f"file://{target}")
        (tmp_path / "ckpt.pt").write_bytes(b"state")
        LocalStore("file://out", target).put_file(tmp_path / "ckpt.pt", "checkpoints/step-1/x.pt")
    finally:
        os.umask(old)
    for path in target.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "no list of files"),
        (b'{"files": [{"path": "a"}]}', r"files\[0\] is not a path, size and sha256"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_a_damaged_manifest_is_reported_not_a_traceback(
    tmp_path: Path, content: bytes, words: str
) -> None:
    target = tmp_path / "out"
    publish(staged(tmp_path / "staging"), f"file://{target}")
    (target / MANIFEST).write_bytes(content)
    result = CliRunner().invoke(app, ["verify", str(target)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert f"{MANIFEST}: damaged" in result.output
    assert re.search(words, result.output), result.output
