"""The tree a newcomer reads: the docs' Layout page names every module, and each image ships
the contract, the CLI and its own side only.

import-linter (`make lint`, .importlinter) checks who may import whom; these check what
the documentation and the images say about the same packages.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYOUT_PAGE = ROOT / "docs" / "development" / "layout.md"
PACKAGES = {
    "api/finetune_api/": "finetune_api",
    "cli/finetune_cli/": "finetune_cli",
    "operator/finetune_operator/": "finetune_operator",
    "trainer_image/finetune_trainer/": "finetune_trainer",
}
SIDES = {
    "operator": "operator/finetune_operator",
    "trainer_image": "trainer_image/finetune_trainer",
}


def layout_rows() -> dict[str, str]:
    """The Layout page's folder table: {folder cell: the rest of the row}."""
    text = LAYOUT_PAGE.read_text(encoding="utf-8")
    section = text.split("\n## The folders\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 2 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = " | ".join(cells[1:])
    return rows


def children(package: Path) -> set[str]:
    """A package's modules (``x.py``) and subpackages (``x/``), as the Layout names them."""
    found = set()
    for path in package.iterdir():
        if path.is_file() and path.suffix == ".py" and path.name != "__init__.py":
            found.add(path.name)
        elif path.is_dir() and (path / "__init__.py").exists():
            found.add(f"{path.name}/")
    return found


@pytest.mark.parametrize("folder", sorted(PACKAGES))
def test_layout_page_names_every_module_of_each_package(folder: str) -> None:
    rows = layout_rows()
    assert folder in rows, f"docs/development/layout.md has no row for `{folder}`"
    named = set(re.findall(r"`([A-Za-z0-9_./-]+)`", rows[folder]))
    modules = children(ROOT / folder)
    assert modules - named == set(), f"`{folder}` modules missing from docs/development/layout.md"
    # nested modules may be named too (status/pods.py as `pods.py`): each must exist
    everything = {p.name for p in (ROOT / folder).rglob("*.py")} | {
        f"{p.name}/" for p in (ROOT / folder).rglob("*") if (p / "__init__.py").exists()
    }
    stale = {n for n in named if n.endswith((".py", "/")) and n not in everything}
    assert stale == set(), f"docs/development/layout.md names what `{folder}` does not hold"


def test_layout_page_names_only_folders_that_exist() -> None:
    for folder in layout_rows():
        for path in folder.split(", "):
            assert (ROOT / path.strip("`")).exists(), path


@pytest.mark.parametrize(
    ("side", "other"), [("operator", "trainer_image"), ("trainer_image", "operator")]
)
def test_each_image_copies_the_contract_the_cli_and_its_own_side_only(
    side: str, other: str
) -> None:
    dockerfile = (ROOT / side / "Dockerfile").read_text(encoding="utf-8")
    copied = re.findall(r"^COPY (?!--from)(\S+)", dockerfile, re.M)
    assert {"api/finetune_api", "cli/finetune_cli", SIDES[side]} <= set(copied)
    assert not any(src.startswith(SIDES[other]) for src in copied)


def test_a_wheel_built_from_the_operator_images_sources_has_no_trainer_code(
    tmp_path: Path,
) -> None:
    """What the operator image's `pip install .` builds, from the folders it copies."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for source in ("api/finetune_api", "cli/finetune_cli", SIDES["operator"]):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(ROOT / source, tmp_path / source, ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(tmp_path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    tops = {name.split("/", 1)[0] for name in zipfile.ZipFile(wheel).namelist()}
    packages = {t for t in tops if not t.endswith(".dist-info")}
    assert packages == {"finetune_api", "finetune_cli", "finetune_operator"}
