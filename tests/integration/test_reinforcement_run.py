"""task: reinforcement (GRPO with verifiable rewards) on the tiny Llama, end to end:
``finetune run`` with exactMatch + regex + length rewards reports the per-step rewards
(history, JSON lines) and meanReward before and after; a run stopped after a checkpoint
and resumed ends with the uninterrupted run's weights (sampling is seeded)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from conftest import COLOURS, write_jsonl
from finetune_api.manifests import check_documents
from finetune_api.render import render_trainer_config
from finetune_cli.app import app
from finetune_trainer.errors import Preempted
from finetune_trainer.preemption import StopRequest
from finetune_trainer.recipe.run import fine_tune
from finetune_trainer.state import trainable_state

STEPS = 4


def prompt_rows(n: int, offset: int = 0) -> list[dict[str, Any]]:
    return [
        {"prompt": f"What is colour {i % len(COLOURS)}?", "answer": COLOURS[i % len(COLOURS)]}
        for i in range(offset, offset + n)
    ]


def reinforcement_job(make_job: Any, tmp_path: Path, **extra: Any) -> Path:
    train = write_jsonl(tmp_path / "prompts-train.jsonl", prompt_rows(16))
    validation = write_jsonl(tmp_path / "prompts-val.jsonl", prompt_rows(4, offset=100))
    sections: dict[str, Any] = {
        "task": "reinforcement",
        "dataset": {
            "train": f"file://{train}",
            "validation": f"file://{validation}",
            "format": "prompts",
        },
        "training": {"maxSteps": STEPS, "learningRate": 1e-2, "batchSize": 2},
        "reinforcement": {
            "generations": 4,
            "maxNewTokens": 5,
            "beta": 0.04,
            "rewards": [
                {"type": "exactMatch", "weight": 2.0},
                {"type": "regex", "pattern": "^(red|green|blue|yellow)"},
                {"type": "length", "maxLength": 3, "name": "short"},
            ],
        },
        "output": {"checkpointEvery": 2},
        **extra,
    }
    return make_job("grpo", **sections)


def test_finetune_run_of_a_reinforcement_job(make_job: Any, tmp_path: Path) -> None:
    job = reinforcement_job(make_job, tmp_path, evaluation={"everySteps": 2})
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "held-out mean reward: base model" in result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS
    for key in ("meanReward", "meanRewardBefore"):
        # Greedy completions of the 4 held-out prompts: each reward is 0 or 1, weights
        # 2 + 1 + 1, so the mean is in [0, 4].
        assert 0.0 <= metrics[key] <= 4.0, key
    step = metrics["history"][-1]
    for key in ("reward", "rewardStd", "kl", "completionLength", "clipFraction"):
        assert key in step, key
    for name in ("exactMatch", "regex", "short"):
        assert 0.0 <= step[name] <= 1.0, name
    # One optimisation pass per generation: the ratio is 1 and the clip never binds.
    assert all(h["clipFraction"] == 0.0 for h in metrics["history"])
    assert all(1 <= h["completionLength"] <= 5 for h in metrics["history"])
    assert all(h["kl"] >= 0 for h in metrics["history"])
    assert step["reward"] == pytest.approx(2 * step["exactMatch"] + step["regex"] + step["short"])
    # The periodic evaluation scores greedy completions of the held-out prompts too.
    assert [e["step"] for e in metrics["evalHistory"]] == [2, 4]
    assert all(0.0 <= e["meanReward"] <= 4.0 for e in metrics["evalHistory"])
    assert metrics["evalHistory"][-1]["meanReward"] == metrics["meanReward"]
    lines = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    steps = [line for line in lines if line.get("event") == "step"]
    assert len(steps) == STEPS and all("reward" in line and "kl" in line for line in steps)


class StopAfter(StopRequest):
    """SIGTERM as the loop sees it, raised once ``steps`` steps are done."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.polls, self.steps = 0, steps

    def __call__(self) -> bool:
        self.polls += 1
        return self.polls >= self.steps


def test_a_stopped_reinforcement_run_resumes_to_the_uninterrupted_weights(
    make_job: Any, tmp_path: Path
) -> None:
    job = reinforcement_job(make_job, tmp_path, evaluation={"exactMatchSamples": 0})
    [doc] = check_documents(job.read_text(), str(job))
    assert doc.job is not None
    config = render_trainer_config(doc.job)
    interrupted = config.model_copy(
        update={"output": config.output.model_copy(update={"uri": f"file://{tmp_path / 'a'}"})}
    )
    uninterrupted = config.model_copy(
        update={"output": config.output.model_copy(update={"uri": f"file://{tmp_path / 'b'}"})}
    )
    with pytest.raises(Preempted, match="stopped at step 3"):
        fine_tune(interrupted, stop=StopAfter(3))
    resumed = fine_tune(interrupted)
    assert resumed.metrics["resumedFromStep"] == 3 and resumed.metrics["stepsThisRun"] == 1
    whole = fine_tune(uninterrupted)
    a, b = trainable_state(resumed.model), trainable_state(whole.model)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.metrics["history"] == whole.metrics["history"]


def test_a_published_reward_model_is_a_reward(
    make_job: Any, tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The output of a reward-model job is a ``model`` reward: loaded from its published
    set (verified, the adapter with its score head on the base), it scores prompt +
    completion exactly as the set loaded by hand with peft does, and a reinforcement run
    trains against it, reporting it by name."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from finetune_trainer.alignment.rewards import Completion
    from finetune_trainer.recipe.setup import load_reward_model

    pairs = [
        {
            "prompt": f"What is colour {i % len(COLOURS)}?",
            "chosen": COLOURS[i % len(COLOURS)],
            "rejected": COLOURS[(i + 1) % len(COLOURS)],
        }
        for i in range(32)
    ]
    train = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    rm_job = make_job(
        "rm",
        task="reward-model",
        dataset={
            "train": f"file://{train}",
            "validation": f"file://{train}",
            "format": "preference",
            "deduplicate": False,
        },
        training={"maxSteps": 4},
        output={"uri": f"file://{tmp_path / 'rm'}"},
    )
    result = CliRunner().invoke(app, ["run", str(rm_job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output

    scorer = load_reward_model(f"file://{tmp_path / 'rm'}", None)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    base = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=1, pad_token_id=tokenizer.pad_token_id
    )
    by_hand = PeftModel.from_pretrained(base, tmp_path / "rm").eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is colour 1?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    done = [Completion(prompt, c, c + "<|im_end|>\n", 2) for c in COLOURS]
    expected = []
    for completion in done:
        ids = tokenizer(prompt + completion.raw, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            expected.append(float(by_hand(**ids).logits[0, 0]))
    assert scorer(done) == pytest.approx(expected, abs=1e-4)

    job = reinforcement_job(
        make_job,
        tmp_path,
        training={"maxSteps": 2, "batchSize": 2},
        reinforcement={
            "generations": 2,
            "maxNewTokens": 3,
            "rewards": [{"type": "model", "uri": f"file://{tmp_path / 'rm'}"}],
        },
    )
    result = CliRunner().invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert all(h["reward"] == h["model"] for h in metrics["history"])
    assert isinstance(metrics["meanReward"], float)


def test_grpo_raises_the_held_out_reward_of_a_learnable_reward(
    make_job: Any, tmp_path: Path
) -> None:
    """The tiny random model rarely starts its answer with lower-case letters up to an
    'e' (reward 1 when the completion matches ``^[a-z ]*e``); a dozen GRPO steps make its
    sampled and its greedy held-out completions do so (seeded: the same numbers each
    run, measured 0.0 -> 1.0 held-out, sampled 0.06 -> about 0.9)."""
    job = reinforcement_job(
        make_job,
        tmp_path,
        training={"maxSteps": 12, "batchSize": 4, "learningRate": 3e-2},
        reinforcement={
            "generations": 4,
            "maxNewTokens": 6,
            "beta": 0.0,
            "rewards": [{"type": "regex", "pattern": "^[a-z ]*e"}],
        },
    )
    [doc] = check_documents(job.read_text(), str(job))
    assert doc.job is not None
    metrics = fine_tune(render_trainer_config(doc.job)).metrics
    assert metrics["meanRewardBefore"] <= 0.25
    assert metrics["meanReward"] >= 0.75
    sampled = [h["reward"] for h in metrics["history"]]
    assert sum(sampled[-3:]) / 3 > sum(sampled[:3]) / 3 + 0.5


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_kl_to_the_reference_grows_once_the_policy_moves(
    make_job: Any, tmp_path: Path, method: str
) -> None:
    """Step 1 samples from the untouched policy: its KL to the reference (a frozen copy
    for full, the adapter switched off for lora) is 0; after an update it is not."""
    # make_job's default method is lora: a full run clears its section.
    options: dict[str, Any] = {"type": method, "lora": None if method == "full" else {"r": 8}}
    job = reinforcement_job(
        make_job,
        tmp_path,
        method=options,
        training={"maxSteps": 2, "batchSize": 2, "learningRate": 1e-3},
        reinforcement={
            "generations": 4,
            "maxNewTokens": 4,
            "beta": 0.1,
            "rewards": [{"type": "regex", "pattern": "e"}],
        },
        evaluation={"exactMatchSamples": 0},
    )
    [doc] = check_documents(job.read_text(), str(job))
    assert doc.job is not None
    history = fine_tune(render_trainer_config(doc.job)).metrics["history"]
    assert history[0]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert history[1]["kl"] > 1e-6


DDP_DRIVER = """
import os, sys
from pathlib import Path
from safetensors.torch import save_file
import finetune_trainer.runner as runner
from finetune_api.config import TrainerConfig
from finetune_trainer.state import trainable_state

fine_tune = runner.fine_tune

def recording_fine_tune(*args, **kwargs):
    run = fine_tune(*args, **kwargs)
    name = f"weights-rank-{os.environ.get('RANK', '0')}.safetensors"
    save_file(trainable_state(run.model), Path(sys.argv[2]) / name)
    return run

runner.fine_tune = recording_fine_tune
runner.run_training(TrainerConfig.from_json(Path(sys.argv[1]).read_text()))
"""


def test_two_gloo_ranks_run_grpo_to_identical_weights(make_job: Any, tmp_path: Path) -> None:
    """DDP: each rank samples and scores its own prompts; gradients are all-reduced, the
    step's extras averaged over the ranks (one collective), the weights stay identical."""
    import os
    import socket
    import subprocess
    import sys

    from safetensors.torch import load_file

    job = reinforcement_job(
        make_job,
        tmp_path,
        training={"maxSteps": 2, "batchSize": 2, "metricsPort": 0},
        evaluation={"exactMatchSamples": 0},
    )
    [doc] = check_documents(job.read_text(), str(job))
    assert doc.job is not None
    config = tmp_path / "trainer.json"
    rendered = json.loads(render_trainer_config(doc.job).to_json())
    rendered["distributed"] = {**rendered.get("distributed", {}), "processesPerNode": 2}
    config.write_text(json.dumps(rendered))
    (tmp_path / "marks").mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DDP_DRIVER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node=2",
            "--master-addr=127.0.0.1",
            f"--master-port={port}",
            str(driver),
            str(config),
            str(tmp_path / "marks"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    rank0 = load_file(tmp_path / "marks" / "weights-rank-0.safetensors")
    rank1 = load_file(tmp_path / "marks" / "weights-rank-1.safetensors")
    assert rank0.keys() == rank1.keys() and rank0
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["steps"] == 2
    assert all("reward" in h and "kl" in h for h in metrics["history"])
