"""The CLI as a user installs it: `pip install` of the built wheel into a clean venv.

The release workflow builds the wheel and runs it the same way on GitHub; this test is
the local twin (``make test`` runs it, CI with it). The wheel is built from a copy of
exactly what the images copy (pyproject.toml, README.md, the four packages), so a file
missing from the wheel's package data fails here, not in a user's venv. The venv gets
the core dependencies only (pydantic, pyyaml, typer): ``finetune --version`` and
``finetune validate`` must work without torch or kopf, and the contract's data files
(the CRD schema's sources, the model presets catalogue) must be inside the wheel.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PACKAGES = {
    "api": "finetune_api",
    "cli": "finetune_cli",
    "operator": "finetune_operator",
    "trainer_image": "finetune_trainer",
}
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _run(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command, failing the test with its output when it fails."""
    done = subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=cwd, timeout=600
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def _source_copy(dest: Path) -> Path:
    """What the images build from, and nothing else (no build/ or egg-info in the repo)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, dest / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for where, package in PACKAGES.items():
        shutil.copytree(REPO / where / package, dest / where / package, ignore=ignore)
    return dest


def _data_files() -> set[str]:
    """Every non-Python file of the contract package, as wheel paths."""
    root = REPO / "api"
    return {
        p.relative_to(root).as_posix()
        for p in (root / "finetune_api").rglob("*")
        if p.is_file() and p.suffix in {".yaml", ".yml", ".json"}
    }


def test_the_wheel_installs_clean_and_runs(tmp_path: Path) -> None:
    source = _source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source)
    (wheel,) = wheels.glob("*.whl")
    assert wheel.name == f"finetune_operator-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        inside = set(archive.namelist())
    assert _data_files() <= inside, f"missing from the wheel: {_data_files() - inside}"

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    _run(venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", wheel)

    # Core dependencies only: neither the training stack nor the operator's.
    listed = _run(venv / "bin" / "pip", "list", "--format=freeze").stdout.lower()
    for heavy in ("torch", "transformers", "kopf", "kubernetes"):
        assert f"\n{heavy}==" not in f"\n{listed}", heavy

    assert _run(venv / "bin" / "finetune", "--version").stdout.strip() == f"finetune {VERSION}"
    _run(venv / "bin" / "finetune", "--help")
    # Run from elsewhere, so only the installed package can answer.
    checked = _run(
        venv / "bin" / "finetune", "validate", REPO / "examples" / "quickstart.yaml", cwd=tmp_path
    )
    assert "quickstart" in checked.stdout + checked.stderr
