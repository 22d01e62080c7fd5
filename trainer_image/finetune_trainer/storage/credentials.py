"""Credentials and connection settings for object stores, and keeping them out of text.

A job names a Kubernetes Secret per storage location (``output.credentialsSecret``,
``dataset.credentialsSecret``, ``model.credentialsSecret``); the operator mounts Secret
``NAME`` at ``$FINETUNE_SECRETS_ROOT/NAME/`` (default ``/var/run/secrets/finetune``), one
file per key. The keys we read are :data:`SECRET_KEYS`. When a Secret is named but not
mounted (``finetune run`` on a laptop), one warning is logged and the standard chain is
used, so a manifest that works in the cluster also works locally with ``aws configure``.

Without a Secret, boto3's standard chain applies unchanged: environment variables,
``~/.aws`` shared files and profiles, web identity tokens (IRSA, EKS Pod Identity),
instance metadata. botocore itself honours ``AWS_ENDPOINT_URL`` and
``AWS_ENDPOINT_URL_S3``; ``AWS_S3_ADDRESSING_STYLE`` (``path``, ``virtual``, ``auto``) is
our extension, because MinIO and Ceph usually need path-style requests and botocore has
no environment variable for it.

Secret values live only inside the boto3 session. They are never formatted into
messages, and every value read (Secret files, the environment's AWS credentials, the
user and password of an endpoint URL) is registered with the redaction layer
(:mod:`finetune_api.redaction`) the moment it is read, so that no log line, error or
termination message can quote it, whoever formats it. A value with a line break or
another control character is refused at once (:func:`_check_one_line`).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api import redaction
from finetune_api.redaction import is_secret_name, register, url_credentials
from finetune_trainer.errors import StorageError

log = logging.getLogger(__name__)

SECRETS_ROOT_ENV = "FINETUNE_SECRETS_ROOT"
DEFAULT_SECRETS_ROOT = "/var/run/secrets/finetune"
SECRET_KEYS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_S3_ADDRESSING_STYLE",
    "HF_TOKEN",
)
"""The keys of a credentials Secret this trainer reads; others are ignored."""

ADDRESSING_ENV = "AWS_S3_ADDRESSING_STYLE"
ADDRESSING_STYLES = ("auto", "path", "virtual")
CONNECT_TIMEOUT_ENV = "FINETUNE_S3_CONNECT_TIMEOUT"
READ_TIMEOUT_ENV = "FINETUNE_S3_READ_TIMEOUT"
BOTOCORE_ATTEMPTS = 2
"""botocore's own attempts per request: low, so that the job's retry deadline governs."""

_ENV_CREDENTIALS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)
"""The environment variables holding S3 credentials that boto3 reads by itself."""

_warned: set[str] = set()


def secrets_root() -> Path:
    return Path(os.environ.get(SECRETS_ROOT_ENV) or DEFAULT_SECRETS_ROOT)


def read_secret(name: str | None, keys: Sequence[str] = SECRET_KEYS) -> dict[str, str]:
    """The ``keys`` (default: the storage keys) of the mounted Secret ``name``; empty
    when unnamed or not mounted."""
    if not name:
        return {}
    directory = secrets_root() / name
    if not directory.is_dir():
        if name not in _warned:
            _warned.add(name)
            log.warning(
                "credentials Secret %r is not mounted at %s; using the credentials of this "
                "environment instead (AWS, Hugging Face, tracker variables)",
                name,
                directory,
            )
        return {}
    values = {}
    for key in keys:
        path = directory / key
        if path.is_file():
            value = path.read_text().strip()
            if value:
                _register(key, value)
                _check_one_line(value, f"key {key} of credentials Secret {name!r}")
                values[key] = value
    return values


def _register(name: str, value: str) -> None:
    """Tell the redaction layer about a credential just read (a Secret key or an
    environment variable called ``name``), before anything can quote it."""
    if is_secret_name(name):
        register(value)
    register(*url_credentials(value))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_one_line(value: str, where: str) -> None:
    """Refuse a credential holding a line break or another control character (a token
    pasted across two lines, a file saved with CRLF). No HTTP header can carry it, so
    every request would fail, and botocore reports that as a connection error that
    looks transient: refused here, at once, naming where the value is but not the
    value. A StorageError (exit 5, not retried): the fix is in the credentials, as for
    a key the store does not know."""
    if _CONTROL.search(value):
        raise StorageError(
            f"the {where} holds a line break or another control character, which no "
            "request can carry; write the value on one line (e.g. kubectl create secret "
            "generic ... --from-literal=KEY=VALUE, or echo -n VALUE | base64 for the data field)"
        )


def hf_token(secret_name: str | None) -> str | None:
    """HF_TOKEN from the Secret, or None (huggingface_hub then reads HF_TOKEN itself)."""
    return read_secret(secret_name).get("HF_TOKEN")


@dataclass(frozen=True)
class S3Settings:
    """Everything needed to build an S3 client; credentials are hidden from ``repr``."""

    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    source: str = "the standard AWS credential chain"
    """Where the credentials come from, for messages (never the values)."""
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    def secrets(self) -> list[str]:
        """Values that must never appear in any text we produce: the keys, the token and
        any user and password written into the endpoint URL."""
        values = (self.access_key_id, self.secret_access_key, self.session_token)
        return [v for v in values if v] + url_credentials(self.endpoint_url or "")


def s3_settings(secret_name: str | None) -> S3Settings:
    """Settings from the mounted Secret ``secret_name`` over the environment.

    The environment's credentials are registered with the redaction layer and checked
    like the Secret's: boto3 reads them itself, and would send a token with a line break
    in every request."""
    values = read_secret(secret_name)
    for name in _ENV_CREDENTIALS:
        if os.environ.get(name):
            _register(name, os.environ[name])
            _check_one_line(os.environ[name], f"environment variable {name}")
    key_id, secret = values.get("AWS_ACCESS_KEY_ID"), values.get("AWS_SECRET_ACCESS_KEY")
    if bool(key_id) != bool(secret):
        raise StorageError(
            f"credentials Secret {secret_name!r} holds only one of AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY; it needs both (or neither, to use workload identity)"
        )
    style = values.get("AWS_S3_ADDRESSING_STYLE") or os.environ.get(ADDRESSING_ENV) or None
    if style is not None and style not in ADDRESSING_STYLES:
        raise StorageError(
            f"AWS_S3_ADDRESSING_STYLE={style!r} is not one of {', '.join(ADDRESSING_STYLES)} "
            "(use path for MinIO and Ceph)"
        )
    return S3Settings(
        endpoint_url=values.get("AWS_ENDPOINT_URL"),
        region=values.get("AWS_REGION") or os.environ.get("AWS_REGION") or None,
        addressing_style=style,
        connect_timeout=_seconds(CONNECT_TIMEOUT_ENV, 10.0),
        read_timeout=_seconds(READ_TIMEOUT_ENV, 60.0),
        source=f"credentials Secret {secret_name!r}" if key_id else _chain_name(secret_name),
        access_key_id=key_id,
        secret_access_key=secret,
        session_token=values.get("AWS_SESSION_TOKEN"),
    )


def _chain_name(secret_name: str | None) -> str:
    if secret_name and (secrets_root() / secret_name).is_dir():
        return f"the standard AWS credential chain (Secret {secret_name!r} holds no keys)"
    return "the standard AWS credential chain"


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise StorageError(f"{env}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise StorageError(f"{env}={raw!r} must be a positive number of seconds")
    return value


def s3_client(settings: S3Settings) -> Any:
    """A boto3 S3 client for ``settings``: short timeouts, few botocore retries."""
    import boto3  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id,
        aws_secret_access_key=settings.secret_access_key,
        aws_session_token=settings.session_token,
        region_name=settings.region,
    )
    config = Config(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"mode": "standard", "total_max_attempts": BOTOCORE_ATTEMPTS},
        s3={"addressing_style": settings.addressing_style} if settings.addressing_style else None,
        user_agent_extra="finetune-operator",
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=config)


def redact(text: str, secrets: Sequence[str | None] = ()) -> str:
    """``text`` with ``secrets``, every registered secret and every credential-shaped
    part masked: the redaction layer (:func:`finetune_api.redaction.redact`)."""
    return redaction.redact(text, secrets)
