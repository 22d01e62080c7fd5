"""The documentation site builds with ``mkdocs build --strict``, as `make site` and CI do:
a page missing from the nav, a broken link or a missing anchor fails here first."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None,
    reason="mkdocs and mkdocs-material are not installed (the `dev` extra has them)",
)
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mkdocs",
            "build",
            "--strict",
            "--config-file",
            str(ROOT / "mkdocs.yml"),
            "--site-dir",
            str(tmp_path / "site"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        # Material's banner about its end of life is not a warning about this site.
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1", "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("reference/api", "reference/cli", "reference/exit-codes", "concepts/validation"):
        html = (tmp_path / "site" / page / "index.html").read_text(encoding="utf-8")
        assert "<table>" in html, f"{page}: the generated table did not render"
