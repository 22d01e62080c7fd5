"""The commands the operator image runs never load the training stack.

Which package may import which is import-linter's job (``.importlinter``, in ``make
lint``): the contract and the controller import no torch, transformers or peft. What it
cannot see is a command at run time: the CLI may import the trainer lazily, inside the
commands that train, so this runs the operator image's light commands in a fresh
interpreter (this test process may already have the stack loaded) and checks nothing
heavy was loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
