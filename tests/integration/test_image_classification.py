"""Task image-classification end to end on a random-weight tiny ViT and generated shapes.

No pretrained vision backbone installs offline here, so the backbone is random
(examples/image-classification/prepare.py): what these tests prove is the path: that
the run learns (held-out accuracy well above the 25% of chance), that what it
publishes reloads with transformers (and peft) to the run's own scores, and that an
interrupted run resumes to the uninterrupted run's weights, augmentation included.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from finetune_api.config import TrainerConfig
from finetune_cli.app import app
from finetune_trainer.errors import Preempted
from finetune_trainer.evaluation import class_scores
from finetune_trainer.runner import run_training
from finetune_trainer.vision.prepare import prepare_images
from finetune_trainer.vision.recipe import fine_tune_images, load_processor
from tiny_vit import build_tiny_vit

REPO = Path(__file__).resolve().parents[2]
SHAPES = REPO / "examples" / "image-classification" / "shapes"


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vit") / "vit-tiny-random"
    return build_tiny_vit(out)


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Two cores shared by many processes: one thread is several times faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(vit: Path, out: Path, method: dict[str, Any], **training: Any) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "jobName": "shapes",
            "task": "image-classification",
            "model": {"uri": f"file://{vit}"},
            "dataset": {
                "train": f"file://{SHAPES}/train/",
                "validation": f"file://{SHAPES}/validation/",
                "format": "image-folder",
            },
            "method": method,
            "training": {"learningRate": 1e-3, "batchSize": 32, "seed": 3, **training},
            "evaluation": {"batchSize": 64},
            "output": {"uri": f"file://{out}"},
        }
    )


def _validation_scores(model: torch.nn.Module, config: TrainerConfig, published: Path) -> Any:
    """The held-out scores of ``model`` on images prepared as the published processor says."""
    _, transform = load_processor(published, config.image_options, False)
    data = prepare_images(config.dataset, transform, config.training.seed)
    assert data.labels is not None
    return class_scores(model, data.validation, 64, 0, list(data.labels.names))


def test_full_learns_and_the_published_model_reloads_to_its_scores(
    vit_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    out = tmp_path / "out"
    config = _config(vit_dir, out, {"type": "full"}, maxSteps=80)
    metrics = run_training(config).metrics
    assert metrics["accuracy"] >= 0.5, metrics["accuracy"]  # chance: 0.25
    assert metrics["accuracy"] >= metrics["accuracyBefore"] + 0.2
    assert metrics["data"]["classes"] == 4

    model = AutoModelForImageClassification.from_pretrained(out)
    assert model.config.id2label == {0: "circle", 1: "cross", 2: "square", 3: "triangle"}
    assert AutoImageProcessor.from_pretrained(out).size == {"height": 32, "width": 32}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["labels"] == ["circle", "cross", "square", "triangle"]
    scores = _validation_scores(model, config, out)
    assert scores.accuracy == metrics["accuracy"]
    assert scores.loss == pytest.approx(metrics["evalLoss"], abs=1e-5)

    # the model card's snippet classifies an image with the published files
    readme = (out / "README.md").read_text()
    snippet = readme.split("```python\n")[1].split("```")[0]
    image = SHAPES / "validation" / "square" / "000.png"
    printed = io.StringIO()
    with redirect_stdout(printed):
        exec(snippet.replace('"photo.jpg"', repr(str(image))), {})
    assert printed.getvalue().strip() in model.config.label2id

    # finetune export converts the whole model, its image processor with it
    exported = tmp_path / "exported"
    result = CliRunner().invoke(app, ["export", f"file://{out}", "--to", f"file://{exported}"])
    assert result.exit_code == 0, result.output
    assert AutoImageProcessor.from_pretrained(exported).size == {"height": 32, "width": 32}
    again = AutoModelForImageClassification.from_pretrained(exported)
    assert _validation_scores(again, config, exported).loss == pytest.approx(scores.loss)


def test_lora_publishes_an_adapter_with_the_new_head(vit_dir: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    out = tmp_path / "out"
    config = _config(vit_dir, out, {"type": "lora", "lora": {"r": 4}}, maxSteps=6)
    metrics = run_training(config).metrics
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["classifier"]
    assert metrics["trainableParameters"] < metrics["totalParameters"] / 2

    labels = json.loads((out / "manifest.json").read_text())["labels"]
    base = AutoModelForImageClassification.from_pretrained(
        vit_dir,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
        ignore_mismatched_sizes=True,
    )
    model = PeftModel.from_pretrained(base, out)
    scores = _validation_scores(model, config, out)
    assert scores.loss == pytest.approx(metrics["evalLoss"], abs=1e-5)

    # finetune generate takes text: an image set is refused with what to do instead
    result = CliRunner().invoke(app, ["generate", f"file://{out}", "-p", "a square"])
    assert result.exit_code != 0
    assert "an image classifier reads images, not text prompts" in result.output
    # and its adapter is not merged: refused with the way to load it
    result = CliRunner().invoke(app, ["export", f"file://{out}", "--to", f"file://{tmp_path}/m"])
    assert result.exit_code != 0
    assert "an image classifier's adapter is not merged here" in result.output


def test_freeze_trains_the_top_blocks_and_the_head_only(vit_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForImageClassification

    out = tmp_path / "out"
    method = {"type": "freeze", "freeze": {"trainableLayers": 1, "headLrMultiplier": 10}}
    metrics = run_training(_config(vit_dir, out, method, maxSteps=3)).metrics
    assert 0 < metrics["trainableParameters"] < metrics["totalParameters"] / 2
    model = AutoModelForImageClassification.from_pretrained(out)
    base = AutoModelForImageClassification.from_pretrained(vit_dir)
    first = "vit.layers.0.attention.q_proj.weight"  # block 0 of 4: frozen
    last = "vit.layers.3.attention.q_proj.weight"  # the top block: trained
    assert torch.equal(model.state_dict()[first], base.state_dict()[first])
    assert not torch.equal(model.state_dict()[last], base.state_dict()[last])


class _StopAfter:
    """A SIGTERM arriving during step ``n``: the loop saves a checkpoint and stops."""

    def __init__(self, n: int) -> None:
        self.n, self.polls = n, 0

    def __call__(self) -> bool:
        self.polls += 1
        return self.polls >= self.n

    @contextmanager
    def during_training(self) -> Iterator[None]:
        yield


def test_an_interrupted_run_resumes_to_the_same_weights(vit_dir: Path, tmp_path: Path) -> None:
    """Augmented crops and flips come from the generators a checkpoint restores: a run
    stopped after step 3 and started again ends where an uninterrupted one does."""
    method = {"type": "lora", "lora": {"r": 4, "dropout": 0.1}}
    steps = {"maxSteps": 6}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    reference = fine_tune_images(_config(vit_dir, tmp_path / "a", method, **steps))
    config = _config(vit_dir, tmp_path / "b", method, **steps)
    with pytest.raises(Preempted):
        fine_tune_images(config, stop=_StopAfter(3))  # type: ignore[arg-type]
    resumed = fine_tune_images(config)
    assert resumed.metrics["resumedFromStep"] == 3
    a, b = reference.model.state_dict(), resumed.model.state_dict()
    trained = [k for k in a if "lora_" in k or "modules_to_save" in k]
    assert trained
    for name in trained:
        assert torch.equal(a[name], b[name]), name
    assert resumed.metrics["evalLoss"] == reference.metrics["evalLoss"]
