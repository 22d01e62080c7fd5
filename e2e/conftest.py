"""Session fixtures of the end-to-end tests: everything on 127.0.0.1, nothing mocked in
the operator or the trainer.

- the Kubernetes API: kmock's emulator as scripted by tests/kube_api.py (uid, generation,
  the status subresource, selectors, garbage collection), serving the FineTuneJob CRD read
  from crds/ (the file the chart installs);
- S3: moto's standalone server (tests/s3_server.py), with the buckets the example names;
- MLflow: a real tracking server (tests/mlflow_server.py) for the happy path's tracker;
- the operator: ``finetune operator -n e2e`` as a separate process, logging in through a
  kubeconfig file, exactly as it would run outside a cluster;
- the node agent (e2e/node_agent.py): test scaffolding standing in for the Job controller
  and the kubelet, running each trainer pod as a local ``finetune train`` process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from node_agent import NodeAgent  # noqa: E402

from kube_api import CRD_PATH, Kube, Resource, free_port, serve_kube  # noqa: E402
from mlflow_server import mlflow_server  # noqa: E402
from s3_server import REGION, TEST_KEY_ID, TEST_SECRET, S3Server  # noqa: E402


def _tests_conftest() -> Any:
    """tests/conftest.py under another name (this file is ``conftest`` too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tests_conftest", REPO / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_tiny_model = _tests_conftest().build_tiny_model
NS = "e2e"
BIN = Path(sys.executable).parent


class OperatorProcess:
    """``finetune operator -n e2e`` in its own process; restartable (flow 5)."""

    def __init__(self, kubeconfig: Path, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KUBERNETES_"))}
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            FINETUNE_TRAINER_IMAGE="registry.example/finetune-trainer:e2e",
            FINETUNE_METRICS_PORT=str(free_port()),
            FINETUNE_HEALTH_PORT=str(free_port()),
            # Tiny runs finish within the default 15 s between progress scrapes.
            FINETUNE_PROGRESS_INTERVAL="2",
            PYTHONUNBUFFERED="1",
        )
        log = (self.log_dir / f"operator-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [
                str(BIN / "finetune"),
                "operator",
                "-n",
                NS,
                "--liveness",
                f"http://127.0.0.1:{free_port()}/healthz",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def kill(self) -> None:
        """SIGKILL: no cleanup, as when a node dies under the operator."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log(self) -> str:
        return "\n".join(
            p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log"))
        )


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    client = server.client()
    for bucket in ("training-data", "artifacts", "models"):
        client.create_bucket(Bucket=bucket)
    for name in ("train.jsonl", "validation.jsonl"):
        client.upload_file(
            str(REPO / "examples" / "quickstart" / name), "training-data", f"quickstart/{name}"
        )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (tests/mlflow_server.py); yields its URL."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="session")
def tiny_model(s3: S3Server, workdir: Path) -> tuple[str, Path]:
    """The tiny Llama of tests/conftest.py, uploaded: (its s3:// URI, its local copy)."""
    directory = build_tiny_model(workdir / "tiny-model")
    client = s3.client()
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            client.upload_file(str(path), "models", f"tiny/{path.relative_to(directory)}")
    return "s3://models/tiny", directory


CHART_CRD = (
    REPO
    / "charts"
    / "finetune-operator"
    / "files"
    / "crds"
    / ("finetunejobs.finetune-operator.io.yaml")
)


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    # The emulator serves FineTuneJobs as crds/ declares them (tests/kube_api.py); the
    # chart installs its own copy, which must be that same file.
    assert CHART_CRD.read_bytes() == CRD_PATH.read_bytes(), "make crd: the chart's CRD is stale"
    crd = Resource("apiextensions.k8s.io", "v1", "customresourcedefinitions", namespaced=False)
    with serve_kube(kinds={"CustomResourceDefinition": crd}) as k:
        yield k


@pytest.fixture(scope="session")
def kubeconfig(kube: Kube, workdir: Path) -> Path:
    path = kube.write_kubeconfig(workdir / "kubeconfig", NS, "e2e")
    # The chart's CRD, installed with kubectl as `helm install` would create it.
    installed = subprocess.run(
        [kubectl(), "apply", "--validate=false", "-f", str(CHART_CRD)],
        env=kubectl_env(path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert installed.returncode == 0, installed.stderr
    return path


@pytest.fixture(scope="session")
def s3_secret(kube: Kube, s3: S3Server) -> str:
    """The credentials Secret the example names, as a user would create it."""
    import base64

    values = {
        "AWS_ACCESS_KEY_ID": TEST_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": TEST_SECRET,
        "AWS_ENDPOINT_URL": s3.endpoint,
        "AWS_S3_ADDRESSING_STYLE": "path",
        "AWS_REGION": REGION,
    }
    kube.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-creds", "namespace": NS},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()},
        }
    )
    return "s3-creds"


@pytest.fixture(scope="session")
def operator(kubeconfig: Path, workdir: Path, s3_secret: str) -> Iterator[OperatorProcess]:
    logs = workdir / "operator-logs"
    logs.mkdir()
    op = OperatorProcess(kubeconfig, logs)
    op.start()
    time.sleep(1)
    yield op
    op.stop()
    if os.environ.get("E2E_SHOW_LOGS"):
        print(op.log())


@pytest.fixture(scope="session")
def agent(kube: Kube, s3: S3Server, workdir: Path) -> Iterator[NodeAgent]:
    env = {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        # The pod's own AWS settings come from the mounted Secret; these keep the
        # machine's ~/.aws and the instance metadata service out of it.
        "AWS_CONFIG_FILE": str(workdir / "aws-config-absent"),
        "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "aws-credentials-absent"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "FINETUNE_S3_CONNECT_TIMEOUT": "1",
    }
    node = NodeAgent(kube, NS, workdir / "node", env)
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="session")
def cluster(operator: OperatorProcess, agent: NodeAgent, kube: Kube) -> dict[str, Any]:
    return {"operator": operator, "agent": agent, "kube": kube}


def kubectl_env(kubeconfig: Path) -> dict[str, str]:
    """kubectl's environment: its discovery cache goes under HOME, kept in the tmp dir."""
    return {
        "KUBECONFIG": str(kubeconfig),
        "HOME": str(kubeconfig.parent / "home"),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }


def kubectl() -> str:
    found = shutil.which("kubectl") or shutil.which("kubectl", path=str(BIN))
    if found is None:
        pytest.skip("kubectl is not on PATH")
    return found
