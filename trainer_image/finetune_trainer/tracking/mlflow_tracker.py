"""MLflow: one run per job on a tracking server, through MLflow's own client.

What lands in the run: the configuration as parameters, tags naming the job, method,
task and run key, a metric series per step (``loss``, ``learningRate``,
``tokensPerSecond``, ``gradNorm``) and per evaluation (``evalLoss``, ``exactMatch``...),
the final scores, the published ``metrics.json``, model card and plots as run
artifacts, and ``finetune.artifactUri``, where the published set is.

A pod restarted after preemption resumes its checkpoint and, found by its run key, the
same MLflow run. MLflow's client retries a refused connection for minutes by default;
unless the environment says otherwise the trainer allows it two retries of ten
seconds, so a server that is down costs a warning, not a stalled start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from finetune_api.config.tracking import MLFLOW_SECRET_KEYS, MlflowTracking
from finetune_api.outcome import Ending
from finetune_trainer.storage.credentials import read_secret
from finetune_trainer.tracking.base import (
    RunIdentity,
    Tracker,
    final_metrics,
    history_series,
    params,
    step_metrics,
)

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    from finetune_api.config import TrainerConfig
    from finetune_trainer.state import StepReport

_END_STATUS: dict[Ending, str] = {
    "Succeeded": "FINISHED",
    "Failed": "FAILED",
    "Preempted": "KILLED",
}
FLUSH_SECONDS = 5.0
"""Step metrics are sent in batches at most this often (and at each evaluation)."""
_MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch call
_MAX_PARAMS = 100  # ... and of params
_MAX_PARAM_VALUE = 6000
PUBLISHED_FILES = ("metrics.json", "README.md")
"""Files of the published set also attached to the MLflow run (with ``plots/``)."""


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, spec: MlflowTracking, config: TrainerConfig) -> None:
        self._identity = RunIdentity.of(config)
        self._config = config
        self._uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or ""
        self._experiment = (
            spec.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or config.job_name
        )
        self._run_name = spec.run_name or config.job_name
        self._credentials = read_secret(spec.credentials_secret, keys=MLFLOW_SECRET_KEYS)
        self._client: MlflowClient | None = None
        self._experiment_id = ""
        self._run_id = ""
        self._pending: list[Metric] = []
        self._flushed = time.monotonic()
        self._staged: Path | None = None

    @property
    def url(self) -> str | None:
        parts = urlsplit(self._uri)
        if not self._run_id or parts.scheme not in ("http", "https"):
            return None
        base = self._uri.rstrip("/")
        return f"{base}/#/experiments/{self._experiment_id}/runs/{self._run_id}"

    def secrets(self) -> list[str]:
        return list(self._credentials.values())

    def start(self) -> None:
        if not self._uri:
            raise ValueError(
                "tracking.mlflow names no server: set tracking.mlflow.trackingUri or "
                "MLFLOW_TRACKING_URI"
            )
        # The client reads credentials and its retry policy from the environment only.
        os.environ.update(self._credentials)
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=self._uri)
        found = client.get_experiment_by_name(self._experiment)
        self._experiment_id = (
            found.experiment_id if found else client.create_experiment(self._experiment)
        )
        self._client = client
        self._run_id = self._existing_run() or self._new_run()

    def _existing_run(self) -> str | None:
        """The run of an earlier attempt of this same job (a restarted pod), reopened."""
        assert self._client is not None
        runs = self._client.search_runs(
            [self._experiment_id],
            filter_string=f"tags.`finetune.runKey` = '{self._identity.key}'",
            max_results=1,
            order_by=["attributes.start_time DESC"],
        )
        if not runs:
            return None
        run_id: str = runs[0].info.run_id
        self._client.update_run(run_id, status="RUNNING")
        return run_id

    def _new_run(self) -> str:
        from mlflow.entities import Param

        assert self._client is not None
        run = self._client.create_run(
            self._experiment_id, run_name=self._run_name, tags=self._identity.tags()
        )
        run_id: str = run.info.run_id
        values = [
            Param(key[:250], value[:_MAX_PARAM_VALUE])
            for key, value in params(self._config).items()
        ]
        for i in range(0, len(values), _MAX_PARAMS):
            self._client.log_batch(run_id, params=values[i : i + _MAX_PARAMS])
        return run_id

    def log_step(self, report: StepReport) -> None:
        self._queue(step_metrics(report), report.step)
        if time.monotonic() - self._flushed >= FLUSH_SECONDS:
            self._flush()

    def log_eval(self, step: int, scores: Mapping[str, float]) -> None:
        self._queue(dict(scores), step)
        self._flush()

    def _queue(self, values: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(name, float(v), now, step) for name, v in values.items()]

    def _flush(self) -> None:
        assert self._client is not None
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), _MAX_BATCH):
            self._client.log_batch(self._run_id, metrics=pending[i : i + _MAX_BATCH])
        self._flushed = time.monotonic()

    def stage(self, staging: Path, metrics: Mapping[str, Any]) -> None:
        self._staged = staging  # its files are attached once published (finish)

    def finish(self, ending: Ending, metrics: Mapping[str, Any], artifact_uri: str | None) -> None:
        assert self._client is not None
        if ending == "Succeeded":
            last = max((step for _, step, _ in history_series(metrics)), default=0)
            self._queue(final_metrics(metrics), last)
        self._flush()
        if artifact_uri:
            self._client.set_tag(self._run_id, "finetune.artifactUri", artifact_uri)
            self._client.set_tag(
                self._run_id,
                "mlflow.note.content",
                f"Published by finetune-operator to `{artifact_uri}`.",
            )
        if ending == "Succeeded" and self._staged is not None:
            self._attach(self._staged)
        self._client.set_terminated(self._run_id, status=_END_STATUS[ending])

    def _attach(self, staging: Path) -> None:
        """The model card, metrics and plots, viewable in MLflow's UI beside the curves."""
        assert self._client is not None
        for name in PUBLISHED_FILES:
            if (staging / name).is_file():
                self._client.log_artifact(self._run_id, str(staging / name))
        if (staging / "plots").is_dir():
            self._client.log_artifacts(self._run_id, str(staging / "plots"), "plots")
