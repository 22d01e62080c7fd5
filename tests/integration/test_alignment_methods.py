"""The methods the contract allows for task preference and task reinforcement beyond
lora, qlora, full and freeze (``finetune_api.tasks``: AdaLoRA and IA3) train there:
``finetune run`` succeeds and publishes a set ``finetune verify`` accepts, the scores
before and after are reported, and a preference policy moves away from its reference
(the same model with the adapter switched off). A method the contract allows but the
trainer cannot run would fail here, not in someone's pod."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import COLOURS, write_jsonl
from finetune_api.tasks import TASKS
from finetune_cli.app import app

EXTRA = sorted(TASKS["preference"].methods - TASKS["reward-model"].methods)  # type: ignore[operator]
METHOD_SECTIONS: dict[str, dict[str, Any]] = {
    "adalora": {"type": "adalora", "adalora": {"initR": 4, "targetR": 2, "tinit": 1, "tfinal": 1}},
    "ia3": {"type": "ia3"},
}


def pairs(n: int) -> list[dict[str, Any]]:
    return [
        {
            "prompt": f"What is colour {i % len(COLOURS)}?",
            "chosen": COLOURS[i % len(COLOURS)],
            "rejected": COLOURS[(i + 1) % len(COLOURS)],
        }
        for i in range(n)
    ]


def prompts(n: int) -> list[dict[str, Any]]:
    return [
        {"prompt": f"What is colour {i % len(COLOURS)}?", "answer": COLOURS[i % len(COLOURS)]}
        for i in range(n)
    ]


def job(make_job: Any, tmp_path: Path, task: str, method: str) -> Path:
    section: dict[str, Any]
    if task == "preference":
        rows, fmt, section = pairs, "preference", {"preference": {"loss": "dpo"}}
    else:
        rows, fmt = prompts, "prompts"
        section = {
            "reinforcement": {
                "generations": 2,
                "maxNewTokens": 3,
                "rewards": [{"type": "regex", "pattern": "^(red|green|blue)"}],
            }
        }
    train = write_jsonl(tmp_path / "train-rows.jsonl", rows(16))
    validation = write_jsonl(tmp_path / "validation-rows.jsonl", rows(4))
    path: Path = make_job(
        task=task,
        dataset={"train": f"file://{train}", "validation": f"file://{validation}", "format": fmt},
        training={"maxSteps": 4, "batchSize": 2},
        **section,
    )
    # make_job merges sections; the method is replaced whole
    manifest = yaml.safe_load(path.read_text())
    manifest["spec"]["method"] = METHOD_SECTIONS[method]
    path.write_text(yaml.safe_dump(manifest))
    return path


def test_the_extra_methods_are_adalora_and_ia3() -> None:
    assert EXTRA == ["adalora", "ia3"]
    assert TASKS["reinforcement"].methods == TASKS["preference"].methods


@pytest.mark.parametrize("task", ["preference", "reinforcement"])
@pytest.mark.parametrize("method", EXTRA)
def test_an_allowed_method_trains_the_task(
    make_job: Any, tmp_path: Path, task: str, method: str
) -> None:
    path = job(make_job, tmp_path, task, method)
    result = CliRunner().invoke(app, ["run", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 4
    scored = "preferenceAccuracy" if task == "preference" else "meanReward"
    assert scored in metrics and f"{scored}Before" in metrics
    if task == "preference":
        # beta x (log-prob - reference log-prob), chosen minus rejected: 0 while the
        # policy is its reference, so a margin says the adapter trained and switches off
        assert metrics["rewardMargin"] != 0.0
    verify = CliRunner().invoke(app, ["verify", str(tmp_path / "out")])
    assert verify.exit_code == 0, verify.output
