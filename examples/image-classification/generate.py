"""Generate the shapes dataset: coloured shapes on noisy backgrounds, one class per shape.

Four classes (circle, square, triangle, cross), each image 32x32 with one shape of a
random light colour and a random size, near the centre, on a noisy background of a
random dark colour: the colour says nothing about the class, the outline does, which a
small vision model learns from scratch in a minute or two on a CPU. Written as the image-folder layout
(shapes/train/<class>/NNN.png, shapes/validation/<class>/NNN.png) and, for the
image-manifest example, as shapes/train.csv and shapes/validation.csv listing the same
files with their labels.

    python examples/image-classification/generate.py [--per-class 100] [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 32
NOISE = 30
"""How far each background pixel strays from the background colour, per channel."""
CLASSES = ("circle", "cross", "square", "triangle")
HERE = Path(__file__).resolve().parent


def _colour(rng: random.Random, low: int, high: int) -> tuple[int, int, int]:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


def draw(shape: str, rng: random.Random) -> Image.Image:
    """One image of ``shape``: a dark noisy background and the shape on it in a light
    colour, of a random size, near the centre."""
    background = _colour(rng, 0, 100)
    image = Image.new("RGB", (SIZE, SIZE))
    image.putdata(
        [
            tuple(max(0, min(255, c + rng.randint(-NOISE, NOISE))) for c in background)
            for _ in range(SIZE * SIZE)
        ]
    )
    pen = ImageDraw.Draw(image)
    colour = _colour(rng, 155, 255)
    side = rng.randint(18, 26)
    slack = SIZE - side
    left = rng.randint(slack // 2 - 2, slack // 2 + 2)
    top = rng.randint(slack // 2 - 2, slack // 2 + 2)
    box = (left, top, left + side, top + side)
    if shape == "circle":
        pen.ellipse(box, fill=colour)
    elif shape == "square":
        pen.rectangle(box, fill=colour)
    elif shape == "triangle":
        corners = [(left, top + side), (left + side, top + side), (left + side // 2, top)]
        pen.polygon(corners, fill=colour)
    else:
        bar = max(4, side // 3)
        middle = side // 2 - bar // 2
        pen.rectangle((left + middle, top, left + middle + bar, top + side), fill=colour)
        pen.rectangle((left, top + middle, left + side, top + middle + bar), fill=colour)
    return image


def write_split(out: Path, split: str, per_class: int, rng: random.Random) -> None:
    """``out/<split>/<class>/NNN.png`` and ``out/<split>.csv`` (image, label)."""
    rows = []
    for shape in CLASSES:
        folder = out / split / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            name = f"{i:03d}.png"
            draw(shape, rng).save(folder / name)
            rows.append({"image": f"{split}/{shape}/{name}", "label": shape})
    rng.shuffle(rows)
    with (out / f"{split}.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=100, help="training images per class")
    parser.add_argument("--out", type=Path, default=HERE / "shapes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    write_split(args.out, "train", args.per_class, rng)
    write_split(args.out, "validation", max(1, args.per_class // 4), rng)
    print(f"wrote {len(CLASSES)} classes x {args.per_class} training images to {args.out}")


if __name__ == "__main__":
    main()
