"""hf://datasets/… through huggingface_hub: which file of a repository is the dataset,
and errors that name HF_HUB_OFFLINE / HF_ENDPOINT when the Hub cannot be reached."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from finetune_api.uri import Role
from finetune_trainer.errors import StorageError
from finetune_trainer.storage.backends import Access, fetch_file


@pytest.fixture
def empty_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path


def fake_snapshot(
    monkeypatch: pytest.MonkeyPatch, root: Path, files: list[str], seen: dict[str, Any]
) -> None:
    """snapshot_download replaced by a local repository holding ``files``."""
    import huggingface_hub

    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}\n")

    def snapshot_download(**kwargs: Any) -> str:
        seen.update(kwargs)
        return str(root)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)


def test_a_repository_with_one_data_file_is_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    fake_snapshot(monkeypatch, tmp_path, ["data/train.jsonl"], seen)
    path = fetch_file("hf://datasets/org/chat", Role.DATASET)
    assert path == tmp_path / "data" / "train.jsonl"
    assert seen["repo_id"] == "org/chat" and seen["repo_type"] == "dataset"
    assert "*.jsonl" in seen["allow_patterns"]


def test_a_file_named_in_the_uri_is_the_only_one_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    fake_snapshot(monkeypatch, tmp_path, ["a.jsonl", "sub/b.parquet"], seen)
    path = fetch_file("hf://datasets/org/chat/sub/b.parquet", Role.DATASET)
    assert path == tmp_path / "sub" / "b.parquet"
    assert seen["allow_patterns"] == ["sub/b.parquet"]


def test_several_data_files_ask_for_one_to_be_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_snapshot(monkeypatch, tmp_path, ["train.jsonl", "test.jsonl"], {})
    with pytest.raises(StorageError) as info:
        fetch_file("hf://datasets/org/chat", Role.DATASET)
    message = str(info.value)
    assert "holds 2 data files" in message
    assert "hf://datasets/org/chat/test.jsonl" in message


def test_the_hf_token_of_a_mounted_secret_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    fake_snapshot(monkeypatch, tmp_path / "repo", ["train.jsonl"], seen)
    (tmp_path / "secrets" / "hub").mkdir(parents=True)
    (tmp_path / "secrets" / "hub" / "HF_TOKEN").write_text("hf_abc\n")
    monkeypatch.setenv("FINETUNE_SECRETS_ROOT", str(tmp_path / "secrets"))
    fetch_file("hf://datasets/org/chat", Role.DATASET, Access("hub"))
    assert seen["token"] == "hf_abc"


def test_offline_without_a_cached_copy_names_hf_hub_offline(
    empty_hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StorageError, match=r"cannot be reached.*HF_HUB_OFFLINE=1"):
        fetch_file("hf://datasets/org/chat", Role.DATASET)


def test_an_unreachable_hub_names_hf_endpoint(
    empty_hf_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants as constants

    endpoint = "http://127.0.0.1:9"  # the discard port: connection refused
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with pytest.raises(StorageError, match=rf"cannot be reached.*HF_ENDPOINT={endpoint}"):
        fetch_file("hf://datasets/org/chat", Role.DATASET)
