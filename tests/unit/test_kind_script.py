"""The kind smoke test (e2e/kind) cannot run here; what can be checked offline is."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from finetune_api.manifests import check_documents

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "e2e" / "kind"


def test_the_script_parses() -> None:
    subprocess.run(["bash", "-n", str(KIND / "run.sh")], check=True)


def test_the_quickstart_is_a_valid_finetunejob_reading_the_secret_the_script_creates() -> None:
    text = (KIND / "quickstart-cpu.yaml").read_text()
    (doc,) = check_documents(text, "quickstart-cpu.yaml")
    assert doc.job is not None, [str(p) for p in doc.problems]
    script = (KIND / "run.sh").read_text()
    secret = doc.job.spec.output.credentials_secret
    assert secret and f"create secret generic {secret}" in script
    assert doc.job.spec.dataset.credentials_secret == secret
    for uri in (doc.job.spec.dataset.train, doc.job.spec.dataset.validation):
        assert uri is not None
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        assert f"e2e/{bucket}" in script  # the bucket is made
        assert Path(key).name in script  # and the file copied there
    assert doc.job.metadata.name in script


def test_every_chart_value_the_script_sets_exists() -> None:
    schema = json.loads((ROOT / "charts/finetune-operator/values.schema.json").read_text())
    script = (KIND / "run.sh").read_text()
    for path in re.findall(r"--set '?([A-Za-z.]+)=", script):
        node = schema
        for part in path.split("."):
            assert part in node.get("properties", {}), f"{path}: not a chart value"
            node = node["properties"][part]


def test_minio_manifests_pin_their_images() -> None:
    images = [
        c["image"]
        for doc in yaml.safe_load_all((KIND / "minio.yaml").read_text())
        if doc and doc["kind"] == "Deployment"
        for c in doc["spec"]["template"]["spec"]["containers"]
    ]
    script_images = re.findall(r"--image=(\S+)", (KIND / "run.sh").read_text())
    for image in images + script_images:
        assert re.search(r":RELEASE\.\d{4}-\d\d-\d\dT", image), image
