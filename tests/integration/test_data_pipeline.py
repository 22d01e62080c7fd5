"""The data side through `finetune run`: cleaning counts and the tokenization cache in
metrics.json, packing that trains exactly like unpacked batches, and mixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import colour_rows, write_jsonl
from finetune_cli.app import app

runner = CliRunner()


def run(job: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = job.parent / "out"
    return json.loads((out / "metrics.json").read_text())


def uneven_rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"q{i}"},
                {"role": "assistant", "content": "red " * (1 + 5 * (i % 4))},
            ]
        }
        for i in range(n)
    ]


def test_cleaning_counts_reach_metrics_and_a_rerun_uses_the_cache(
    make_job: Any, tmp_path: Path, private_cache_dir: Path
) -> None:
    rows = [
        *colour_rows(8),
        {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]},
    ]
    train = write_jsonl(tmp_path / "messy.jsonl", rows)
    job = make_job(dataset={"train": f"file://{train}"}, training={"maxSteps": 2})

    first = run(job)["data"]
    second = run(job)["data"]

    # colour_rows(8) holds 4 distinct questions, each twice, and the blank answer is empty.
    assert first["rowsRead"] == 9 + 8
    assert first["droppedDuplicates"] == 4 + 4
    assert first["droppedEmpty"] == 1
    assert (first["trainRows"], first["validationRows"]) == (4, 4)
    assert (first["filesTokenized"], first["filesFromCache"]) == (2, 0)
    assert (second["filesTokenized"], second["filesFromCache"]) == (0, 2)
    assert {k: v for k, v in second.items() if not k.startswith("files")} == {
        k: v for k, v in first.items() if not k.startswith("files")
    }
    tokenized = private_cache_dir / "tokenized"
    assert sorted(p.name.split(".")[0] for p in tokenized.glob("*.arrow")) == [
        "messy",
        "validation",
    ]


def test_a_packed_step_equals_the_unpacked_step(make_job: Any, tmp_path: Path) -> None:
    """All examples in one step: same loss, same gradient, same adapter, packed or not."""
    train = write_jsonl(tmp_path / "uneven.jsonl", uneven_rows(8))
    weights, losses, data = [], [], []
    for packing, out in ((False, "plain"), (True, "packed")):
        job = make_job(
            dataset={"train": f"file://{train}"},
            training={"batchSize": 8, "maxSteps": 1, "maxGradNorm": 0, "packing": packing},
            output={"uri": f"file://{tmp_path / out}"},
        )
        result = runner.invoke(app, ["run", str(job)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        metrics = json.loads((tmp_path / out / "metrics.json").read_text())
        losses.append(metrics["history"][0]["loss"])
        data.append(metrics["data"])
        weights.append(load_file(tmp_path / out / "adapter_model.safetensors"))
    # The premise: packing really put several examples in a sequence.
    assert 0 < data[1]["packedSequences"] < data[1]["trainRows"] == data[0]["trainRows"]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, atol=1e-6, rtol=1e-5)


def test_a_packed_run_learns(make_job: Any) -> None:
    job = make_job(
        dataset={"deduplicate": False},
        training={"packing": True, "batchSize": 2, "maxSteps": 12},
    )

    metrics = run(job)

    data = metrics["data"]
    assert data["trainRows"] == 48
    assert data["packedSequences"] <= 48 // 3  # ~15 tokens each in rows of 64
    losses = [h["loss"] for h in metrics["history"]]
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses
    assert metrics["evalLoss"] < metrics["evalLossBefore"]
    assert metrics["exactMatch"] >= 0.5


def test_a_mixture_run_trains_on_every_source(make_job: Any, tmp_path: Path) -> None:
    colours = write_jsonl(tmp_path / "colours.jsonl", colour_rows(4))
    instructions = tmp_path / "upper.csv"
    instructions.write_text(
        "instruction,output\n" + "".join(f"Say {w},{w}\n" for w in ("red", "blue", "green"))
    )
    job = make_job(
        dataset={
            "train": None,
            "validation": None,
            "validationSplit": 0.25,
            "mixture": [
                {"train": f"file://{colours}", "weight": 3},
                {"train": f"file://{instructions}", "format": "instruction"},
            ],
        },
        training={"maxSteps": 3, "lossOn": "all"},
    )

    metrics = run(job)

    data = metrics["data"]
    # 3 + 2 rows after holding out a quarter of each source; 5 mixed 3:1.
    assert [(s["rows"], s["sampled"]) for s in data["mixture"]] == [(3, 4), (2, 1)]
    assert (data["trainRows"], data["validationRows"]) == (5, 2)
    assert data["trainedTokens"] == data["trainTokens"]  # lossOn: all
    assert metrics["steps"] == 3


GOOD = json.dumps(colour_rows(1)[0]).encode()


@pytest.mark.parametrize(
    ("content", "fragments"),
    [
        (
            GOOD + b"\n" + GOOD + b'\n{"text": "caf\xe9"}\n',
            ["line 3 is not valid UTF-8 (byte 0xe9", "save the file as UTF-8"],
        ),
        (GOOD + b'\n\n{"messages": "\\udc80"}\n', ["line 3 holds the escape \\udc80"]),
        (
            GOOD + b'\n{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n",
            ["line 2 is not readable JSON: it is nested too deeply"],
        ),
        (
            b"\n".join([GOOD] * 40),
            ["40 rows read, 39 dropped as exact duplicates: 1 usable row; at least 2 are needed"],
        ),
    ],
    ids=["invalid-utf8", "lone-surrogate", "deep-nesting", "duplicates"],
)
def test_a_broken_data_file_exits_3_naming_its_line(
    make_job: Any, tmp_path: Path, content: bytes, fragments: list[str]
) -> None:
    """Through `finetune plan`, which reads the data exactly as the run does (cheaply:
    the model's tokenizer and config, not its weights)."""
    train = tmp_path / "hostile.jsonl"
    train.write_bytes(content)
    job = make_job(dataset={"train": f"file://{train}", "validation": None})

    result = runner.invoke(app, ["plan", str(job)])

    assert result.exit_code == 3, result.output
    assert f"dataset.train (file://{train})" in result.output
    for fragment in fragments:
        assert fragment in result.output
    assert "Traceback" not in result.output


def test_a_run_on_a_file_with_invalid_utf8_exits_3_and_publishes_nothing(
    make_job: Any, tmp_path: Path
) -> None:
    train = tmp_path / "hostile.jsonl"
    train.write_bytes(GOOD + b"\n\n" + b'{"text": "\xff"}\n')
    job = make_job(dataset={"train": f"file://{train}"})

    result = runner.invoke(app, ["run", str(job)])

    assert result.exit_code == 3, result.output
    assert f"dataset.train (file://{train}): line 3 is not valid UTF-8" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "manifest.json").exists()
