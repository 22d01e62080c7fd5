"""The contract of task image-classification: its formats, the folder URI, the
refused methods (with the reason) and its own section."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.config import DatasetSpec, TrainerConfig
from finetune_api.uri import DIRECTORY, Role, UriError, data_suffix, parse_uri


def _config(**spec: Any) -> TrainerConfig:
    body: dict[str, Any] = {
        "jobName": "pets",
        "model": {"uri": "file:///models/vit"},
        "dataset": {"train": "file:///data/pets/", "format": "image-folder"},
        "task": "image-classification",
        "method": {"type": "full"},
        "output": {"uri": "file:///out/pets"},
    }
    body.update(spec)
    return TrainerConfig.model_validate(body)


@pytest.mark.parametrize("uri", ["file:///data/pets/", "pvc://images/pets/"])
def test_a_local_folder_ending_in_a_slash_is_a_directory(uri: str) -> None:
    assert data_suffix(parse_uri(uri, Role.DATASET)) == DIRECTORY


@pytest.mark.parametrize("uri", ["s3://bucket/pets/", "file:///data/pets"])
def test_a_remote_prefix_or_a_name_without_slash_is_no_folder(uri: str) -> None:
    with pytest.raises(UriError, match="image-folder, a file:// or pvc:// folder ending in /"):
        data_suffix(parse_uri(uri, Role.DATASET))


def test_image_folder_reads_a_folder_and_only_it_does() -> None:
    assert DatasetSpec.model_validate({"train": "file:///d/", "format": "image-folder"})
    with pytest.raises(ValidationError, match="train: format image-folder reads a folder"):
        DatasetSpec.model_validate({"train": "file:///d/x.jsonl", "format": "image-folder"})
    with pytest.raises(ValidationError, match="only format image-folder reads"):
        DatasetSpec.model_validate({"train": "file:///d/", "format": "classification"})
    with pytest.raises(ValidationError, match="validation: format image-folder"):
        DatasetSpec.model_validate(
            {"train": "file:///d/", "validation": "file:///v.csv", "format": "image-folder"}
        )
    with pytest.raises(ValidationError, match="not a mixture"):
        DatasetSpec.model_validate(
            {"mixture": [{"train": "file:///a.jsonl"}], "format": "image-manifest"}
        )


def test_the_task_reads_the_image_formats_only() -> None:
    assert _config().task == "image-classification"
    manifest = {"train": "file:///data/pets.csv", "format": "image-manifest"}
    assert _config(dataset=manifest).dataset.columns.image == "image"
    with pytest.raises(ValidationError, match="task image-classification reads format"):
        _config(dataset={"train": "file:///data/t.jsonl", "format": "classification"})


@pytest.mark.parametrize("method", ["prefix", "prompt", "p-tuning", "qlora", "ia3"])
def test_methods_without_meaning_for_images_are_refused_with_the_reason(method: str) -> None:
    with pytest.raises(ValidationError) as info:
        _config(method={"type": method})
    message = str(info.value)
    assert "method.type" in message
    assert "use one of freeze, full, lora" in message
    assert "virtual tokens" in message


def test_the_section_belongs_to_the_task() -> None:
    options = _config(imageClassification={"headLrMultiplier": 5, "imageSize": 64}).image_options
    assert (options.head_lr_multiplier, options.image_size, options.augment) == (5, 64, True)
    assert _config().image_options.head_lr_multiplier == 10
    with pytest.raises(ValidationError, match="imageClassification: is the recipe of task"):
        TrainerConfig.model_validate(
            {
                "jobName": "x",
                "model": {"uri": "file:///m"},
                "dataset": {"train": "file:///d.jsonl"},
                "output": {"uri": "file:///o"},
                "imageClassification": {"augment": False},
            }
        )


def test_the_planner_says_it_does_not_size_vision_models() -> None:
    from finetune_api.plan.shape import ModelShape, ShapeError

    vit = {"model_type": "vit", "image_size": 224, "hidden_size": 768, "patch_size": 16}
    with pytest.raises(ShapeError, match=r"vision model \(vit\).*not planned"):
        ModelShape.from_config(vit)
