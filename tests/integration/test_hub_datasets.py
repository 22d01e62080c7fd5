"""hf://datasets read by subset, split and revision, as ``datasets.load_dataset`` reads
them, against the Hub stand-in (tests/hub_server.py, 127.0.0.1: never the network).

Each test commits a repository to the stand-in and asks ``fetch_data_files`` for a
subset's split: the files must be the ones the README's configs or the folder layout
name, in read order, with the bytes of the asked revision."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from finetune_api.config.data import HubDatasetOptions
from finetune_api.uri import Role
from finetune_trainer.errors import DataError, StorageError
from finetune_trainer.storage.backends import Access, fetch_data_files
from finetune_trainer.storage.credentials import SECRETS_ROOT_ENV
from hub_server import HubStandIn

URI = "hf://datasets/acme/chats"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubStandIn]:
    with HubStandIn() as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setenv("FINETUNE_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield stand_in


def jsonl(*texts: str) -> str:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts)


def parquet(*texts: str) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": list(texts)}), sink)
    return sink.getvalue()


def texts(paths: list[Path]) -> list[str]:
    """Every row's text, file after file: what a reader of the files would see."""
    rows: list[str] = []
    for path in paths:
        if path.suffix == ".parquet":
            rows += pq.read_table(path).column("text").to_pylist()
        else:
            rows += [json.loads(line)["text"] for line in path.read_text().splitlines()]
    return rows


def names(paths: list[Path]) -> list[str]:
    return [p.as_posix().split("/snapshots/", 1)[1].split("/", 1)[1] for p in paths]


def fetch(asked: str | None = None, access: Access | None = None, **hub: Any) -> list[Path]:
    """``asked``: the split asked for (as prepare.py asks hub.validation's); ``hub``: the
    dataset.hub options."""
    options = HubDatasetOptions(**hub) if hub else None
    return fetch_data_files(URI, Role.DATASET, access, options, asked)


CARD = """---
license: mit
configs:
- config_name: en
  default: true
  data_files:
  - split: train
    path:
    - "en/train-*.parquet"
    - "en/extra/*.jsonl"
  - split: test
    path: "en/test.jsonl"
- config_name: fr
  data_files:
  - split: train
    path: "fr/train/*.jsonl"
  - split: test
    path: "fr/test.jsonl"
---
# Chats
"""

CONFIGURED: dict[str, bytes | str] = {
    "README.md": CARD,
    ".gitattributes": "*.parquet filter=lfs\n",
    # written out of order: the split's files are read sorted, within each pattern
    "en/train-00001.parquet": parquet("en 3", "en 4"),
    "en/train-00000.parquet": parquet("en 1", "en 2"),
    "en/extra/more.jsonl": jsonl("en 5"),
    "en/test.jsonl": jsonl("en test"),
    "fr/train/b.jsonl": jsonl("fr 2"),
    "fr/train/a.jsonl": jsonl("fr 1"),
    "fr/test.jsonl": jsonl("fr test"),
}


def test_readme_configs_name_each_subsets_split_files_in_read_order(hub: HubStandIn) -> None:
    hub.add_dataset("acme/chats", CONFIGURED)
    default = fetch()
    assert names(default) == [
        "en/train-00000.parquet",
        "en/train-00001.parquet",
        "en/extra/more.jsonl",
    ]
    assert texts(default) == ["en 1", "en 2", "en 3", "en 4", "en 5"]
    assert texts(fetch(subset="en", split="test")) == ["en test"]
    assert texts(fetch(subset="fr")) == ["fr 1", "fr 2"]
    # the held-out split is asked with the same options and split= (hub.validation)
    assert texts(fetch("test", subset="fr", split="train", validation="test")) == ["fr test"]


def test_an_unknown_subset_or_split_names_the_ones_there_are(hub: HubStandIn) -> None:
    hub.add_dataset("acme/chats", CONFIGURED)
    with pytest.raises(DataError) as subset:
        fetch(subset="de")
    assert "no subset 'de'" in str(subset.value) and "en, fr" in str(subset.value)
    assert "dataset.hub.subset" in str(subset.value)
    with pytest.raises(DataError) as split:
        fetch(subset="fr", split="validation")
    message = str(split.value)
    assert "hf://datasets/acme/chats@main (subset 'fr', split 'validation')" in message
    assert "its splits: test, train" in message


def test_several_subsets_without_a_default_must_be_named(hub: HubStandIn) -> None:
    hub.add_dataset("acme/chats", {**CONFIGURED, "README.md": CARD.replace("default: true", "")})
    with pytest.raises(DataError, match=r"several subsets and no default.*en, fr"):
        fetch()
    assert texts(fetch(subset="en", split="test")) == ["en test"]


def test_a_folder_layout_without_configs_reads_as_datasets_does(hub: HubStandIn) -> None:
    """No configs: split names in folder names (and datasets' sharded file names) decide."""
    hub.add_dataset(
        "acme/chats",
        {
            "README.md": "# no metadata\n",
            "train/part-b.jsonl": jsonl("b"),
            "train/part-a.jsonl": jsonl("a"),
            "test/x.jsonl": jsonl("held out"),
        },
    )
    assert names(fetch()) == ["train/part-a.jsonl", "train/part-b.jsonl"]
    assert texts(fetch("test")) == ["held out"]
    with pytest.raises(DataError, match="its splits: test, train"):
        fetch("dev")


def test_sharded_parquet_files_and_subset_folders(hub: HubStandIn) -> None:
    hub.add_dataset(
        "acme/chats",
        {
            "en/data/train-00001-of-00002.parquet": parquet("2"),
            "en/data/train-00000-of-00002.parquet": parquet("1"),
            "en/data/validation-00000-of-00001.parquet": parquet("v"),
            "fr/train.jsonl": jsonl("un"),
        },
    )
    assert texts(fetch(subset="en")) == ["1", "2"]
    assert texts(fetch("validation", subset="en")) == ["v"]
    assert texts(fetch(subset="fr")) == ["un"]
    with pytest.raises(DataError, match=r"no folder 'de'.*its folders: en, fr"):
        fetch(subset="de")


def test_a_config_with_a_data_dir_reads_that_folders_layout(hub: HubStandIn) -> None:
    card = "---\nconfigs:\n- config_name: default\n  data_dir: v2\n---\n"
    hub.add_dataset(
        "acme/chats",
        {
            "README.md": card,
            "v1/train.jsonl": jsonl("old"),
            "v2/train.jsonl": jsonl("new"),
            "v2/test.jsonl": jsonl("new test"),
        },
    )
    assert texts(fetch()) == ["new"]
    assert texts(fetch("test")) == ["new test"]


def test_a_sharded_file_named_with_no_split_name_is_a_data_error(hub: HubStandIn) -> None:
    hub.add_dataset("acme/chats", {"data/my-train-00000-of-00001.parquet": parquet("x")})
    with pytest.raises(DataError, match=r"Split name should match"):
        fetch()


def test_files_datasets_does_not_count_as_data_are_passed_over(hub: HubStandIn) -> None:
    """No split names anywhere: every file is train, except what is not data at all."""
    hub.add_dataset("acme/chats", {"LICENSE": "MIT\n", "rows.jsonl": jsonl("r")})
    assert names(fetch()) == ["rows.jsonl"]


def test_files_the_trainer_cannot_read_are_named(hub: HubStandIn) -> None:
    hub.add_dataset("acme/chats", {"train/a.txt": "plain text\n", "train/b.jsonl": jsonl("b")})
    with pytest.raises(DataError) as error:
        fetch()
    message = str(error.value)
    assert "hf://datasets/acme/chats@main (the default subset, split 'train')" in message
    assert "train/a.txt" in message and ".jsonl" in message


def test_a_tag_and_a_commit_read_their_own_content_and_a_branch_is_asked_again(
    hub: HubStandIn,
) -> None:
    first = hub.add_dataset("acme/chats", {"train.jsonl": jsonl("version 1")})
    hub.tag_dataset("acme/chats", "v1", first)
    second = hub.add_dataset("acme/chats", {"train.jsonl": jsonl("version 2")})
    assert texts(fetch()) == ["version 2"]
    assert texts(fetch(revision="v1")) == ["version 1"]
    assert texts(fetch(revision=first)) == ["version 1"]
    assert texts(fetch(revision=second)) == ["version 2"]

    # a commit already read is read again with no request at all: it cannot change
    asked = len(hub.asked)
    assert texts(fetch(revision=first)) == ["version 1"]
    assert hub.asked[asked:] == []
    # a branch is resolved again: a new commit on main is what main reads next
    hub.add_dataset("acme/chats", {"train.jsonl": jsonl("version 3")})
    assert texts(fetch()) == ["version 3"]
    with pytest.raises(DataError, match=r"dataset\.hub\.revision"):
        fetch(revision="v9")


def test_a_private_repository_needs_the_token_of_its_secret(
    hub: HubStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "hf_readDatasetToken0123456789"
    hub.add_dataset("acme/chats", {"train.jsonl": jsonl("secret rows")}, token=token)
    with pytest.raises(StorageError) as anonymous:
        fetch()
    assert "HTTP 401" in str(anonymous.value)
    assert "set dataset.credentialsSecret" in str(anonymous.value)

    secrets = tmp_path / "secrets"
    monkeypatch.setenv(SECRETS_ROOT_ENV, str(secrets))
    (secrets / "hub-read").mkdir(parents=True)
    (secrets / "hub-read" / "HF_TOKEN").write_text("hf_someoneElsesToken987654321\n")
    with pytest.raises(StorageError) as wrong:
        fetch(access=Access("hub-read"))
    message = str(wrong.value)
    assert "HTTP 403" in message and "Secret 'hub-read'" in message and "HF_TOKEN" in message
    assert "hf_someoneElsesToken" not in message + caplog.text

    (secrets / "hub-read" / "HF_TOKEN").write_text(token + "\n")
    assert texts(fetch(access=Access("hub-read"))) == ["secret rows"]
    assert token not in caplog.text


def test_a_file_named_in_the_uri_is_read_alone_and_not_with_hub_options(hub: HubStandIn) -> None:
    hub.add_dataset("acme/chats", CONFIGURED)
    one = fetch_data_files(f"{URI}/fr/test.jsonl", Role.DATASET)
    assert texts(one) == ["fr test"]
    with pytest.raises(DataError, match="set train to hf://datasets/acme/chats"):
        fetch_data_files(f"{URI}/fr/test.jsonl", Role.DATASET, None, HubDatasetOptions())


def test_other_schemes_are_one_file(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(jsonl("x"))
    assert fetch_data_files(f"file://{path}", Role.DATASET) == [path]


def test_finetune_run_trains_on_a_subsets_split_and_holds_out_another(
    hub: HubStandIn, make_job: Any
) -> None:
    """`finetune run` from hf://datasets with dataset.hub: the train split's two files are
    read as one set, the test split is the validation set, the other subset is not read."""
    from typer.testing import CliRunner

    from conftest import colour_rows
    from finetune_cli.app import app

    rows = [json.dumps(r) + "\n" for r in colour_rows(48)]
    card = """---
configs:
- config_name: colours
  data_files:
  - split: train
    path: "colours/train-*.jsonl"
  - split: test
    path: "colours/test.jsonl"
- config_name: other
  data_files: "other/*.jsonl"
---
"""
    hub.add_dataset(
        "acme/chats",
        {
            "README.md": card,
            "colours/train-00000.jsonl": "".join(rows[:24]),
            "colours/train-00001.jsonl": "".join(rows[24:40]),
            "colours/test.jsonl": "".join(rows[40:]),
            "other/rows.jsonl": "".join(rows[:3]),
        },
    )
    job = make_job(
        dataset={
            "train": URI,
            "validation": None,
            "deduplicate": False,
            "hub": {"subset": "colours", "split": "train", "validation": "test"},
        },
        training={"maxSteps": 2},
    )
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((job.parent / "out" / "metrics.json").read_text())
    assert (metrics["data"]["trainRows"], metrics["data"]["validationRows"]) == (40, 8)
    assert not any("other/" in path for path in hub.asked)


def test_validate_checks_hub_options_without_the_network(
    make_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`finetune validate` reads no repository: the Hub it would ask is unreachable here."""
    from typer.testing import CliRunner

    from finetune_cli.app import app

    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    dataset = {"train": URI, "validation": None, "hub": {"subset": "en", "validation": "test"}}
    result = CliRunner().invoke(app, ["validate", str(make_job(dataset=dataset))])
    assert result.exit_code == 0, result.output
    both = {**dataset, "validation": "file:///tmp/v.jsonl"}
    refused = CliRunner().invoke(app, ["validate", str(make_job(dataset=both))])
    assert refused.exit_code != 0
    assert "set one held-out source" in refused.output
