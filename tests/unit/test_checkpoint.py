"""Checkpoint files, their manifest, the run's identity (configuration and content),
choosing one to resume from, every way a checkpoint can be wrong, pruning, and SIGTERM."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_api.config import TrainerConfig
from finetune_api.outcome import ExitCode
from finetune_trainer import checkpoint
from finetune_trainer.data.prepare import PreparedData
from finetune_trainer.data.tokenize import TokenizedExample
from finetune_trainer.errors import Preempted, StorageError
from finetune_trainer.loop import Checkpointable, LoopState
from finetune_trainer.outcome import failed
from finetune_trainer.preemption import handle_sigterm
from finetune_trainer.storage.store import MANIFEST, LocalStore


def identity(config: TrainerConfig, **content: str) -> checkpoint.Identity:
    """A run's identity with stand-in content digests (the real ones are tested below)."""
    parts = {"modelContent": "m1", "trainContent": "t1", "validationContent": "v1", **content}
    return {**checkpoint.fingerprint(config), **parts}


def save(
    store: LocalStore,
    cp: Checkpointable,
    accelerator: Any,
    cfg: TrainerConfig | None = None,
    **content: str,
) -> None:
    cfg = cfg or config()
    checkpoint.save(
        store, cp, config=cfg, identity=identity(cfg, **content), accelerator=accelerator
    )


def config(**training: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "jobName": "ckpt",
            "model": {"uri": "file:///models/tiny"},
            "dataset": {"train": "file:///data/train.jsonl"},
            "training": {"maxSteps": 10, **training},
            "output": {"uri": "file:///out", "keepCheckpoints": 2},
        }
    )


@pytest.fixture
def accelerator() -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(cpu=True)


def live(step: int) -> Checkpointable:
    torch.manual_seed(step)
    model = torch.nn.Linear(4, 2)
    model.bias.requires_grad_(False)
    optimizer = torch.optim.AdamW([model.weight], lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    scheduler.step()
    state = LoopState(
        step=step,
        tokens=100 * step,
        samples=8 * step,
        seconds=1.5,
        history=[{"step": 1, "loss": 2.0}],
        eval_history=[],
        carry={"before": {"evalLossBefore": 3.0}},
    )
    return Checkpointable(state, model, optimizer, scheduler, None, None, end_of_epoch=False)


def test_save_then_load_round_trips_every_part(tmp_path: Path, accelerator: Any) -> None:
    store = LocalStore("file://out", tmp_path)
    cp = live(4)
    save(store, cp, accelerator)

    manifest = json.loads((tmp_path / "checkpoints/step-4" / MANIFEST).read_text())
    assert {f["path"] for f in manifest["files"]} == {
        "trainable.safetensors", "optimizer.pt", "scheduler.pt", "state.json", "rng/rank-0.pt",
    }  # fmt: skip
    assert manifest["fingerprint"] == identity(config())

    expected = [random.random(), torch.rand(3).tolist()]  # what follows the saved RNG state
    random.seed(123)
    torch.manual_seed(123)
    resume = checkpoint.load(store, 4, rank=0)
    resume.restore_rng()
    assert [random.random(), torch.rand(3).tolist()] == expected

    assert resume.state.step == 4 and resume.state.tokens == 400
    assert resume.state.carry == {"before": {"evalLossBefore": 3.0}}
    assert set(resume.trainable) == {"weight"}  # only what requires a gradient
    assert torch.equal(resume.trainable["weight"], cp.model.weight.detach())
    exp_avg = resume.optimizer["state"][0]["exp_avg"]
    assert torch.equal(exp_avg, cp.optimizer.state_dict()["state"][0]["exp_avg"])
    assert resume.scheduler["last_epoch"] == 1


def test_the_newest_complete_checkpoint_is_chosen(tmp_path: Path, accelerator: Any) -> None:
    store = LocalStore("file://out", tmp_path)
    for step in (2, 4):
        save(store, live(step), accelerator)
    # step 6 was being written when the pod was killed: no manifest, so it does not exist.
    (tmp_path / "checkpoints/step-6").mkdir()
    (tmp_path / "checkpoints/step-6/trainable.safetensors").write_bytes(b"partial")

    assert checkpoint.latest_usable(store, identity(config()), tmp_path) == 4


def test_a_checkpoint_of_another_configuration_is_not_resumed(
    tmp_path: Path, accelerator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalStore("file://out", tmp_path)
    save(store, live(4), accelerator, config(learningRate=1e-3))

    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        found = checkpoint.latest_usable(store, identity(config()), tmp_path)
    assert found is None
    assert "other inputs (changed: configuration section training)" in caplog.text

    # The metrics port and evaluation settings do not make a checkpoint foreign.
    same = checkpoint.fingerprint(config(metricsPort=0))
    assert checkpoint.fingerprint(config()) == same

    # This run's first checkpoint removes the foreign one.
    save(store, live(2), accelerator)
    assert sorted(checkpoint.complete_checkpoints(store)) == [2]


def test_older_checkpoints_beyond_keep_and_debris_are_removed(
    tmp_path: Path, accelerator: Any
) -> None:
    store = LocalStore("file://out", tmp_path)
    (tmp_path / "checkpoints/step-1").mkdir(parents=True)
    (tmp_path / "checkpoints/step-1/optimizer.pt").write_bytes(b"debris of a killed save")
    for step in (2, 4, 6):
        save(store, live(step), accelerator)
    assert sorted(checkpoint.complete_checkpoints(store)) == [4, 6]
    assert not (tmp_path / "checkpoints/step-1").exists()


def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path: Path, accelerator: Any) -> None:
    store = LocalStore("file://out", tmp_path)
    save(store, live(4), accelerator)
    target = tmp_path / "checkpoints/step-4/optimizer.pt"
    target.write_bytes(target.read_bytes()[:-8] + b"\x00" * 8)
    with pytest.raises(StorageError, match=r"step-4/optimizer.pt: does not match its manifest"):
        checkpoint.load(store, 4, rank=0)


def resign(directory: Path, name: str) -> None:
    """Make the manifest vouch for ``name`` as it now is: what someone who can write to
    the bucket, or a bug, could do; the manifest check alone would not catch it."""
    from finetune_trainer.publish import sha256_file

    target, manifest_path = directory / name, directory / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest["files"] = [e for e in manifest["files"] if e["path"] != name]
    if target.exists():
        entry = {"path": name, "size": target.stat().st_size, "sha256": sha256_file(target)}
        manifest["files"].append(entry)
    manifest_path.write_text(json.dumps(manifest))


def test_a_planted_pickle_is_refused_unread_with_exit_5(tmp_path: Path, accelerator: Any) -> None:
    """State dicts are read with weights_only: a pickle that runs code is refused, with an
    error that names the file and never suggests turning the safeguard off."""
    store = LocalStore("file://out", tmp_path)
    save(store, live(4), accelerator)

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    directory = tmp_path / "checkpoints/step-4"
    torch.save({"x": Evil()}, directory / "scheduler.pt")
    resign(directory, "scheduler.pt")

    with pytest.raises(StorageError) as caught:
        checkpoint.load(store, 4, rank=0)
    assert not (tmp_path / "pwned").exists()
    outcome = failed(caught.value)
    assert outcome.exit_code == ExitCode.STORAGE_ERROR == 5
    assert "file://out/checkpoints/step-4/scheduler.pt" in outcome.message
    assert "not a checkpoint file this trainer wrote" in outcome.message
    assert "weights_only" not in outcome.message


def _set_state(directory: Path, **changes: Any) -> None:
    state = json.loads((directory / "state.json").read_text())
    state.update(changes)
    (directory / "state.json").write_text(json.dumps(state))
    resign(directory, "state.json")


def _write(name: str, data: bytes) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        (directory / name).write_bytes(data)
        resign(directory, name)

    return change


def _edit_manifest(edit: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        manifest = json.loads((directory / MANIFEST).read_text())
        edit(manifest)
        (directory / MANIFEST).write_text(json.dumps(manifest))

    return change


def _truncate(name: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        data = (directory / name).read_bytes()
        (directory / name).write_bytes(data[: len(data) // 2])
        resign(directory, name)

    return change


SURPRISES: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # name: (what happens to checkpoint step-4, the file named, what the message says)
    "state field of a newer trainer": (
        lambda d: _set_state(d, warmRestart=True),
        "state.json",
        "fields this trainer does not know: ['warmRestart']",
    ),
    "state.json not JSON": (_write("state.json", b"{step: 4"), "state.json", "not valid JSON"),
    "state.json of wrong types": (
        lambda d: _set_state(d, step="4", history=None),
        "state.json",
        "step: '4' is not int; history: None is not list",
    ),
    "state of another step": (lambda d: _set_state(d, step=3), "state.json", "step 3, not 4"),
    "truncated optimizer": (_truncate("optimizer.pt"), "optimizer.pt", "unreadable"),
    "truncated weights": (
        _truncate("trainable.safetensors"),
        "trainable.safetensors",
        "unreadable",
    ),
    "missing rng shard": (
        lambda d: (d / "rng/rank-0.pt").unlink(),
        "rng/rank-0.pt",
        "cannot read",
    ),
    "weights not listed": (
        _edit_manifest(
            lambda m: m.update(
                files=[f for f in m["files"] if f["path"] != "trainable.safetensors"]
            )
        ),
        MANIFEST,
        "lists no trainable.safetensors",
    ),
    "a path of its own": (
        _edit_manifest(lambda m: m["files"].append({"path": "../x", "size": 1, "sha256": "0"})),
        MANIFEST,
        "lists '../x', which this trainer never writes",
    ),
    "manifest not JSON": (
        lambda d: (d / MANIFEST).write_text('{"kind": "Checkpoint", '),
        MANIFEST,
        "not valid JSON",
    ),
    "manifest of a newer format": (
        _edit_manifest(lambda m: m.update(format=checkpoint.FORMAT + 1)),
        MANIFEST,
        f"checkpoint format {checkpoint.FORMAT + 1}, this trainer reads {checkpoint.FORMAT}",
    ),
}


@pytest.mark.parametrize("surprise", sorted(SURPRISES))
def test_every_checkpoint_surprise_is_a_storage_error_naming_the_file(
    surprise: str, tmp_path: Path, accelerator: Any
) -> None:
    """Found and loaded as a run does it: the newest checkpoint of this run, whatever is
    wrong with it, ends the run with exit 5 and a message naming the file and the fix,
    never a traceback (exit 1, retried as if it could pass), never a silent fresh start
    (whose first checkpoint would delete the one found)."""
    store = LocalStore("file://out", tmp_path)
    save(store, live(4), accelerator)
    change, name, says = SURPRISES[surprise]
    change(tmp_path / "checkpoints/step-4")

    with pytest.raises(StorageError) as caught:
        checkpoint.find_and_load(store, identity(config()), accelerator)
    outcome = failed(caught.value)
    assert outcome.exit_code == 5, outcome.message
    assert f"file://out/checkpoints/step-4/{name}" in outcome.message
    assert says in outcome.message
    assert "Delete" in outcome.message or "delete" in outcome.message


def test_a_checkpoint_of_other_data_content_is_not_resumed_and_says_what_changed(
    tmp_path: Path, accelerator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Same configuration, same URIs, other examples (a file rewritten in place): the
    checkpoint is not this run's, and the warning says which input changed, old -> new."""
    store = LocalStore("file://out", tmp_path)
    save(store, live(4), accelerator, trainContent="t-old")

    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        found = checkpoint.latest_usable(store, identity(config(), trainContent="t-new"), tmp_path)
    assert found is None
    assert "the training examples (trainContent t-old -> t-new)" in caplog.text
    assert "configuration section" not in caplog.text
    assert checkpoint.latest_usable(store, identity(config(), trainContent="t-old"), tmp_path) == 4


def test_a_checkpoint_without_content_identity_is_not_resumed(
    tmp_path: Path, accelerator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Written before the identity held the content: whether its inputs were these is
    unknown, so it is not taken for this run's."""
    store = LocalStore("file://out", tmp_path)
    cfg = config()
    checkpoint.save(
        store, live(4), config=cfg, identity=checkpoint.fingerprint(cfg), accelerator=accelerator
    )
    with caplog.at_level(logging.WARNING, logger="finetune.trainer"):
        assert checkpoint.latest_usable(store, identity(cfg), tmp_path) is None
    assert "modelContent not recorded (an older trainer) -> m1" in caplog.text


# --------------------------------------------------------------------------- identity


def example(ids: list[int], label: int | None = None) -> TokenizedExample:
    return TokenizedExample(input_ids=ids, labels=[-100, *ids[1:]], label=label)


def prepared(train: list[TokenizedExample], validation: list[TokenizedExample]) -> PreparedData:
    return PreparedData(train=train, validation=validation, eval_samples=[])


def test_the_identity_follows_the_data_content_where_the_configuration_does_not(
    tmp_path: Path,
) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    cfg = config()
    base = checkpoint.identity(cfg, model, prepared([example([1, 2, 3])], [example([4, 5])]))
    same = checkpoint.identity(cfg, model, prepared([example([1, 2, 3])], [example([4, 5])]))
    assert base == same

    def changed(data: PreparedData) -> set[str]:
        new = checkpoint.identity(cfg, model, data)
        return {k for k in base if base[k] != new[k]}

    assert changed(prepared([example([1, 2, 4])], [example([4, 5])])) == {"trainContent"}
    assert changed(prepared([example([1, 2]), example([3])], [example([4, 5])])) == {
        "trainContent"
    }  # the same ids cut differently are other examples
    assert changed(prepared([example([1, 2, 3], label=1)], [example([4, 5])])) == {"trainContent"}
    assert changed(prepared([example([1, 2, 3])], [example([4, 6])])) == {"validationContent"}
    (model / "config.json").write_text('{"hidden_size": 8}')
    assert changed(prepared([example([1, 2, 3])], [example([4, 5])])) == {"modelContent"}


def test_the_model_identity_is_its_files_content_sampled_beyond_the_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checkpoint, "WHOLE_FILE_LIMIT", 4096)
    monkeypatch.setattr(checkpoint, "SAMPLE_BLOCK", 256)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"a": 1}')
    big = bytearray(random.Random(0).randbytes(64 * 1024))
    (model / "model.safetensors").write_bytes(big)
    first = checkpoint.model_identity(model)

    # Nowhere else, no times: a copy elsewhere, and files that are not the model, agree.
    copy = tmp_path / "elsewhere"
    copy.mkdir()
    for path in model.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / ".download.lock").write_text("x")
    assert checkpoint.model_identity(copy) == first

    # Retrained weights (every block differs), the same size: another model.
    (copy / "model.safetensors").write_bytes(random.Random(1).randbytes(len(big)))
    assert checkpoint.model_identity(copy) != first
    # A changed small file (config, tokenizer) is hashed whole.
    (copy / "model.safetensors").write_bytes(big)
    (copy / "config.json").write_text('{"a": 2}')
    assert checkpoint.model_identity(copy) != first
    # The last block and the header block of a big file are read.
    (copy / "config.json").write_text('{"a": 1}')
    for offset in (0, len(big) - 1):
        changed = bytearray(big)
        changed[offset] ^= 0xFF
        (copy / "model.safetensors").write_bytes(changed)
        assert checkpoint.model_identity(copy) != first, offset


def test_a_hub_cache_file_is_known_by_its_blob_name(tmp_path: Path) -> None:
    """The Hub cache links a snapshot's files to blobs named by their content's hash:
    the name is the identity, nothing is read."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots/abc"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    blob = blobs / ("e" * 64)
    blob.write_bytes(b"weights")
    (snapshot / "model.safetensors").symlink_to(blob)
    first = checkpoint.model_identity(snapshot)
    blob.write_bytes(b"never read")
    assert checkpoint.model_identity(snapshot) == first
    other = blobs / ("f" * 64)
    other.write_bytes(b"weights")
    (snapshot / "model.safetensors").unlink()
    (snapshot / "model.safetensors").symlink_to(other)
    assert checkpoint.model_identity(snapshot) != first


def test_the_identity_of_the_same_inputs_is_the_same_in_another_process(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """A retried pod must find its own checkpoints: the identity of the same model and
    data files, prepared in a fresh process (another hash seed), is the same."""
    from conftest import colour_rows, write_jsonl

    train = write_jsonl(tmp_path / "train.jsonl", colour_rows(24))
    program = f"""
import json, sys
from pathlib import Path
from transformers import AutoTokenizer
from finetune_api.config import TrainerConfig
from finetune_trainer import checkpoint
from finetune_trainer.data.prepare import prepare_data
cfg = TrainerConfig.model_validate({{
    "jobName": "ckpt", "model": {{"uri": "file://{tiny_model_dir}"}},
    "dataset": {{"train": "file://{train}"}}, "output": {{"uri": "file:///out"}},
}})
data = prepare_data(
    AutoTokenizer.from_pretrained("{tiny_model_dir}"), cfg.dataset, max_length=64,
    seed=cfg.training.seed, eval_samples=0, use_cache=False,
)
print(json.dumps(checkpoint.identity(cfg, Path("{tiny_model_dir}"), data)))
"""
    seen = []
    for seed in ("1", "2"):
        result = subprocess.run(
            [sys.executable, "-c", program],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": seed},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        seen.append(json.loads(result.stdout.strip().splitlines()[-1]))
    assert seen[0] == seen[1]
    assert set(checkpoint.CONTENT_PARTS) <= set(seen[0])


# --------------------------------------------------------------------------- state.json


def test_every_loop_state_field_has_a_json_type() -> None:
    from dataclasses import fields

    from finetune_trainer import state

    assert set(state._JSON_TYPES) == {f.name for f in fields(LoopState)}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
state_like = st.fixed_dictionaries(
    {},
    optional={
        name: json_values
        for name in (
            "step",
            "tokens",
            "samples",
            "seconds",
            "history",
            "eval_history",
            "stopper",
            "carry",
        )
    },
)


@settings(max_examples=200, deadline=1000)
@given(state_like)
def test_any_json_state_is_a_loop_state_of_the_right_types_or_a_value_error(
    data: dict[str, Any],
) -> None:
    try:
        state = LoopState.from_json(data)
    except ValueError as exc:
        assert str(exc)  # names what is wrong
        return
    assert isinstance(state.step, int) and not isinstance(state.step, bool) and state.step >= 1
    assert all(isinstance(v, int) for v in (state.tokens, state.samples))
    assert isinstance(state.seconds, int | float)
    assert all(isinstance(h, dict) for h in (*state.history, *state.eval_history))
    assert isinstance(state.carry, dict) and isinstance(state.stopper, dict | None)


def test_sigterm_outside_training_stops_at_once_and_inside_waits_for_the_step() -> None:
    with handle_sigterm() as stop:
        with pytest.raises(Preempted):
            os.kill(os.getpid(), signal.SIGTERM)
        stop.requested = False
        with stop.during_training():
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop() is True  # flagged, not raised: the loop saves, then stops
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
