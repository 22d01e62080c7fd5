"""Write a small randomly initialised ViT as a model directory, and the shapes data.

No pretrained vision backbone installs offline here (no wheel on the package index
carries transformers or timm vision weights, and timm and torchvision download theirs
from the network), so the examples run on this random-weight backbone: the path
(new head, learning rates, augmentation, methods, publishing) is the real one, the
starting point is not pretrained. On a cluster, point model.uri at a pretrained
checkpoint instead, e.g. hf://google/vit-base-patch16-224.

    python examples/image-classification/prepare.py [--out models/vit-tiny-random]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def write_tiny_vit(out: Path, *, image_size: int = 32, seed: int = 0) -> Path:
    """A 4-block ViT (hidden 64, patches of 4 pixels, ~0.2M parameters) with random
    weights and an image processor with ImageNet's normalisation, saved to ``out``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=image_size,
        patch_size=4,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=2,  # replaced by the run's classes (ignore_mismatched_sizes)
    )
    ViTForImageClassification(config).save_pretrained(out)
    ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models" / "vit-tiny-random")
    args = parser.parse_args()
    write_tiny_vit(args.out)
    print(f"wrote a random-weight ViT to {args.out}")
    if not (HERE / "shapes" / "train").is_dir():
        subprocess.run([sys.executable, str(HERE / "generate.py")], check=True)


if __name__ == "__main__":
    main()
