"""A tiny random-weight ViT image classifier for the tests: the one the image example's
prepare.py writes (examples/image-classification/prepare.py), so tests and example share
one backbone definition."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PREPARE = Path(__file__).resolve().parents[1] / "examples" / "image-classification" / "prepare.py"


def build_tiny_vit(directory: Path) -> Path:
    """A 4-block, 32x32-pixel ViT with its image processor, saved in ``directory``."""
    spec = importlib.util.spec_from_file_location("image_example_prepare", PREPARE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written: Path = module.write_tiny_vit(directory)
    return written
