"""The operator side and the trainer contract import without the training stack.

The operator image carries no torch, transformers or peft, so importing them from an
operator module (or from the contract it embeds) would crash the operator at start-up.
Each check runs in a fresh interpreter: this test process may already have them loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "transformers", "peft", "accelerate", "bitsandbytes")
ROOT = Path(__file__).resolve().parents[2]
MINIMAL = ROOT / "tests" / "manifests" / "valid" / "minimal.yaml"


def heavy_modules_after(code: str) -> list[str]:
    probe = (
        f"{code}\n"
        "import json, sys\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    loaded: list[str] = json.loads(proc.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "module",
    [
        "finetune_cli.app",
        "finetune_api.crd",
        "finetune_api.resource",
        "finetune_api.manifests",
        "finetune_api.render",
        "finetune_api.docs",
        "finetune_operator.builders",
        "finetune_operator.status",
        "finetune_operator.observation.metrics",
        "finetune_operator.observation.probes",
        "finetune_operator.observation.progress",
        "finetune_operator.kube",
        "finetune_operator.reconcile",
        "finetune_operator.handlers",
        "finetune_api.config",
        "finetune_api.uri",
    ],
)
def test_import_stays_light(module: str) -> None:
    assert heavy_modules_after(f"import {module}") == []


def test_validate_crd_and_docs_commands_stay_light() -> None:
    code = (
        "import contextlib, io\n"
        "from finetune_cli.app import app\n"
        f"for args in (['validate', {str(MINIMAL)!r}], ['crd'], ['docs']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            app(args, standalone_mode=False)\n"
        "        except SystemExit as exc:\n"
        "            assert not exc.code, (args, exc.code)\n"
    )
    assert heavy_modules_after(code) == []


def test_the_probe_would_notice() -> None:
    # json is always importable; make sure a loaded module is actually reported.
    proc_modules = heavy_modules_after("import sys; sys.modules['peft'] = sys")
    assert proc_modules == ["peft"]
