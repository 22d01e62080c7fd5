"""End-to-end flows, each asserted through the Kubernetes API as a user would see it.

The cluster is e2e/conftest.py's: the emulated API server, moto's S3, the operator as a
separate process and the node agent running trainer pods as local processes. The
manifests are examples/quickstart-s3.yaml with two substitutions a laptop needs: the
model is the tiny Llama of tests/conftest.py uploaded to the bucket (SmolLM2 from the Hub
is neither reachable nor fast here) and ``maxSteps`` cuts the run short.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from conftest import NS, REPO, free_port, kubectl, kubectl_env
from finetune_api.manifests import load_yaml_documents
from kube_api import Kube, wait_for

EXAMPLE = REPO / "examples" / "quickstart-s3.yaml"
TOTAL = 100
"""Steps of the happy path: ~30 s of training on a CPU, two of the operator's 15 s scrapes."""
SHORT = 60
"""Steps of the interrupted runs: the example checkpoints every 20 steps."""


def manifest(name: str, model_uri: str, *, max_steps: int = 12, **training: Any) -> dict[str, Any]:
    """examples/quickstart-s3.yaml, renamed, with the tiny model and a short run.

    Read as kubectl reads it (YAML 1.2 scalars: ``learningRate: 1e-3`` is a number), not
    with PyYAML's YAML 1.1 rules, which keep ``1e-3`` a string the API server refuses."""
    body = load_yaml_documents(EXAMPLE.read_text(), str(EXAMPLE))[0]
    body["metadata"] = {"name": name, "namespace": NS}
    # The tiny model lives in the same bucket store as the data, behind the same Secret.
    body["spec"]["model"] = {"uri": model_uri, "credentialsSecret": "s3-creds"}
    body["spec"]["output"]["uri"] = f"s3://artifacts/adapters/{name}"
    body["spec"]["training"].update(
        {"maxSteps": max_steps, "metricsPort": free_port(), "batchSize": 4, "maxSeqLength": 64}
    )
    body["spec"]["training"].update(training)
    body["spec"]["evaluation"] = {"exactMatchSamples": 4, "maxNewTokens": 4}
    return body


def status(kube: Kube, name: str) -> dict[str, Any]:
    return ((kube.get("FineTuneJob", NS, name) or {}).get("status")) or {}


def wait_phase(kube: Kube, name: str, *phases: str, timeout: float = 180) -> dict[str, Any]:
    return wait_for(
        lambda: (s := status(kube, name)).get("phase") in phases and s,
        timeout,
        interval=0.2,
        what=f"{name} in {phases}; status now {json.dumps(status(kube, name))}",
    )


def cond(s: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in s.get("conditions") or [] if c["type"] == kind)


def s3_json(s3: Any, bucket: str, key: str) -> Any:
    return json.loads(s3.client().get_object(Bucket=bucket, Key=key)["Body"].read())


def keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def wait_checkpoint(s3: Any, name: str) -> None:
    """Until the job's first complete checkpoint (its manifest is written last) is in S3."""
    prefix = f"adapters/{name}/checkpoints/"
    wait_for(
        lambda: any(k.endswith("manifest.json") for k in keys(s3, "artifacts", prefix)),
        240,
        interval=0.2,
        what="a first complete checkpoint",
    )


def trained_steps(output: str) -> list[int]:
    """The steps a trainer logged (one JSON line per optimizer step)."""
    steps = []
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event", "step") == "step" and "step" in record:
            steps.append(int(record["step"]))
    return steps


# --------------------------------------------------------------------------- flow 1


def test_happy_path(
    cluster: Any, kube: Kube, s3: Any, tiny_model: Any, workdir: Path, mlflow: str
) -> None:
    """kubectl apply → Running with progress → Succeeded; the bucket holds what the
    manifest lists, with matching checksums, and the adapter loads onto the base model.
    The run is tracked in MLflow, and the status links to its page."""
    model_uri, model_dir = tiny_model
    name = "happy"
    path = workdir / "happy.yaml"
    body = manifest(name, model_uri, max_steps=TOTAL)
    body["spec"]["tracking"] = {"mlflow": {"trackingUri": mlflow, "experiment": "e2e"}}
    path.write_text(yaml.safe_dump(body))
    env = kubectl_env(cluster["operator"].kubeconfig)
    applied = subprocess.run(
        [kubectl(), "apply", "--validate=false", "-f", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr
    assert "finetunejob.finetune-operator.io/happy created" in applied.stdout

    running = wait_phase(kube, name, "Running", "Succeeded")
    seen = []
    tracked_while_running: dict[str, str] = {}
    deadline = time.monotonic() + 300
    while (s := status(kube, name)).get("phase") == "Running" and time.monotonic() < deadline:
        step = (s.get("progress") or {}).get("step")
        if step is not None and step not in seen:
            seen.append(step)
        tracked_while_running.update(s.get("trackers") or {})
        time.sleep(0.5)
    final = wait_phase(kube, name, "Succeeded", "Failed", timeout=30)
    assert final["phase"] == "Succeeded", json.dumps(final)
    assert running
    assert seen, "no progress was reported while Running"
    # The operator scrapes the trainer every 15 s: at least one reading while it ran,
    # below the end, and the final one at the end.
    assert seen == sorted(seen) and seen[0] < TOTAL
    assert final["progress"]["step"] == TOTAL

    # The artifacts the status names are in the bucket, checksums matching the manifest.
    prefix = f"adapters/{name}/"
    stored = keys(s3, "artifacts", prefix)
    names = {k.removeprefix(prefix) for k in stored}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "metrics.json",
        "manifest.json",
    } <= names
    published = s3_json(s3, "artifacts", prefix + "manifest.json")
    for entry in published["files"]:
        body = s3.client().get_object(Bucket="artifacts", Key=prefix + entry["path"])["Body"]
        assert hashlib.sha256(body.read()).hexdigest() == entry["sha256"], entry["path"]
    assert final["artifacts"]["uri"] == f"s3://artifacts/adapters/{name}"
    by_path = {f["path"]: f["sha256"] for f in published["files"]}
    for f in final["artifacts"]["files"]:
        assert by_path[f["path"]] == f["sha256"]
    metrics = s3_json(s3, "artifacts", prefix + "metrics.json")
    assert metrics

    # The adapter loads onto the base model.
    adapter = workdir / "happy-adapter"
    adapter.mkdir()
    for key in stored:
        rel = key.removeprefix(prefix)
        if "/" not in rel:
            s3.client().download_file("artifacts", key, str(adapter / rel))
    import peft
    import transformers

    base = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    loaded = peft.PeftModel.from_pretrained(base, adapter)
    assert any("lora" in n for n, _ in loaded.named_parameters())

    # MLflow: the run's page is in the status from the first scrape on, and the run
    # holds every step and where the adapter was published.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow)
    experiment = client.get_experiment_by_name("e2e")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    page = f"{mlflow}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
    assert tracked_while_running == {"mlflow": page}
    assert final["trackers"] == {"mlflow": page}
    assert run.info.status == "FINISHED"
    assert run.data.tags["finetune.artifactUri"] == f"s3://artifacts/adapters/{name}"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(m.step for m in losses) == list(range(1, TOTAL + 1))


# --------------------------------------------------------------------------- flow 2


def test_preemption_resumes_from_the_s3_checkpoint(
    cluster: Any, kube: Kube, s3: Any, tiny_model: Any
) -> None:
    """The agent preempts the trainer mid-run; the Job retries without counting, the new
    pod resumes from the newest S3 checkpoint and trains only the steps left."""
    agent = cluster["agent"]
    name = "preempt"
    total = SHORT
    kube.create(manifest(name, tiny_model[0], max_steps=total))
    # checkpoints every 20 steps (the example's checkpointEvery)
    wait_checkpoint(s3, name)
    pod = agent.disrupt(name, signal.SIGTERM)
    final = wait_phase(kube, name, "Succeeded", "Failed", timeout=300)
    assert final["phase"] == "Succeeded", json.dumps(final)
    pods = kube.list("Pod", NS, label_selector=f"batch.kubernetes.io/job-name={name}")
    assert len(pods) == 2, [p["metadata"]["name"] for p in pods]
    second = next(p["metadata"]["name"] for p in pods if p["metadata"]["name"] != pod)
    before, after = trained_steps(agent.output(pod)), trained_steps(agent.output(second))
    log = agent.output(second)
    assert "resum" in log.lower(), log[-3000:]
    assert after and after[0] > 1 and after[-1] == total
    assert len(after) < total
    assert before and before[-1] >= after[0] - 1
    job = kube.get("Job", NS, name)
    assert job is not None and not job["status"].get("failed")


# --------------------------------------------------------------------------- flow 3


def test_invalid_manifest(cluster: Any, kube: Kube, tiny_model: Any) -> None:
    """An invalid spec: Failed/InvalidSpec, no Job, a Warning Event naming the field."""
    name = "invalid"
    body = manifest(name, tiny_model[0])
    body["spec"]["training"]["learningRate"] = -1
    kube.create(body)
    s = wait_phase(kube, name, "Failed", timeout=60)
    assert cond(s, "Failed")["reason"] == "InvalidSpec"
    assert "learningRate" in cond(s, "Failed")["message"]
    events = wait_for(lambda: kube.events(NS, name), 10, what="an Event")
    assert any(e.get("type") == "Warning" for e in events), events
    time.sleep(1)
    assert kube.get("Job", NS, name) is None


# --------------------------------------------------------------------------- flow 4


def test_invalid_data_fails_at_once(cluster: Any, kube: Kube, s3: Any, tiny_model: Any) -> None:
    """A trainer exit 3 (InvalidData): Failed at once, no retry, reason and message from
    the termination message."""
    s3.client().put_object(
        Bucket="training-data", Key="broken/train.jsonl", Body=b'{"messages": [\nnot json\n'
    )
    name = "baddata"
    body = manifest(name, tiny_model[0])
    body["spec"]["dataset"]["train"] = "s3://training-data/broken/train.jsonl"
    kube.create(body)
    s = wait_phase(kube, name, "Failed", "Succeeded", timeout=180)
    assert s["phase"] == "Failed", json.dumps(s)
    failed = cond(s, "Failed")
    assert failed["reason"] == "InvalidData", failed
    assert "broken/train.jsonl" in failed["message"], failed
    pods = kube.list("Pod", NS, label_selector=f"batch.kubernetes.io/job-name={name}")
    assert len(pods) == 1
    time.sleep(2)
    assert len(kube.list("Pod", NS, label_selector=f"batch.kubernetes.io/job-name={name}")) == 1


# --------------------------------------------------------------------------- flow 5


def test_operator_restart_mid_job(cluster: Any, kube: Kube, tiny_model: Any) -> None:
    """SIGKILL the operator while a job runs and start it again: the job keeps its one
    Job (adopted, not recreated) and completes."""
    operator = cluster["operator"]
    name = "restart"
    kube.create(manifest(name, tiny_model[0], max_steps=SHORT))
    job = wait_for(lambda: kube.get("Job", NS, name), 60, what="the Job")
    wait_phase(kube, name, "Running", timeout=120)
    operator.kill()
    time.sleep(1)
    operator.start()
    final = wait_phase(kube, name, "Succeeded", "Failed", timeout=300)
    assert final["phase"] == "Succeeded", json.dumps(final)
    jobs = kube.list("Job", NS, label_selector=f"finetune-operator.io/job={name}") or [
        j for j in kube.list("Job", NS) if j["metadata"]["name"] == name
    ]
    assert len(jobs) == 1
    assert jobs[0]["metadata"]["uid"] == job["metadata"]["uid"]


# --------------------------------------------------------------------------- flow 6


def test_suspend_and_resume(cluster: Any, kube: Kube, s3: Any, tiny_model: Any) -> None:
    """spec.suspend: true stops the trainer (checkpoint saved) and the phase is Suspended;
    clearing it starts a new pod that resumes and the job succeeds."""
    agent = cluster["agent"]
    name = "suspend"
    total = SHORT
    kube.create(manifest(name, tiny_model[0], max_steps=total))
    wait_checkpoint(s3, name)
    kube.patch("FineTuneJob", NS, name, {"spec": {"suspend": True}})
    s = wait_phase(kube, name, "Suspended", timeout=120)
    assert cond(s, "Suspended")["status"] == "True"
    wait_for(
        lambda: not kube.list("Pod", NS, label_selector=f"batch.kubernetes.io/job-name={name}"),
        60,
        what="the pod to go",
    )
    kube.patch("FineTuneJob", NS, name, {"spec": {"suspend": False}})
    final = wait_phase(kube, name, "Succeeded", "Failed", timeout=300)
    assert final["phase"] == "Succeeded", json.dumps(final)
    state = next(st for st in agent.jobs.values() if st.name == name)
    assert len(state.pods) == 2
    assert "resum" in agent.output(state.pods[1]).lower()
