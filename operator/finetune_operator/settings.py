"""The operator's own settings: what every training Job gets that no spec says.

Read once from the environment (the Helm chart sets these on the Deployment), so the
builders stay pure functions of (FineTuneJob, Settings).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_HUB_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Settings:
    trainer_image: str = "ghcr.io/finetune-operator/trainer:0.1.0"
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    trainer_service_account: str | None = None
    """The trainer pods' ServiceAccount; None: the namespace's default. Trainers need
    no API rights (progress is scraped from them), so the chart's has none."""
    termination_grace_seconds: int = 300
    """Time between SIGTERM and SIGKILL: one optimizer step plus one checkpoint upload."""
    cache_size: str = "50Gi"
    """The emptyDir where the trainer caches downloaded models and datasets."""
    run_as_user: int = 1000
    namespaces: tuple[str, ...] = field(default=())
    """Namespaces to watch; empty: the whole cluster."""
    metrics_port: int = 8000
    """``/metrics`` and ``/readyz``."""
    health_port: int = 8080
    """kopf's ``/healthz`` (liveness and startup probes), where ``finetune operator`` has
    kopf serve it unless ``--liveness`` says otherwise."""
    trainer_env: tuple[tuple[str, str], ...] = ()
    """Environment variables of every trainer pod (the chart's ``trainer.env``), e.g.
    ``MLFLOW_TRACKING_URI``: a platform tracks every job without touching manifests."""
    hub_endpoint: str = DEFAULT_HUB_ENDPOINT
    """Where the operator reads an hf:// model's ``config.json`` to plan the job (the
    chart's ``planner.hubEndpoint``): the Hub, or a mirror on an air-gapped cluster;
    empty: never read (no job is planned)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = cls()

        def words(name: str) -> tuple[str, ...]:
            return tuple(w for w in env.get(name, "").replace(",", " ").split() if w)

        return cls(
            trainer_image=env.get("FINETUNE_TRAINER_IMAGE", defaults.trainer_image),
            image_pull_policy=env.get("FINETUNE_TRAINER_PULL_POLICY", defaults.image_pull_policy),
            image_pull_secrets=words("FINETUNE_TRAINER_PULL_SECRETS"),
            trainer_service_account=env.get("FINETUNE_TRAINER_SERVICE_ACCOUNT") or None,
            termination_grace_seconds=int(
                env.get("FINETUNE_TERMINATION_GRACE_SECONDS", defaults.termination_grace_seconds)
            ),
            cache_size=env.get("FINETUNE_CACHE_SIZE", defaults.cache_size),
            run_as_user=int(env.get("FINETUNE_RUN_AS_USER", defaults.run_as_user)),
            namespaces=words("FINETUNE_WATCH_NAMESPACES"),
            metrics_port=int(env.get("FINETUNE_METRICS_PORT", defaults.metrics_port)),
            health_port=int(env.get("FINETUNE_HEALTH_PORT", defaults.health_port)),
            trainer_env=trainer_env(env.get("FINETUNE_TRAINER_ENV", "")),
            hub_endpoint=hub_endpoint(env),
        )


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def trainer_env(text: str) -> tuple[tuple[str, str], ...]:
    """``FINETUNE_TRAINER_ENV``: a JSON object of names to string values; refused at
    start-up when it is anything else, rather than half-applied to every pod."""
    if not text.strip():
        return ()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"FINETUNE_TRAINER_ENV is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("FINETUNE_TRAINER_ENV must be a JSON object of names to values")
    for name, value in data.items():
        if not _ENV_NAME.match(name) or not isinstance(value, str):
            raise ValueError(
                f"FINETUNE_TRAINER_ENV: {name!r} must be a variable name with a string value"
            )
    return tuple(sorted(data.items()))


def hub_endpoint(env: Mapping[str, str]) -> str:
    """``FINETUNE_HUB_ENDPOINT`` when set (empty too: planning off), else
    ``HF_ENDPOINT`` (the variable huggingface_hub reads, so a mirror configured for the
    trainers serves the operator too), else the Hub."""
    if "FINETUNE_HUB_ENDPOINT" in env:
        name, value = "FINETUNE_HUB_ENDPOINT", env["FINETUNE_HUB_ENDPOINT"]
    else:
        name, value = "HF_ENDPOINT", env.get("HF_ENDPOINT") or DEFAULT_HUB_ENDPOINT
    endpoint = value.strip().rstrip("/")
    if endpoint and not re.match(r"^https?://[^/\s]+", endpoint):
        raise ValueError(f"{name} must be an http(s) URL such as {DEFAULT_HUB_ENDPOINT}")
    return endpoint
