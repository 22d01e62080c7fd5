"""Publishing: the manifest vouches for every file (size + sha256), is written last,
and a stale one is removed before anything is replaced; output URIs cannot climb out.

Runs without torch: the model and tokenizer are stand-ins that write files the way
``save_pretrained`` does.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from finetune_api.config import TrainerConfig
from finetune_api.uri import Role
from finetune_trainer.errors import StorageError
from finetune_trainer.publish import (
    MANIFEST_KIND,
    build_manifest,
    file_entries,
    publish,
    stage_artifacts,
    verify_manifest,
)
from finetune_trainer.storage import backends, store
from finetune_trainer.storage.backends import BACKENDS, MANIFEST, LocalBackend, backend_for

CONFIG = TrainerConfig.model_validate(
    {
        "jobName": "unit",
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"train": "file://./train.jsonl"},
        "method": {"type": "lora", "lora": {"r": 4}},
        "output": {"uri": "file://./out"},
    }
)
METRICS = {"evalLoss": 0.5, "steps": 3, "history": [{"step": 1, "loss": 1.0}]}


def make_tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 4)
    (root / "README.md").write_text("card\n")
    (root / "sub").mkdir()
    (root / "sub" / "tokenizer.json").write_text('{"a": 1}')
    return root


def write_manifest(root: Path) -> dict[str, Any]:
    manifest = build_manifest(file_entries(root), CONFIG, {"evalLoss": 0.5})
    (root / MANIFEST).write_text(json.dumps(manifest))
    return manifest


# --------------------------------------------------------------------------- entries


def test_file_entries_list_every_file_with_size_and_sha256(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    (root / MANIFEST).write_text("{}")

    entries = file_entries(root)

    assert entries == [
        {"path": "README.md", "size": 5, "sha256": hashlib.sha256(b"card\n").hexdigest()},
        {
            "path": "adapter_model.safetensors",
            "size": 1024,
            "sha256": hashlib.sha256(bytes(range(256)) * 4).hexdigest(),
        },
        {
            "path": "sub/tokenizer.json",
            "size": 8,
            "sha256": hashlib.sha256(b'{"a": 1}').hexdigest(),
        },
    ]


def test_build_manifest_carries_spec_and_metrics(tmp_path: Path) -> None:
    manifest = build_manifest(file_entries(make_tree(tmp_path / "a")), CONFIG, {"evalLoss": 0.5})

    assert manifest["kind"] == MANIFEST_KIND
    assert manifest["jobName"] == "unit"
    assert manifest["baseModel"] == "hf://HuggingFaceTB/SmolLM2-135M-Instruct"
    assert manifest["method"] == "lora"
    assert manifest["metrics"] == {"evalLoss": 0.5}
    assert manifest["spec"]["method"]["lora"]["r"] == 4
    assert TrainerConfig.model_validate(manifest["spec"]) == CONFIG
    assert len(manifest["files"]) == 3


# --------------------------------------------------------------------------- verify


def test_a_matching_directory_verifies(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    write_manifest(root)

    assert verify_manifest(root) == []


def test_no_manifest_means_incomplete(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")

    [problem] = verify_manifest(root)
    assert "no manifest.json" in problem
    assert "incomplete" in problem


def test_a_tampered_file_of_the_same_size_is_caught(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    write_manifest(root)
    weights = root / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[500] ^= 0xFF
    weights.write_bytes(bytes(data))

    assert verify_manifest(root) == [
        "adapter_model.safetensors: size or sha256 differs from the manifest"
    ]


def test_a_truncated_file_is_caught(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    write_manifest(root)
    (root / "README.md").write_text("car")

    assert verify_manifest(root) == ["README.md: size or sha256 differs from the manifest"]


def test_a_missing_file_is_caught(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "a")
    write_manifest(root)
    (root / "sub" / "tokenizer.json").unlink()

    assert verify_manifest(root) == ["sub/tokenizer.json: missing"]


# --------------------------------------------------------------------------- staging


class FakeModel:
    def save_pretrained(self, directory: Path) -> None:
        (directory / "adapter_config.json").write_text(
            json.dumps({"base_model_name_or_path": "/home/me/.cache/model", "r": 4})
        )
        (directory / "adapter_model.safetensors").write_bytes(b"\0" * 64)


class FakeTokenizer:
    def save_pretrained(self, directory: Path) -> None:
        (directory / "tokenizer.json").write_text("{}")


def test_stage_artifacts_writes_a_verifiable_set(tmp_path: Path) -> None:
    stage_artifacts(
        tmp_path,
        FakeModel(),
        FakeTokenizer(),
        CONFIG,
        METRICS,
        "HuggingFaceTB/SmolLM2-135M-Instruct",
    )

    assert verify_manifest(tmp_path) == []
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert [f["path"] for f in manifest["files"]] == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "metrics.json",
        "plots/loss.png",  # the history's one series; nothing measured before and after
        "tokenizer.json",
    ]
    # The manifest's metrics are the headline numbers; the history is in metrics.json.
    assert manifest["metrics"] == {"evalLoss": 0.5, "steps": 3}
    assert json.loads((tmp_path / "metrics.json").read_text()) == METRICS
    adapter = json.loads((tmp_path / "adapter_config.json").read_text())
    assert adapter == {"base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", "r": 4}
    card = (tmp_path / "README.md").read_text()
    assert "base_model: HuggingFaceTB/SmolLM2-135M-Instruct" in card
    assert "| evalLoss | - | 0.5 |" in card  # no evalLossBefore in METRICS
    assert "![Training loss](plots/loss.png)" in card


# --------------------------------------------------------------------------- backend


def test_file_scheme_is_a_local_backend() -> None:
    assert isinstance(BACKENDS["file"], LocalBackend)
    assert isinstance(BACKENDS["pvc"], LocalBackend)


def test_publish_copies_everything_and_verifies(tmp_path: Path) -> None:
    staging = make_tree(tmp_path / "staging")
    write_manifest(staging)
    target = tmp_path / "out" / "job"

    publish(staging, f"file://{target}")

    assert verify_manifest(target) == []
    published = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert published == ["README.md", "adapter_model.safetensors", MANIFEST, "sub/tokenizer.json"]
    assert not [p for p in target.rglob(".*")], "temporary copies left behind"


def test_manifest_is_copied_last_after_the_stale_one_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = make_tree(tmp_path / "staging")
    write_manifest(staging)
    target = tmp_path / "out"
    target.mkdir()
    (target / MANIFEST).write_text('{"files": [], "stale": true}')
    (target / "README.md").write_text("old card\n")

    seen: list[tuple[str, bool]] = []
    real_copy = store._atomic_copy

    def recording_copy(src: Path, dst: Path, partial: Path) -> None:
        seen.append((dst.relative_to(target).as_posix(), (target / MANIFEST).exists()))
        real_copy(src, dst, partial)

    monkeypatch.setattr(store, "_atomic_copy", recording_copy)
    publish(staging, f"file://{target}")

    names = [name for name, _ in seen]
    assert names[-1] == MANIFEST
    assert sorted(names[:-1]) == ["README.md", "adapter_model.safetensors", "sub/tokenizer.json"]
    # No manifest (stale or new) exists while the files it would vouch for are replaced.
    assert all(not manifest_present for _, manifest_present in seen)
    assert "stale" not in json.loads((target / MANIFEST).read_text())
    assert verify_manifest(target) == []


def test_a_failed_publish_leaves_no_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = make_tree(tmp_path / "staging")
    write_manifest(staging)
    target = tmp_path / "out"
    target.mkdir()
    (target / MANIFEST).write_text('{"files": []}')
    real_copy = store._atomic_copy

    def failing_copy(src: Path, dst: Path, partial: Path) -> None:
        if dst.name == "adapter_model.safetensors":
            raise OSError(28, "No space left on device")
        real_copy(src, dst, partial)

    monkeypatch.setattr(store, "_atomic_copy", failing_copy)
    with pytest.raises(StorageError, match=r"cannot write .*No space left on device"):
        publish(staging, f"file://{target}")

    assert not (target / MANIFEST).exists()
    assert verify_manifest(target) != []


def test_publish_to_a_pvc_lands_under_the_claim_mount(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staging = make_tree(tmp_path / "staging")
    write_manifest(staging)
    monkeypatch.setenv(backends.PVC_ROOT_ENV, str(tmp_path / "mnt"))

    publish(staging, "pvc://artifacts/team-a/job")

    assert verify_manifest(tmp_path / "mnt" / "artifacts" / "team-a" / "job") == []


@pytest.mark.parametrize(
    "uri",
    [
        "file://./out/../../etc",
        "file:///srv/artifacts/../elsewhere",
        "file://out/%2e%2e/escape",
        "pvc://artifacts/job/../../other-claim",
    ],
)
def test_output_outside_its_prefix_is_refused(tmp_path: Path, uri: str) -> None:
    with pytest.raises(StorageError, match=r"'\.\.' path segments are not allowed"):
        backend_for(uri, Role.OUTPUT)

    staging = make_tree(tmp_path / "staging")
    with pytest.raises(StorageError):
        publish(staging, uri)


def test_verify_reports_files_the_manifest_does_not_list(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "manifest.json").write_text(json.dumps({"files": file_entries(tmp_path)}))
    assert verify_manifest(tmp_path) == []
    (tmp_path / "stray.bin").write_bytes(b"\0")
    assert verify_manifest(tmp_path) == ["stray.bin: not listed in the manifest"]


def test_a_nested_file_named_manifest_is_an_ordinary_artifact(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "manifest.json").write_text("{}")
    assert [e["path"] for e in file_entries(tmp_path)] == ["sub/manifest.json"]


def _config(**spec: Any) -> TrainerConfig:
    base = {
        "jobName": "card",
        "model": {"uri": "hf://org/base"},
        "dataset": {"train": "file://t.jsonl"},
        "output": {"uri": "file://./o"},
    }
    return TrainerConfig.model_validate({**base, **spec})


def test_model_card_loads_with_the_tasks_auto_class() -> None:
    from finetune_trainer.publish import model_card

    causal = model_card(_config(), {"evalLoss": 0.5}, "org/base")
    assert "AutoModelForCausalLM.from_pretrained" in causal
    assert "PeftModel.from_pretrained" in causal
    classifier = model_card(
        _config(
            task="sequence-classification",
            dataset={"train": "file://t.jsonl", "format": "classification"},
        ),
        {"accuracy": 0.9},
        "org/base",
        artifact="model",
    )
    assert "AutoModelForSequenceClassification.from_pretrained" in classifier
    assert "PeftModel" not in classifier


def test_model_card_names_every_mixture_source() -> None:
    from finetune_trainer.publish import model_card

    card = model_card(
        _config(
            dataset={
                "mixture": [{"train": "file://a.jsonl", "weight": 2}, {"train": "file://b.jsonl"}]
            }
        ),
        {},
        "org/base",
    )
    assert "`file://a.jsonl` (weight 2)" in card and "`file://b.jsonl` (weight 1)" in card
    assert "None" not in card


def test_a_local_listing_survives_a_directory_vanishing_during_the_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trainer prunes an old checkpoint while a reader lists the output (it happened in
    the resume test: the listing raised FileNotFoundError)."""
    import os
    import shutil

    from finetune_trainer.storage.store import LocalStore

    for name in ("checkpoints/step-4/rng/rank-0.pt", "checkpoints/step-8/x.pt", "a/.tmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    real_scandir = os.scandir

    def scandir_after_prune(path: Any = ".") -> Any:
        if str(path).endswith("step-4"):
            shutil.rmtree(path)  # pruned just as the walk reaches it
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir_after_prune)
    keys = [o.key for o in LocalStore("file://x", tmp_path).list()]
    assert keys == ["checkpoints/step-8/x.pt"]
    assert LocalStore("file://x", tmp_path / "missing").list() == []
