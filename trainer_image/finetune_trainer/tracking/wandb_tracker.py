"""Weights & Biases: a run online on a W&B server, or offline files published with the
artifact.

Online, the run reports as it goes and its page is the tracker URL in the job's status.
Offline (clusters without a route to W&B), the run's files are published under
``<output>/wandb/``; ``wandb sync`` uploads them from anywhere later. W&B's own console
capture and banners are off: stdout stays the JSON progress stream.

The run id is the job's run key, so a pod restarted after preemption continues the same
W&B run (``resume="allow"``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_api.config.tracking import WANDB_SECRET_KEYS, WandbTracking
from finetune_api.outcome import Ending
from finetune_trainer.storage.credentials import read_secret
from finetune_trainer.tracking.base import (
    RunIdentity,
    Tracker,
    final_metrics,
    params,
    step_metrics,
)

if TYPE_CHECKING:
    from wandb.sdk.wandb_run import Run

    from finetune_api.config import TrainerConfig
    from finetune_trainer.state import StepReport

PUBLISHED_DIR = "wandb"
_EXIT_CODES: dict[Ending, int] = {"Succeeded": 0, "Failed": 1, "Preempted": 143}


class WandbTracker(Tracker):
    name = "wandb"

    def __init__(self, spec: WandbTracking, config: TrainerConfig) -> None:
        self._identity = RunIdentity.of(config)
        self._config = config
        self.mode = spec.mode or os.environ.get("WANDB_MODE") or "online"
        self._project = spec.project or os.environ.get("WANDB_PROJECT") or config.job_name
        self._entity = spec.entity or os.environ.get("WANDB_ENTITY") or None
        self._run_name = spec.run_name or config.job_name
        self._base_url = spec.base_url or os.environ.get("WANDB_BASE_URL") or None
        self._key = read_secret(spec.credentials_secret, keys=WANDB_SECRET_KEYS).get(
            "WANDB_API_KEY"
        ) or os.environ.get("WANDB_API_KEY")
        self._dir = Path(tempfile.mkdtemp(prefix="finetune-wandb-"))
        self._run: Run | None = None
        self._url: str | None = None

    @property
    def url(self) -> str | None:
        return self._url

    def secrets(self) -> list[str]:
        return [self._key] if self._key else []

    def start(self) -> None:
        if self.mode not in ("online", "offline"):
            raise ValueError(f"WANDB_MODE={self.mode!r}: use online or offline")
        if self.mode == "online" and not self._key:
            raise ValueError(
                "online mode needs an API key: name a Secret with WANDB_API_KEY in "
                "tracking.wandb.credentialsSecret, or set tracking.wandb.mode: offline"
            )
        import wandb

        settings: dict[str, Any] = {
            "console": "off",
            "silent": True,
            "x_disable_stats": True,
            "save_code": False,
        }
        if self._base_url:
            settings["base_url"] = self._base_url
        if self._key:
            settings["api_key"] = self._key
        self._run = wandb.init(
            project=self._project,
            entity=self._entity,
            name=self._run_name,
            id=self._identity.key,
            resume="allow",
            mode=self.mode,  # type: ignore[arg-type]
            dir=str(self._dir),
            config=params(self._config),
            tags=[self._identity.method, self._identity.task],
            settings=wandb.Settings(**settings),
            reinit="create_new",
        )
        self._url = self._run.url if self.mode == "online" else None

    def log_step(self, report: StepReport) -> None:
        assert self._run is not None
        self._run.log(step_metrics(report), step=report.step)

    def log_eval(self, step: int, scores: Mapping[str, float]) -> None:
        assert self._run is not None
        self._run.log({f"eval/{name}": value for name, value in scores.items()}, step=step)

    def _close(self, ending: Ending, metrics: Mapping[str, Any], artifact_uri: str | None) -> None:
        run, self._run = self._run, None
        if run is None:
            return
        if ending == "Succeeded":
            run.summary.update(final_metrics(metrics))
        if artifact_uri:
            run.summary["artifactUri"] = artifact_uri
        run.finish(exit_code=_EXIT_CODES[ending])

    def stage(self, staging: Path, metrics: Mapping[str, Any]) -> None:
        """Offline: the run ends here (its files are final only then) and is published;
        its artifact location is known already, the URI it is being published to."""
        if self.mode != "offline":
            return
        self._close("Succeeded", metrics, self._config.output.uri)
        target = staging / PUBLISHED_DIR
        for run_dir in sorted((self._dir / "wandb").glob("offline-run-*")):
            shutil.copytree(
                run_dir,
                target / run_dir.name,
                ignore=shutil.ignore_patterns("logs", "tmp", "debug*.log"),
            )

    def finish(self, ending: Ending, metrics: Mapping[str, Any], artifact_uri: str | None) -> None:
        try:
            self._close(ending, metrics, artifact_uri)
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)
