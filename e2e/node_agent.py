"""Test scaffolding, not product: a tiny stand-in for the Job controller and the kubelet.

The emulator (tests/kube_api.py) stores objects but runs nothing. This agent polls the
Jobs the operator labels as its own and, for each, does what a cluster would:

- **Job controller**: an unsuspended Job without a live pod gets one, built from
  ``job.spec.template`` (named ``<job>-<attempt>``, labelled with
  ``batch.kubernetes.io/job-name``, owned by the Job). When the pod ends it writes the
  Job's status: ``active``/``succeeded``/``failed``, ``startTime``/``completionTime`` and
  the ``Complete``/``Failed`` conditions, honouring ``podFailurePolicy`` the way
  Kubernetes does: a ``FailJob`` exit code fails the Job at once (reason
  ``PodFailurePolicy``), an ``Ignore`` rule (a ``DisruptionTarget`` pod condition, exit
  143) retries without counting, anything else counts against ``backoffLimit``.
  ``spec.suspend: true`` stops the pod (SIGTERM) and deletes it, setting ``Suspended``;
  lifting it starts a new pod.
- **kubelet**: the pod's volumes are materialised in a directory per pod (ConfigMap and
  Secret keys as files, emptyDirs as directories) and the container's mount paths are
  rewritten to it; the container's command runs as a local process with the pod's env
  (plus ``extra_env``: PATH to this virtualenv, AWS settings that keep ~/.aws out), its
  termination message goes to a file (``FINETUNE_TERMINATION_LOG``), and the pod status
  goes Running (``startedAt``) → Succeeded/Failed with ``exitCode`` and that message as
  ``message``. A deleted pod or Job gets its process killed.

Only what the operator's single-node jobs use is done: one container, no PVCs, no
Indexed Jobs, no images (the command runs from this virtualenv).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import logging
import os
import shutil
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kube_api import ApiError, Kube

log = logging.getLogger("node_agent")

MANAGED = "app.kubernetes.io/managed-by=finetune-operator"
JOB_NAME = "batch.kubernetes.io/job-name"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Attempt:
    pod: str
    root: Path
    proc: subprocess.Popen[bytes]
    disrupted: bool = False
    suspending: bool = False


@dataclass
class JobState:
    uid: str
    name: str
    attempts: int = 0
    failed: int = 0
    current: Attempt | None = None
    finished: bool = False
    suspended: bool = False
    pods: list[str] = field(default_factory=list)


class NodeAgent:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        root: Path,
        extra_env: dict[str, str],
        interval: float = 0.2,
    ) -> None:
        self.kube = kube
        self.ns = namespace
        self.root = root
        self.extra_env = extra_env
        self.interval = interval
        self.jobs: dict[str, JobState] = {}
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-agent", daemon=True)

    # lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for state in self.jobs.values():
            if state.current is not None:
                self._kill(state.current)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self._lock:
                    self.tick()
            except Exception as e:  # keep serving; the tests read .errors
                log.exception("node agent tick failed")
                self.errors.append(e)

    # what tests ask for -----------------------------------------------------------------

    def disrupt(self, job: str, sig: int = signal.SIGTERM) -> str:
        """Preempt the running pod of ``job``: DisruptionTarget=True, then ``sig``."""
        with self._lock:
            state = next(s for s in self.jobs.values() if s.name == job and s.current)
            attempt = state.current
            assert attempt is not None
            attempt.disrupted = True
            self.kube.patch_status(
                "Pod",
                self.ns,
                attempt.pod,
                {
                    "conditions": [
                        {
                            "type": "DisruptionTarget",
                            "status": "True",
                            "reason": "PreemptionByScheduler",
                            "message": "e2e: preempted by the node agent",
                            "lastTransitionTime": now(),
                        }
                    ]
                },
            )
            attempt.proc.send_signal(sig)
            return attempt.pod

    def output(self, pod: str) -> str:
        """What a pod's process wrote (stdout and stderr)."""
        path = self.root / pod / "output.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # the loop ---------------------------------------------------------------------------

    def tick(self) -> None:
        jobs = self.kube.list("Job", self.ns, label_selector=MANAGED)
        seen = set()
        for job in jobs:
            uid = job["metadata"]["uid"]
            seen.add(uid)
            state = self.jobs.setdefault(uid, JobState(uid, job["metadata"]["name"]))
            if not state.finished:
                self._reconcile(job, state)
        for uid, state in self.jobs.items():  # Jobs deleted (or collected): kill their pods
            if uid not in seen and state.current is not None:
                self._kill(state.current)
                state.current = None
                state.finished = True

    def _reconcile(self, job: dict[str, Any], state: JobState) -> None:
        name = job["metadata"]["name"]
        suspend = bool(job["spec"].get("suspend"))
        attempt = state.current
        if attempt is not None and self.kube.get("Pod", self.ns, attempt.pod) is None:
            self._kill(attempt)  # the pod was deleted by someone
            state.current = attempt = None
        if attempt is not None:
            if suspend and not attempt.suspending:
                attempt.suspending = True
                attempt.proc.send_signal(signal.SIGTERM)
            code = attempt.proc.poll()
            if code is not None:
                self._finished(job, state, attempt, code)
            return
        if suspend:
            if not state.suspended:
                state.suspended = True
                self._job_status(
                    name,
                    {"active": 0, "ready": 0},
                    condition("Suspended", "True", "JobSuspended", "Job suspended"),
                )
            return
        if state.suspended:
            state.suspended = False
            self._job_status(name, {}, condition("Suspended", "False", "JobResumed", "Job resumed"))
        self._start_pod(job, state)

    # pods ---------------------------------------------------------------------------------

    def _start_pod(self, job: dict[str, Any], state: JobState) -> None:
        name = job["metadata"]["name"]
        template = job["spec"]["template"]
        pod_name = f"{name}-{state.attempts}"
        state.attempts += 1
        labels = {**(template.get("metadata") or {}).get("labels", {}), JOB_NAME: name}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": self.ns,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": job["metadata"]["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": template["spec"],
        }
        self.kube.create(pod)
        root = self.root / pod_name
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        mounts = self._materialise(template["spec"], root)
        container = template["spec"]["containers"][0]
        env = dict(self.extra_env)
        for var in container.get("env") or []:
            if "value" in var:
                env[var["name"]] = rewrite(var["value"], mounts)
        termination_log = root / "termination-log"
        env["FINETUNE_TERMINATION_LOG"] = str(termination_log)
        command = [rewrite(arg, mounts) for arg in container["command"] + container.get("args", [])]
        output = (root / "output.log").open("wb")
        proc = subprocess.Popen(
            command,
            env=env,
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        state.current = Attempt(pod_name, root, proc)
        state.pods.append(pod_name)
        started = now()
        self.kube.patch_status(
            "Pod",
            self.ns,
            pod_name,
            {
                "phase": "Running",
                "podIP": "127.0.0.1",
                "startTime": started,
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {
                        "name": container["name"],
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": started}},
                    }
                ],
            },
        )
        status: dict[str, Any] = {"active": 1, "ready": 1}
        current = (self.kube.get("Job", self.ns, name) or {}).get("status") or {}
        if not current.get("startTime"):
            status["startTime"] = started
        self._job_status(name, status)

    def _materialise(self, spec: dict[str, Any], root: Path) -> dict[str, str]:
        """Volumes → directories under ``root``; returns mountPath → local directory."""
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts: dict[str, str] = {}
        for mount in spec["containers"][0].get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            local = root / "fs" / mount["mountPath"].lstrip("/")
            local.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                cm = self.kube.get("ConfigMap", self.ns, volume["configMap"]["name"]) or {}
                for key, value in (cm.get("data") or {}).items():
                    (local / key).write_text(value)
            elif "secret" in volume:
                secret = self.kube.get("Secret", self.ns, volume["secret"]["secretName"]) or {}
                for key, value in (secret.get("data") or {}).items():
                    (local / key).write_bytes(base64.b64decode(value))
                for key, value in (secret.get("stringData") or {}).items():
                    (local / key).write_text(value)
            mounts[mount["mountPath"]] = str(local)
        return mounts

    def _finished(self, job: dict[str, Any], state: JobState, attempt: Attempt, code: int) -> None:
        name = job["metadata"]["name"]
        state.current = None
        path = attempt.root / "termination-log"
        message = path.read_text(errors="replace") if path.exists() else ""
        if not message and code != 0:  # FallbackToLogsOnError
            message = self.output(attempt.pod)[-2048:]
        ended = now()
        pod_status = {
            "phase": "Succeeded" if code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": job["spec"]["template"]["spec"]["containers"][0]["name"],
                    "ready": False,
                    "started": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": code if code >= 0 else 128 - code,
                            "reason": "Completed" if code == 0 else "Error",
                            "message": message,
                            "finishedAt": ended,
                        }
                    },
                }
            ],
        }
        self._pod_status(attempt.pod, pod_status)
        exit_code = code if code >= 0 else 128 - code
        if attempt.suspending:  # suspension: the pod goes, nothing counts
            self._delete_pod(attempt.pod)
            return
        if code == 0:
            state.finished = True
            self._job_status(
                name,
                {"active": 0, "ready": 0, "succeeded": 1, "completionTime": ended},
                condition(
                    "SuccessCriteriaMet",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
                condition(
                    "Complete",
                    "True",
                    "CompletionsReached",
                    "Reached expected number of succeeded pods",
                ),
            )
            return
        action = self._policy(job, exit_code, attempt.disrupted)
        if action == "FailJob":
            state.failed += 1
            state.finished = True
            text = (
                f"Container {pod_status['containerStatuses'][0]['name']} for pod "
                f"{self.ns}/{attempt.pod} failed with exit code {exit_code} matching FailJob rule"
            )
            self._job_status(
                name,
                {"active": 0, "ready": 0, "failed": state.failed},
                condition("FailureTarget", "True", "PodFailurePolicy", text),
                condition("Failed", "True", "PodFailurePolicy", text),
            )
            return
        if action == "Ignore":
            self._job_status(name, {"active": 0, "ready": 0})
            return  # the next tick starts a new pod
        state.failed += 1
        if state.failed > int(job["spec"].get("backoffLimit", 6)):
            state.finished = True
            text = "Job has reached the specified backoff limit"
            self._job_status(
                name,
                {"active": 0, "ready": 0, "failed": state.failed},
                condition("FailureTarget", "True", "BackoffLimitExceeded", text),
                condition("Failed", "True", "BackoffLimitExceeded", text),
            )
        else:
            self._job_status(name, {"active": 0, "ready": 0, "failed": state.failed})

    @staticmethod
    def _policy(job: dict[str, Any], exit_code: int, disrupted: bool) -> str:
        """The first matching podFailurePolicy rule's action, else "Count"."""
        for rule in (job["spec"].get("podFailurePolicy") or {}).get("rules") or []:
            on_codes = rule.get("onExitCodes")
            if on_codes is not None:
                values = on_codes.get("values") or []
                hit = exit_code in values
                if on_codes.get("operator") == "NotIn":
                    hit = exit_code not in values
                if hit:
                    return str(rule["action"])
            for cond in rule.get("onPodConditions") or []:
                if cond.get("type") == "DisruptionTarget" and disrupted:
                    return str(rule["action"])
        return "Count"

    # API writes ---------------------------------------------------------------------------

    def _pod_status(self, pod: str, status: dict[str, Any]) -> None:
        try:
            self.kube.patch_status("Pod", self.ns, pod, status)
        except ApiError as e:
            if e.status != 404:
                raise

    def _delete_pod(self, pod: str) -> None:
        try:
            self.kube.delete("Pod", self.ns, pod)
        except ApiError as e:
            if e.status != 404:
                raise

    def _job_status(self, job: str, status: dict[str, Any], *conditions: dict[str, Any]) -> None:
        """Merge ``status``; conditions are merged by type (a merge patch replaces lists)."""
        current = self.kube.get("Job", self.ns, job)
        if current is None:
            return
        if conditions:
            kept = {c["type"]: c for c in (current.get("status") or {}).get("conditions") or []}
            for c in conditions:
                kept[c["type"]] = c
            status = {**status, "conditions": list(kept.values())}
        try:
            self.kube.patch_status("Job", self.ns, job, status)
        except ApiError as e:
            if e.status != 404:
                raise

    @staticmethod
    def _kill(attempt: Attempt) -> None:
        if attempt.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(attempt.proc.pid, signal.SIGKILL)
            attempt.proc.wait(10)


def condition(kind: str, status: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastProbeTime": now(),
        "lastTransitionTime": now(),
    }


def rewrite(value: str, mounts: dict[str, str]) -> str:
    """A container path under a mount, or above one (``FINETUNE_SECRETS_ROOT`` is the
    parent of the Secrets' mounts), → the same path in the pod's local tree."""
    for mount, local in mounts.items():
        if value == mount or value.startswith(mount + "/"):
            return local + value[len(mount) :]
        if mount.startswith(value.rstrip("/") + "/"):
            return local[: len(local) - len(mount)] + value
    return value
