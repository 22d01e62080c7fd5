"""The real operator (finetune_operator.handlers, kopf) against an emulated Kubernetes API.

Nothing runs the Jobs here: each test plays the job controller and the kubelet, writing
Job and Pod status through ``/status`` as they would (tests/kube_api.py says what the
emulator does and does not do: it scripts ``generation``, the status subresource, label
selectors and garbage collection, which kmock lacks).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import kopf
import pytest

import finetune_operator.handlers  # noqa: F401  (registers the operator's handlers)
from finetune_api.config import TrainerConfig
from finetune_api.config.job import JobSections
from finetune_api.plan import ModelShape, Plan, plan_job
from finetune_api.plan.target import target_for
from finetune_api.resource import FineTuneJobSpec
from finetune_operator import names
from finetune_operator.kube import Kube as OperatorKube
from finetune_operator.observation.metrics import OperatorMetrics
from finetune_operator.settings import Settings
from hub_server import SMOLLM2, SMOLLM2_CONFIG, HubStandIn
from kube_api import Kube, RunningOperator, free_port, run_operator, wait_for

NS = "ml"
IMAGE = "registry.example/finetune-trainer:test"


def contract_plan(body: dict[str, Any]) -> Plan:
    """What ``finetune plan`` says of a FineTuneJob of SmolLM2 (the contract's planner)."""
    spec = FineTuneJobSpec.model_validate(body["spec"])
    sections = JobSections.model_validate(
        spec.model_dump(by_alias=True, include=set(JobSections.model_fields))
    )
    return plan_job(sections, ModelShape.from_config(SMOLLM2_CONFIG), target_for(spec))


def closed_hub() -> str:
    """A Hub endpoint nothing listens on: every request is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


def ftj(name: str = "sft", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": {"uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "dataset": {"train": "s3://data-bucket/chat/train.jsonl"},
        "output": {"uri": f"s3://artifacts-bucket/adapters/{name}"},
    }
    body.update(spec)
    return {
        "apiVersion": "finetune-operator.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


@pytest.fixture
def hub() -> Iterator[HubStandIn]:
    with HubStandIn() as stand_in:
        yield stand_in


@pytest.fixture
def operator(kube: Kube, hub: HubStandIn) -> Iterator[RunningOperator]:
    with running(kube, hub.url) as op:
        yield op


def running(kube: Kube, hub_endpoint: str | None = None) -> Any:
    """The operator, reading config.json from ``hub_endpoint`` (default: a closed port,
    so no test waits on a timeout or reaches the real Hub)."""
    memo = kopf.Memo(
        settings=Settings(
            trainer_image=IMAGE,
            trainer_service_account="finetune-trainer",
            hub_endpoint=hub_endpoint or closed_hub(),
        ),
        kube=OperatorKube(kube.api_client()),
        metrics=OperatorMetrics(),
    )
    return run_operator(kube, kopf.get_default_registry(), namespaces=[NS], memo=memo)


def status_of(kube: Kube, name: str = "sft") -> dict[str, Any]:
    obj = kube.get("FineTuneJob", NS, name) or {}
    return obj.get("status") or {}


def wait_phase(kube: Kube, phase: str, name: str = "sft", timeout: float = 10) -> dict[str, Any]:
    return wait_for(
        lambda: (s := status_of(kube, name)).get("phase") == phase and s,
        timeout,
        what=f"phase {phase}; status now {status_of(kube, name)}",
    )


def condition(status: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [c for c in status["conditions"] if c["type"] == kind]
    return found


def pod(
    name: str, owner: str = "sft", *, phase: str = "Running", ip: str = "10.0.0.7", **status: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": names.labels(owner)},
        "spec": {"containers": [{"name": "trainer", "image": IMAGE}]},
        "status": {"phase": phase, "podIP": ip, **status},
    }


def running_container() -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-22T10:00:05Z"}},
            }
        ]
    }


def terminated(exit_code: int, message: dict[str, Any] | str) -> dict[str, Any]:
    text = message if isinstance(message, str) else json.dumps(message)
    return {
        "containerStatuses": [
            {
                "name": "trainer",
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": "Completed" if exit_code == 0 else "Error",
                        "message": text,
                    }
                },
            }
        ]
    }


def start_pod(kube: Kube, name: str = "sft-abcde", owner: str = "sft", **kw: Any) -> None:
    """The job controller creates a pod; the kubelet reports it running."""
    created = pod(name, owner, **kw)
    status = created.pop("status")
    kube.create(created)
    kube.patch_status("Pod", NS, name, {**status, **running_container()})


# --------------------------------------------------------------------------- creation


def test_a_valid_job_gets_its_config_map_and_job(kube: Kube, operator: RunningOperator) -> None:
    kube.create(ftj(training={"maxSteps": 50}))

    job = wait_for(lambda: kube.get("Job", NS, "sft"), what="the Job")
    config_map = wait_for(lambda: kube.get("ConfigMap", NS, "sft-config"), what="ConfigMap")
    owner = kube.get("FineTuneJob", NS, "sft")
    assert owner is not None
    for child in (job, config_map):
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == (
            "FineTuneJob",
            "sft",
            owner["metadata"]["uid"],
        )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == IMAGE
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "finetune-trainer"
    config = TrainerConfig.from_json(config_map["data"][names.CONFIG_KEY])
    assert config.training.max_steps == 50 and config.job_name == "sft"
    assert kube.get("Service", NS, "sft") is None  # one node: no rendezvous service

    status = wait_phase(kube, "Pending")
    assert condition(status, "Validated")["status"] == "True"
    assert status["jobName"] == "sft"
    assert status["observedGeneration"] == owner["metadata"]["generation"]
    # The operator wrote only status and its own annotations: the spec is as applied.
    assert kube.get("FineTuneJob", NS, "sft")["spec"] == ftj(training={"maxSteps": 50})["spec"]


def test_a_multi_node_job_gets_an_indexed_job_and_a_headless_service(
    kube: Kube, operator: RunningOperator
) -> None:
    kube.create(ftj("wide", resources={"gpus": 2, "nodes": 3}))
    job = wait_for(lambda: kube.get("Job", NS, "wide"), what="the Job")
    assert (job["spec"]["completionMode"], job["spec"]["completions"]) == ("Indexed", 3)
    service = wait_for(lambda: kube.get("Service", NS, "wide"), what="the Service")
    assert service["spec"]["clusterIP"] == "None"


def test_an_invalid_spec_fails_with_the_field_path_and_creates_nothing(
    kube: Kube, operator: RunningOperator
) -> None:
    # What a cluster without CEL (or an older CRD) would let through: the operator checks
    # with the same models as `finetune validate`.
    kube.create(ftj("bad", method={"type": "lora", "lora": {"r": 0}}))
    status = wait_phase(kube, "Failed", "bad")
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidSpec" and "spec.method.lora.r" in failed["message"]
    assert condition(status, "Validated")["status"] == "False"
    events = wait_for(lambda: kube.events(NS, "bad"), what="an Event")
    assert any(e["reason"] == "InvalidSpec" and e["type"] == "Warning" for e in events)
    assert kube.get("Job", NS, "bad") is None
    assert kube.get("ConfigMap", NS, "bad-config") is None


def test_a_job_without_an_output_uri_is_refused(kube: Kube, operator: RunningOperator) -> None:
    spec = ftj("nowhere")
    del spec["spec"]["output"]
    kube.create(spec)
    failed = condition(wait_phase(kube, "Failed", "nowhere"), "Failed")
    assert "spec.output.uri: is required" in failed["message"]  # the contract's "path: message"
    assert kube.get("Job", NS, "nowhere") is None


# --------------------------------------------------------------------------- planning


def test_a_job_that_cannot_fit_its_gpus_fails_before_anything_is_created(
    kube: Kube, operator: RunningOperator, hub: HubStandIn
) -> None:
    huge = ftj(
        "huge",
        method={"type": "full"},
        training={"batchSize": 64, "maxSeqLength": 4096},
        resources={"gpus": 1, "gpuType": "L4"},
    )
    kube.create(huge)
    status = wait_phase(kube, "Failed", "huge")
    failed = condition(status, "Failed")
    assert failed["reason"] == "WontFit"
    message = failed["message"]
    assert message.startswith("does not fit: needs") and "per L4" in message, message
    # The contract's verdict, naming the planner's best change that fits.
    expected = contract_plan(huge)
    best = next(s for s in expected.suggestions if s.fits)
    assert message == expected.verdict and f"; {best.change} needs" in message, message
    planned = condition(status, "Planned")
    assert (planned["status"], planned["reason"], planned["message"]) == (
        "False",
        "WontFit",
        message,
    )
    assert condition(status, "Validated")["status"] == "True"  # valid, but too large
    assert status["plan"]["fits"] is False and status["plan"]["device"] == "L4"
    events = wait_for(lambda: kube.events(NS, "huge"), what="an Event")
    assert any(e["reason"] == "WontFit" and e["type"] == "Warning" for e in events), events
    assert kube.get("Job", NS, "huge") is None
    assert kube.get("ConfigMap", NS, "huge-config") is None
    assert hub.asked == [f"/{SMOLLM2}/resolve/main/config.json"]


def test_a_job_that_fits_is_created_with_its_plan(
    kube: Kube, operator: RunningOperator, hub: HubStandIn
) -> None:
    kube.create(ftj("fits", training={"maxSteps": 100}, resources={"gpus": 1, "gpuType": "H100"}))
    kube.create(ftj("again", resources={"gpus": 1}))  # same model: no second request
    wait_for(lambda: kube.get("Job", NS, "fits"), what="the Job")
    status = wait_phase(kube, "Pending", "fits")
    plan = status["plan"]
    assert plan["fits"] is True and plan["device"] == "H100"
    assert plan["memoryPerDevice"].endswith("Gi") and plan["largestTerm"]
    assert plan["steps"] == 100 and plan["estimatedSeconds"] >= 1
    assert plan["estimatedDuration"]
    planned = condition(status, "Planned")
    assert (planned["status"], planned["reason"]) == ("True", "Fits")
    assert planned["message"].startswith("fits: ")

    other = wait_phase(kube, "Pending", "again")
    assert condition(other, "Planned")["reason"] == "MemoryUnknown"  # a GPU of no known type
    assert "fits" not in other["plan"] and "estimatedDuration" not in other["plan"]  # epochs
    assert hub.asked == [f"/{SMOLLM2}/resolve/main/config.json"]


def test_a_job_whose_model_config_cannot_be_read_runs_unplanned(
    kube: Kube, operator: RunningOperator, hub: HubStandIn
) -> None:
    kube.create(ftj("gone", model={"uri": "hf://acme/no-such-model", "revision": "v2"}))
    kube.create(ftj("bucket", model={"uri": "s3://models-bucket/llama"}))
    for name in ("gone", "bucket"):
        wait_for(lambda n=name: kube.get("Job", NS, n), what=f"the Job {name}")
    gone = condition(wait_phase(kube, "Pending", "gone"), "Planned")
    assert (gone["status"], gone["reason"]) == ("Unknown", "ModelConfigUnavailable")
    assert "/acme/no-such-model/resolve/v2/config.json answered HTTP 404" in gone["message"]
    bucket = wait_phase(kube, "Pending", "bucket")
    assert condition(bucket, "Planned")["status"] == "Unknown"
    assert "hf:// models only" in condition(bucket, "Planned")["message"]
    assert "plan" not in bucket
    assert hub.asked == ["/acme/no-such-model/resolve/v2/config.json"]  # never for s3://


def test_an_unreachable_hub_costs_no_wait(kube: Kube) -> None:
    """An air-gapped cluster: the Hub refuses (here) or never answers (the 2 s timeout,
    cached for every job of the model): the Job is created all the same."""
    with running(kube, closed_hub()):
        started = time.monotonic()
        kube.create(ftj(resources={"gpus": 1, "gpuType": "L4"}))
        wait_for(lambda: kube.get("Job", NS, "sft"), what="the Job")
        assert time.monotonic() - started < 5
        planned = condition(wait_phase(kube, "Pending"), "Planned")
    assert (planned["status"], planned["reason"]) == ("Unknown", "ModelConfigUnavailable")
    assert "cannot read http://127.0.0.1:" in planned["message"]


def test_a_restarted_operator_creates_nothing_for_a_job_that_wont_fit(
    kube: Kube, hub: HubStandIn
) -> None:
    huge = ftj("huge", training={"batchSize": 64, "maxSeqLength": 4096})
    huge["spec"]["resources"] = {"gpus": 1, "gpuMemory": "4Gi"}
    with running(kube, hub.url):
        kube.create(huge)
        wait_phase(kube, "Failed", "huge")
    mark = kube.request_count()
    with running(kube, closed_hub()):  # no plan now: the refusal must stand regardless
        quiet_requests(kube, mark)
    assert kube.get("Job", NS, "huge") is None
    assert kube.get("ConfigMap", NS, "huge-config") is None
    assert condition(status_of(kube, "huge"), "Failed")["reason"] == "WontFit"


# --------------------------------------------------------------------------- life


def test_job_and_pod_states_become_status_and_events(kube: Kube, operator: RunningOperator) -> None:
    kube.create(ftj())
    wait_for(lambda: kube.get("Job", NS, "sft"), what="the Job")
    wait_phase(kube, "Pending")

    kube.patch_status("Job", NS, "sft", {"active": 1, "startTime": "2026-11-22T10:00:00Z"})
    start_pod(kube)
    status = wait_phase(kube, "Running")
    assert condition(status, "Running")["status"] == "True"
    assert status["startTime"].startswith("2026-11-22T10:00:00")

    files = [{"path": "adapter_model.safetensors", "size": 1234, "sha256": "ab" * 32}]
    message = {
        "outcome": "Succeeded",
        "reason": "Succeeded",
        "message": "",
        "exitCode": 0,
        "lastStep": 50,
        "artifactUri": "s3://artifacts-bucket/adapters/sft",
        "files": files,
        "metrics": {"evalLoss": 0.5, "evalLossBefore": 2.0},
    }
    kube.patch_status("Pod", NS, "sft-abcde", {"phase": "Succeeded", **terminated(0, message)})
    kube.patch_status(
        "Job",
        NS,
        "sft",
        {
            "active": 0,
            "succeeded": 1,
            "completionTime": "2026-11-22T11:00:00Z",
            "conditions": [
                {"type": "SuccessCriteriaMet", "status": "True"},
                {"type": "Complete", "status": "True"},
            ],
        },
    )
    status = wait_phase(kube, "Succeeded")
    assert status["artifacts"]["uri"] == "s3://artifacts-bucket/adapters/sft"
    assert status["artifacts"]["files"] == files
    assert status["metrics"]["evalLoss"] == 0.5
    assert condition(status, "Succeeded")["status"] == "True"
    assert condition(status, "Running")["status"] == "False"
    assert status["completionTime"].startswith("2026-11-22T11:00:00")

    # kopf posts Events in the background: wait for the last phase's, then check them all.
    reasons = wait_for(
        lambda: (r := [e["reason"] for e in kube.events(NS, "sft")]) and "Succeeded" in r and r,
        what=f"the Succeeded Event; Events now {[e['reason'] for e in kube.events(NS, 'sft')]}",
    )
    assert {"JobCreated", "Training", "Succeeded"} <= set(reasons), reasons  # one per phase
    # kopf's timers hold a finalizer while the progress timer runs (Running); it goes
    # with the phase, so deleting a finished FineTuneJob needs no operator.
    wait_for(
        lambda: not (kube.get("FineTuneJob", NS, "sft") or {})["metadata"].get("finalizers"),
        what="the finalizer removed after Running",
    )


def test_the_trainers_termination_message_decides_a_failure(
    kube: Kube, operator: RunningOperator
) -> None:
    kube.create(ftj())
    wait_for(lambda: kube.get("Job", NS, "sft"), what="the Job")
    kube.patch_status("Job", NS, "sft", {"active": 1})
    start_pod(kube)
    wait_phase(kube, "Running")

    message = {
        "outcome": "Failed",
        "reason": "InvalidData",
        "message": "dataset.train (s3://data-bucket/chat/train.jsonl): line 2 is not valid JSON",
        "exitCode": 3,
        "lastStep": 0,
        "artifactUri": None,
    }
    kube.patch_status("Pod", NS, "sft-abcde", {"phase": "Failed", **terminated(3, message)})
    kube.patch_status(
        "Job",
        NS,
        "sft",
        {
            "active": 0,
            "failed": 1,
            "conditions": [{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}],
        },
    )
    status = wait_phase(kube, "Failed")
    failed = condition(status, "Failed")
    assert failed["reason"] == "InvalidData"
    assert "line 2 is not valid JSON" in failed["message"]
    events = wait_for(
        lambda: [e for e in kube.events(NS, "sft") if e["type"] == "Warning"], what="Warning"
    )
    assert any(e["reason"] == "InvalidData" for e in events)


def test_suspend_and_resume(kube: Kube, operator: RunningOperator) -> None:
    kube.create(ftj())
    wait_for(lambda: kube.get("Job", NS, "sft"), what="the Job")

    kube.patch("FineTuneJob", NS, "sft", {"spec": {"suspend": True}})
    wait_for(lambda: kube.get("Job", NS, "sft")["spec"]["suspend"] is True, what="suspended Job")
    kube.patch_status("Job", NS, "sft", {"conditions": [{"type": "Suspended", "status": "True"}]})
    status = wait_phase(kube, "Suspended")
    assert condition(status, "Suspended")["status"] == "True"

    kube.patch("FineTuneJob", NS, "sft", {"spec": {"suspend": False}})
    wait_for(lambda: kube.get("Job", NS, "sft")["spec"]["suspend"] is False, what="resumed Job")


def test_a_queued_job_is_created_suspended_for_kueue(kube: Kube, operator: RunningOperator) -> None:
    kube.create(ftj(queueName="team-a"))
    job = wait_for(lambda: kube.get("Job", NS, "sft"), what="the Job")
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["labels"][names.LABEL_KUEUE_QUEUE] == "team-a"


def test_other_spec_changes_are_refused(kube: Kube, operator: RunningOperator) -> None:
    kube.create(ftj(training={"maxSteps": 50}))
    config_map = wait_for(lambda: kube.get("ConfigMap", NS, "sft-config"), what="ConfigMap")
    kube.patch("FineTuneJob", NS, "sft", {"spec": {"training": {"maxSteps": 500}}})
    events = wait_for(
        lambda: [e for e in kube.events(NS, "sft") if e["reason"] == "SpecChangeRejected"],
        what="SpecChangeRejected",
    )
    assert "spec.training.maxSteps" in events[0]["message"]
    assert kube.get("ConfigMap", NS, "sft-config")["data"] == config_map["data"]


# --------------------------------------------------------------------------- restarts


def test_a_restarted_operator_adopts_instead_of_duplicating(kube: Kube) -> None:
    with running(kube):
        kube.create(ftj())
        first = wait_for(lambda: kube.get("Job", NS, "sft"), what="the Job")
        wait_phase(kube, "Pending")
    with running(kube):
        kube.patch_status("Job", NS, "sft", {"active": 1})
        start_pod(kube)
        wait_phase(kube, "Running")
    jobs = kube.list("Job", NS)
    assert [j["metadata"]["name"] for j in jobs] == ["sft"]
    assert jobs[0]["metadata"]["uid"] == first["metadata"]["uid"]
    assert len(kube.list("ConfigMap", NS)) == 1


def test_deleting_the_finetunejob_removes_its_children(
    kube: Kube, operator: RunningOperator
) -> None:
    kube.create(ftj(resources={"nodes": 2}))
    wait_for(lambda: kube.get("Service", NS, "sft"), what="the Service")
    kube.delete("FineTuneJob", NS, "sft")
    wait_for(
        lambda: (
            not kube.list("Job", NS)
            and not kube.list("ConfigMap", NS)
            and not kube.list("Service", NS)
        ),
        timeout=20,
        what="children collected",
    )


# --------------------------------------------------------------------------- progress


def test_progress_is_read_from_the_trainers_metrics_endpoint(
    kube: Kube, operator: RunningOperator
) -> None:
    """A real trainer Telemetry serves /metrics on 127.0.0.1 (the pod's IP here)."""
    from finetune_trainer.loop import StepReport
    from finetune_trainer.telemetry import Telemetry

    telemetry = Telemetry(job_name="sft", method="lora", task="causal-lm", port=0, addr="127.0.0.1")
    try:
        telemetry.start()
        port = telemetry.port
        assert port is not None
        telemetry.on_step(
            StepReport(
                step=30,
                total_steps=120,
                epoch=0.25,
                loss=1.25,
                learning_rate=1e-4,
                tokens_per_second=2500.0,
                eta_seconds=90.0,
                grad_norm=None,
                samples=240,
            )
        )
        kube.create(ftj(training={"metricsPort": port}))
        wait_for(lambda: kube.get("Job", NS, "sft"), what="the Job")
        kube.patch_status("Job", NS, "sft", {"active": 1})
        start_pod(kube, ip="127.0.0.1")
        status = wait_for(
            lambda: (s := status_of(kube)).get("progress", {}).get("step") == 30 and s,
            what="progress from the trainer",
        )
    finally:
        telemetry.close()
    assert status["progress"]["totalSteps"] == 120
    assert status["progress"]["percent"] == 25
    assert status["progress"]["etaSeconds"] == 90
    assert status["metrics"]["trainLoss"] == 1.25


# --------------------------------------------------------------------------- API requests


def quiet_requests(kube: Kube, since: int, quiet: float = 1.5) -> list[str]:
    """The operator's requests since the mark, once it has made none for ``quiet`` s."""
    seen, settled = -1, 0.0
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        made = kube.requests_made(since)
        if len(made) != seen:
            seen, settled = len(made), time.monotonic()
        elif time.monotonic() - settled >= quiet:
            return made
        time.sleep(0.1)
    raise AssertionError(f"the operator did not settle: {kube.requests_made(since)}")


def test_requests_per_job_creating_pending_and_running(
    kube: Kube, operator: RunningOperator
) -> None:
    """Creating a FineTuneJob costs two reads of the runtimes (finetune_operator.runtime),
    its ConfigMap, its Job, one status write, one Event and kopf's annotation patch; a
    Pending job costs nothing; a pod event that changes the status costs at most one read
    and one write, and one that changes nothing costs none (the Job and pods come from
    the watches)."""
    quiet_requests(kube, 0)  # kopf's startup: discovery, lists
    mark = kube.request_count()
    kube.create(ftj())
    wait_phase(kube, "Pending")
    wait_for(lambda: kube.events(NS, "sft"), what="the JobCreated Event")
    made = quiet_requests(kube, mark)
    base = f"/apis/finetune-operator.io/v1alpha1/namespaces/{NS}/finetunejobs/sft"
    assert sorted(made) == sorted(
        [
            f"GET /apis/finetune-operator.io/v1alpha1/namespaces/{NS}/finetuneruntimes",
            "GET /apis/finetune-operator.io/v1alpha1/clusterfinetuneruntimes",
            f"POST /api/v1/namespaces/{NS}/configmaps",
            f"POST /apis/batch/v1/namespaces/{NS}/jobs",
            f"PATCH {base}/status",
            f"PATCH {base}",  # kopf: its last-handled configuration
            f"POST /api/v1/namespaces/{NS}/events",
        ]
    ), made
    # The plan went with that one status write (the model's config.json is the Hub's).
    assert status_of(kube)["plan"]["trainableParameters"] > 0
    assert condition(status_of(kube), "Planned")["status"] == "True"

    mark = kube.request_count()
    time.sleep(2)
    assert kube.requests_made(mark) == []  # Pending: no polling

    mark = kube.request_count()
    kube.patch_status("Job", NS, "sft", {"active": 1, "startTime": "2026-11-22T10:00:00Z"})
    start_pod(kube, ip="")  # no address yet: nothing to scrape
    wait_phase(kube, "Running")
    wait_for(
        lambda: any(e["reason"] == "Training" for e in kube.events(NS, "sft")),
        what="the Training Event",
    )
    made = quiet_requests(kube, mark)
    # Three changes (Job active, pod created, pod running): at most a read and a write
    # each (a read without a write when the index had not yet seen the last write), one
    # Event, and kopf's finalizer for the progress timer of a Running job.
    reads, writes = made.count(f"GET {base}"), made.count(f"PATCH {base}/status")
    assert 1 <= writes <= reads <= 3, made
    assert made.count(f"PATCH {base}") == 1, made
    assert len(made) == reads + writes + 2, made
    training = [e for e in kube.events(NS, "sft") if e["reason"] == "Training"]
    assert len(training) == 1, training

    mark = kube.request_count()
    kube.patch("Pod", NS, "sft-abcde", {"metadata": {"annotations": {"touched": "yes"}}})
    time.sleep(1.5)
    assert kube.requests_made(mark) == []
