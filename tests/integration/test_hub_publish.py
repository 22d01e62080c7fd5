"""``output.uri: hf://org/name``: a run publishes to the Hub in one commit, and the set
comes back verifiable and loadable. Against the local stand-in (tests/hub_server.py),
never the network."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from finetune_api.config import TrainerConfig
from finetune_cli.app import app
from finetune_trainer.errors import StorageError
from finetune_trainer.publish import publish, verify_store
from finetune_trainer.storage.backends import open_store
from finetune_trainer.storage.store import MANIFEST, Holder, OutputBusy
from hub_server import HubStandIn

TOKEN = "hf_standInWriteToken0123456789"


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    with HubStandIn(token=TOKEN) as stand_in:
        monkeypatch.setenv("HF_ENDPOINT", stand_in.url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield stand_in


def staged(root: Path, **files: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name.replace("__", "/")).parent.mkdir(parents=True, exist_ok=True)
        (root / name.replace("__", "/")).write_text(text)
    return root


CONFIG = TrainerConfig.model_validate(
    {
        "jobName": "hub",
        "model": {"uri": "hf://org/base"},
        "dataset": {"train": "file://t.jsonl"},
        "output": {"uri": "hf://acme/bot"},
    }
)


def a_set(root: Path, version: str, *, plots: bool = True) -> Path:
    """A small artifact set with a manifest that vouches for it."""
    from finetune_trainer.publish import build_manifest, file_entries

    files = {"adapter_config.json": "{}", "README.md": version}
    if plots:
        files["plots__loss.png"] = version
    staged(root, **files)
    manifest = build_manifest(file_entries(root), CONFIG, {})
    (root / MANIFEST).write_text(json.dumps(manifest))
    return root


def test_a_set_is_published_in_one_commit_and_verifies(hub: HubStandIn, tmp_path: Path) -> None:
    store = open_store("hf://acme/bot")
    with store.lease(Holder("run-a")):
        publish(a_set(tmp_path / "one", "v1"), "hf://acme/bot")
    repo = hub.repos["acme/bot"]
    assert [summary for _, summary in repo.log] == ["init", "Publish 4 files (finetune-operator)"]
    published = {*hub.tree("acme/bot")} - {".gitattributes"}
    assert published == {"README.md", "adapter_config.json", MANIFEST, "plots/loss.png"}
    assert verify_store(open_store("hf://acme/bot")) == []

    # a second set replaces the first whole: files it no longer has are deleted in the commit
    with open_store("hf://acme/bot").lease(Holder("run-b")):
        publish(a_set(tmp_path / "two", "v2", plots=False), "hf://acme/bot")
    assert len(repo.log) == 3
    assert "plots/loss.png" not in hub.tree("acme/bot")
    assert hub.tree("acme/bot")["README.md"] == b"v2"
    assert verify_store(open_store("hf://acme/bot")) == []


def test_a_branch_output_creates_the_branch_and_leaves_main_alone(
    hub: HubStandIn, tmp_path: Path
) -> None:
    with open_store("hf://acme/bot@candidate").lease(Holder("run")):
        publish(a_set(tmp_path / "set", "v1"), "hf://acme/bot@candidate")
    assert MANIFEST in hub.tree("acme/bot", "candidate")
    assert MANIFEST not in hub.tree("acme/bot", "main")
    assert verify_store(open_store("hf://acme/bot@candidate")) == []


def test_a_second_writer_that_published_first_makes_the_other_fail(
    hub: HubStandIn, tmp_path: Path
) -> None:
    first, second = open_store("hf://acme/bot"), open_store("hf://acme/bot@main")
    with first.lease(Holder("run-a")):
        # another process (here: another URI spelling, so another lease) commits meanwhile
        with second.lease(Holder("run-b")):
            publish(a_set(tmp_path / "b", "from b"), "hf://acme/bot@main")
        with pytest.raises(OutputBusy, match=r"hf://acme/bot: another run is writing this output"):
            publish(a_set(tmp_path / "a", "from a"), "hf://acme/bot")
    assert hub.tree("acme/bot")["README.md"] == b"from b"  # b's set, whole


def test_a_wrong_token_fails_naming_the_secret_key_and_never_the_token(
    hub: HubStandIn, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "hf_wrongToken9876543210abcdef"
    monkeypatch.setenv("HF_TOKEN", wrong)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageError) as info, open_store("hf://acme/bot").lease(Holder("run")):
        pass
    message = str(info.value)
    assert "HF_TOKEN" in message and "credentialsSecret" in message and "401" in message
    assert wrong not in message and wrong not in caplog.text


@pytest.mark.parametrize("uri", ["hf://acme/bot", "hf://acme/bot@candidate"])
def test_validate_accepts_a_hub_output(make_job: Any, uri: str) -> None:
    job = make_job(output={"uri": uri})
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code == 0, result.output


def test_validate_refuses_publishing_into_the_base_models_repository(make_job: Any) -> None:
    job = make_job(model={"uri": "hf://acme/base"}, output={"uri": "hf://acme/base@tuned"})
    result = CliRunner().invoke(app, ["validate", str(job)])
    assert result.exit_code != 0
    assert "output.uri" in result.output and "is the same place as model.uri" in result.output


def test_a_run_publishes_to_the_hub_and_the_adapter_loads_from_it(
    hub: HubStandIn, make_job: Any, tmp_path: Path, tiny_model_dir: Path, capfd: Any
) -> None:
    """The round trip: `finetune run` to hf://, `finetune verify hf://...`, then the
    adapter downloaded with huggingface_hub loads with AutoPeftModelForCausalLM."""
    import torch
    from huggingface_hub import ModelCard, snapshot_download
    from peft import AutoPeftModelForCausalLM

    job = make_job(output={"uri": "hf://acme/tiny-colours"}, training={"maxSteps": 2})
    runner = CliRunner()
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    repo = hub.repos["acme/tiny-colours"]
    assert len(repo.log) == 2  # the repository's creation, then one publishing commit
    assert MANIFEST in hub.tree("acme/tiny-colours")
    assert not any(p.startswith("checkpoints/") for p in hub.tree("acme/tiny-colours"))

    verified = runner.invoke(app, ["verify", "hf://acme/tiny-colours"])
    assert verified.exit_code == 0, verified.output

    local = Path(snapshot_download("acme/tiny-colours", endpoint=hub.url, token=TOKEN))
    card = ModelCard.load(local / "README.md")
    assert card.data.library_name == "peft"
    assert 'AutoPeftModelForCausalLM.from_pretrained("acme/tiny-colours")' in card.text
    model = AutoPeftModelForCausalLM.from_pretrained(local)
    adapter = json.loads((local / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_model_dir.resolve())
    with torch.no_grad():
        assert model(input_ids=torch.tensor([[1, 2, 3]])).logits.shape[-1] > 0
    out, err = capfd.readouterr()
    assert TOKEN not in result.output + verified.output + out + err
