"""Task image-classification's own modules: the transforms and the dataset readers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from finetune_api.config import ColumnMapping
from finetune_trainer.errors import DataError
from finetune_trainer.vision.examples import ImageExample, collate_images
from finetune_trainer.vision.images import read_image_folder, read_image_manifest, verified
from finetune_trainer.vision.transforms import ImageTransform, random_crop_box


def _half_red(width: int = 48, height: int = 40) -> Image.Image:
    """Left half red, right half blue: a flip swaps them."""
    image = Image.new("RGB", (width, height), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, width // 2, height))
    return image


def test_training_views_are_the_same_for_the_same_seed_and_differ_across_seeds() -> None:
    transform = ImageTransform(32)
    image = _half_red()

    def views(seed: int) -> list[torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        return [transform.training(image, generator) for _ in range(4)]

    assert all(torch.equal(a, b) for a, b in zip(views(0), views(0), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(views(0), views(1), strict=True))


def test_the_global_generator_makes_the_views_repeatable_after_manual_seed() -> None:
    """The loop passes no generator: the global one, which a checkpoint restores."""
    transform, image = ImageTransform(16), _half_red()
    torch.manual_seed(5)
    first = transform.training(image)
    torch.manual_seed(5)
    assert torch.equal(first, transform.training(image))


def test_shapes_and_normalisation() -> None:
    transform = ImageTransform(24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image = Image.new("RGB", (60, 30), (255, 0, 0))
    for view in (transform.training(image), transform.evaluation(image)):
        assert view.shape == (3, 24, 24)
        assert view.dtype == torch.float32
        # red (255, 0, 0) -> (1 - 0.5) / 0.5 = 1 and (0 - 0.5) / 0.5 = -1
        assert torch.allclose(view[0], torch.ones(24, 24))
        assert torch.allclose(view[1:], -torch.ones(2, 24, 24))


def test_evaluation_is_a_center_crop_and_never_random() -> None:
    transform = ImageTransform(32, mean=(0, 0, 0), std=(1, 1, 1))
    image = _half_red(64, 64)
    torch.manual_seed(0)
    a = transform.evaluation(image)
    torch.manual_seed(1)
    assert torch.equal(a, transform.evaluation(image))
    # centred: the left half of the crop is red, the right half blue
    assert a[0, :, :15].min() > 0.99 and a[2, :, 17:].min() > 0.99


def test_a_flip_swaps_left_and_right() -> None:
    """With the crop the whole image, half the draws mirror it: red moves right."""
    transform = ImageTransform(32, mean=(0, 0, 0), std=(1, 1, 1))
    image = _half_red(32, 32)
    generator = torch.Generator().manual_seed(0)
    sides = set()
    for _ in range(40):
        view = transform.training(image, generator)
        sides.add("left" if view[0, :, 0].mean() > view[0, :, -1].mean() else "right")
    assert sides == {"left", "right"}


def test_without_augmentation_training_sees_the_evaluation_view() -> None:
    transform = ImageTransform(32, augment=False)
    image = _half_red()
    assert torch.equal(transform.training(image), transform.evaluation(image))


@pytest.mark.parametrize("size", [(32, 32), (200, 20), (20, 200)])
def test_crop_boxes_stay_inside_the_image(size: tuple[int, int]) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        left, top, right, bottom = random_crop_box(size, generator)
        assert 0 <= left < right <= size[0] + 1e-6
        assert 0 <= top < bottom <= size[1] + 1e-6


def _folder(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    return root


def test_image_folder_reads_classes_from_folder_names(tmp_path: Path) -> None:
    records = read_image_folder(_folder(tmp_path / "d", {"cat": 2, "dog": 3}), "dataset.train")
    assert [r.label for r in records] == ["cat"] * 2 + ["dog"] * 3
    assert records[0].where == "cat/0.png"
    # the digest is the content's: cat/0.png and dog/0.png are the same picture
    assert len({verified(r).digest for r in records}) == 3


def test_image_folder_refuses_an_empty_class_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 2, "dog": 1})
    (root / "bird").mkdir()
    with pytest.raises(DataError, match=r"dataset.train: class folder .*bird is empty"):
        read_image_folder(root, "dataset.train")


def test_image_folder_refuses_other_files_and_stray_files(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 2, "dog": 1})
    (root / "cat" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes.txt is not an image file"):
        read_image_folder(root, "dataset.train")
    (root / "cat" / "notes.txt").unlink()
    (root / "labels.csv").write_text("x")
    with pytest.raises(DataError, match="holds files beside its class folders"):
        read_image_folder(root, "dataset.train")


def test_image_folder_needs_two_classes_and_a_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="1 class folder"):
        read_image_folder(_folder(tmp_path / "d", {"cat": 2}), "dataset.train")
    with pytest.raises(DataError, match="is not a folder"):
        read_image_folder(tmp_path / "missing", "dataset.train")


def test_a_corrupt_image_is_named_with_its_path(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 1, "dog": 1})
    (root / "dog" / "0.png").write_bytes(b"not a png")
    records = read_image_folder(root, "dataset.train")
    with pytest.raises(DataError, match=r"dog/0.png is not a readable image"):
        [verified(r) for r in records]


def test_manifest_paths_are_relative_to_the_manifest(tmp_path: Path) -> None:
    _folder(tmp_path / "images", {"cat": 1, "dog": 1})
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"img": "images/cat/0.png", "y": "cat"},
        {"img": str(tmp_path / "images/dog/0.png"), "y": 1},
    ]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    columns = ColumnMapping(image="img", label="y")
    records = read_image_manifest(manifest, ".jsonl", columns, "dataset.train")
    assert [r.path for r in records] == [
        tmp_path / "images/cat/0.png",
        tmp_path / "images/dog/0.png",
    ]
    assert [r.label for r in records] == ["cat", "1"]
    assert all(verified(r).digest for r in records)


def test_manifest_rows_with_bad_paths_or_labels_are_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    columns = ColumnMapping()
    manifest.write_text("image,label\nmissing.png,cat\n")
    (record,) = read_image_manifest(manifest, ".csv", columns, "dataset.train")
    with pytest.raises(DataError, match=r"missing.png does not exist"):
        verified(record)
    manifest.write_text("image,label\nphoto.tiff,cat\n")
    with pytest.raises(DataError, match=r"line 2: photo.tiff is not an image file"):
        read_image_manifest(manifest, ".csv", columns, "dataset.train")
    manifest.write_text("picture,label\na.png,cat\n")
    with pytest.raises(DataError, match=r"column 'image' \(dataset.columns.image\)"):
        read_image_manifest(manifest, ".csv", columns, "dataset.train")


def test_a_batch_of_images_is_pixel_values_and_class_ids(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", {"cat": 2, "dog": 1})
    transform = ImageTransform(16)
    examples = [
        ImageExample(input_ids=[], labels=[], label=i % 2, image=str(p), transform=transform)
        for i, p in enumerate(sorted(root.rglob("*.png")))
    ]
    batch = collate_images(examples)
    assert batch["pixel_values"].shape == (3, 3, 16, 16)
    assert batch["labels"].tolist() == [0, 1, 0]
