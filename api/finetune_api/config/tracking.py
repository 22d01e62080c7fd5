"""``spec.tracking``: the experiment trackers a run reports to.

Data scientists compare runs in MLflow, Weights & Biases or TensorBoard, not in
Prometheus. Each tracker is a subsection; naming it turns it on. Every value may be left
to the environment of the trainer (``MLFLOW_TRACKING_URI``, ``WANDB_PROJECT``...), so a
platform can point every job at its tracking server without touching manifests, and
credentials come from a Secret like storage credentials: never a field, never logged.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field

from finetune_api.config.base import CamelModel, SecretName

MLFLOW_SECRET_KEYS = (
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
"""The keys of ``tracking.mlflow.credentialsSecret`` the trainer reads."""
WANDB_SECRET_KEYS = ("WANDB_API_KEY",)
"""The keys of ``tracking.wandb.credentialsSecret`` the trainer reads."""

_NAME = r"^[^\x00-\x1f\x7f]+$"
"""Experiment, project and run names: any printable text (trackers allow spaces)."""


def _check_server_url(value: str) -> str:
    """A tracking server: http(s) with a host, or a file:// store for a local run; never
    credentials in the URL (they would be shown wherever the spec is)."""
    parts = urlsplit(value)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"{value!r} has no host; write e.g. http://mlflow.mlflow:5000")
    elif parts.scheme == "file":
        if not (parts.path or parts.netloc):
            raise ValueError(f"{value!r} names no directory; write e.g. file://./mlruns")
    else:
        raise ValueError(
            "must be an http://, https:// or file:// URL, e.g. http://mlflow.mlflow:5000"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "holds credentials; remove them from the URL and put them in the tracker's "
            "credentialsSecret (keys MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
            "or WANDB_API_KEY)"
        )
    return value


ServerUrl = Annotated[str, Field(max_length=2048), AfterValidator(_check_server_url)]
TrackerName = Annotated[str, Field(min_length=1, max_length=256, pattern=_NAME)]


class MlflowTracking(CamelModel):
    """An MLflow run per job: parameters, a metric series per step, the evaluations and
    a link to the published artifact."""

    tracking_uri: ServerUrl | None = Field(
        default=None,
        description="The MLflow tracking server, e.g. http://mlflow.mlflow:5000. Default: "
        "$MLFLOW_TRACKING_URI in the trainer's environment.",
    )
    experiment: TrackerName | None = Field(
        default=None,
        description="Experiment name (created when missing). Default: "
        "$MLFLOW_EXPERIMENT_NAME, else the FineTuneJob's name.",
    )
    run_name: TrackerName | None = Field(
        default=None, description="Run name. Default: the FineTuneJob's name."
    )
    credentials_secret: SecretName | None = Field(
        default=None,
        description="A Secret with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, or "
        "MLFLOW_TRACKING_TOKEN, for a server that asks for them.",
    )


class TensorBoardTracking(CamelModel):
    """TensorBoard event files of the run, published with the artifact."""

    directory: str = Field(
        default="tensorboard",
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="Folder of the published set that holds the event files: `tensorboard "
        "--logdir <output>/tensorboard` shows the run.",
    )


class WandbTracking(CamelModel):
    """A Weights & Biases run: online to a W&B server, or offline files published with the
    artifact (`wandb sync <output>/wandb/offline-run-*` uploads them later)."""

    project: TrackerName | None = Field(
        default=None,
        description="Project name. Default: $WANDB_PROJECT, else the FineTuneJob's name.",
    )
    entity: TrackerName | None = Field(
        default=None, description="Team or user. Default: $WANDB_ENTITY, else the key's own."
    )
    run_name: TrackerName | None = Field(
        default=None, description="Run name. Default: the FineTuneJob's name."
    )
    mode: Literal["online", "offline"] | None = Field(
        default=None,
        description="online: report to the server as the run goes (needs an API key). "
        "offline: write the run's files, published under <output>/wandb. Default: "
        "$WANDB_MODE, else online.",
    )
    base_url: ServerUrl | None = Field(
        default=None,
        description="A self-hosted W&B server. Default: $WANDB_BASE_URL, else W&B's cloud.",
    )
    credentials_secret: SecretName | None = Field(
        default=None, description="A Secret with WANDB_API_KEY (online mode)."
    )


class TrackingSpec(CamelModel):
    """Experiment trackers; each one named here is used. A tracker that cannot be reached
    is a warning in the log, not a failed run: tracking is not worth a training run."""

    mlflow: MlflowTracking | None = None
    tensorboard: TensorBoardTracking | None = None
    wandb: WandbTracking | None = None

    def secrets(self) -> list[str]:
        """The credentials Secrets the trackers name (mounted into the pod)."""
        named = [t.credentials_secret for t in (self.mlflow, self.wandb) if t is not None]
        return [s for s in named if s]
