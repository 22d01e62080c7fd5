"""What a newcomer copies agrees with itself: each example job has its own name, every
example and the chart's NOTES name one credentials Secret, and every kubectl line the
NOTES print says which namespace it means."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHART = ROOT / "charts" / "finetune-operator"
SECRET = "s3-creds"
OTHER_STORES = {"azure-storage", "gcs-storage"}
"""The Secrets of examples for stores whose keys are not S3's (examples/azure.yaml and
examples/gcs.yaml)."""
CREATE_SECRET = re.compile(r"create secret generic (\S+)")


def example_jobs() -> list[tuple[Path, dict[str, Any]]]:
    jobs = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == "FineTuneJob":
                jobs.append((path, doc))
    return jobs


def secrets_named(spec: dict[str, Any]) -> set[str]:
    sections = [spec.get("model") or {}, spec.get("dataset") or {}, spec.get("output") or {}]
    sections += (spec.get("dataset") or {}).get("mixture") or []
    return {s["credentialsSecret"] for s in sections if s.get("credentialsSecret")}


@pytest.fixture(scope="module")
def notes() -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return {
            label: chart.render(values, name="finetune-operator", namespace="finetune-system")[
                "finetune-operator/templates/NOTES.txt"
            ]
            for label, values in {
                "defaults": {},
                "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
            }.items()
        }


def test_every_example_job_has_its_own_name() -> None:
    seen: dict[str, str] = {}
    for path, job in example_jobs():
        name = job["metadata"]["name"]
        where = str(path.relative_to(ROOT))
        assert name not in seen, f"{where} and {seen[name]} are both FineTuneJob {name!r}"
        seen[name] = where
    assert {"quickstart-s3", "quickstart-s3-resumable"} <= set(seen)


def test_examples_name_one_secret_and_create_the_one_they_name() -> None:
    named = set()
    for path, job in example_jobs():
        used = secrets_named(job["spec"])
        created = set(CREATE_SECRET.findall(path.read_text(encoding="utf-8")))
        assert created <= used, f"{path.relative_to(ROOT)}: creates {created}, names {used}"
        named |= used
    assert named - OTHER_STORES == {SECRET}


def test_notes_create_and_name_the_examples_secret(notes: dict[str, str]) -> None:
    for text in notes.values():
        assert CREATE_SECRET.findall(text) == [SECRET]
        assert set(re.findall(r"credentialsSecret: (\S+)", text)) == {SECRET}


@pytest.mark.parametrize("label", ["defaults", "namespaced"])
def test_every_kubectl_line_in_the_notes_names_its_namespace(
    notes: dict[str, str], label: str
) -> None:
    text = notes[label]
    jobs_ns = "ml" if label == "defaults" else "team-a"
    lines = [line.strip() for line in text.splitlines() if "kubectl " in line]
    commands = [line for line in lines if line.startswith(("kubectl ", "cat <<"))]
    assert len(commands) >= 6, text
    for line in commands:
        command = line.split("kubectl ", 1)[1]
        expected = "finetune-system" if "rollout status" in command else jobs_ns
        assert command.startswith(f"-n {expected} "), line
