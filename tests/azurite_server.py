"""A real Azure Blob Storage endpoint for tests: Azurite (Microsoft's emulator) on 127.0.0.1.

Azurite is a Node.js program, installed by ``make install`` into ``tests/.azurite``
(git-ignored). The trainer talks to it as to Azure: the blob REST API over HTTP, with
the emulator's well-known development account given as a connection string (the one
form of Azure credentials that names an endpoint other than ``*.blob.core.windows.net``).

Outages: :meth:`AzuriteServer.stop` ends the process (connections are refused at once)
and :meth:`AzuriteServer.start` brings it back on the same port. The blobs live in a
directory (``--location``) rather than in memory (``--inMemoryPersistence``), so that
what was stored survives a restart as it does on moto's S3 server; the directory is
the session's own temporary one. ``--skipApiVersionCheck``: the SDK may speak a newer
API version than this Azurite knows; ``--loose``: headers Azurite does not implement are
ignored rather than refused.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _servers import Restartable, free_port, stop_process, wait_listening

AZURITE_DIR = Path(__file__).resolve().parent / ".azurite"
AZURITE_BIN = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
"""Azurite's published development key (the same in every installation): no secret."""


def missing_reason() -> str | None:
    """Why Azurite cannot run here, or None. Only a machine without Node.js is a reason
    to skip; with node but no Azurite, :meth:`AzuriteServer.start` fails saying how to
    install it (a skipped store suite would pass for the wrong reason)."""
    if shutil.which("node") is None:
        return "node is not installed: Azurite (the Azure Blob Storage emulator) needs Node.js"
    return None


class AzuriteServer(Restartable):
    """Azurite's blob service on 127.0.0.1, on a free port that stays the same across
    restarts, its blobs in a temporary directory."""

    def __init__(self) -> None:
        self.port = free_port()
        self.location = Path(tempfile.mkdtemp(prefix="azurite-"))
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def start(self) -> None:
        if self._process is not None:
            return
        if not AZURITE_BIN.exists():
            raise RuntimeError(
                f"Azurite is not installed in {AZURITE_DIR}: run `make install` (or "
                "`npm install --prefix tests/.azurite azurite@3.35.0`)"
            )
        command = [
            str(AZURITE_BIN),
            "--blobHost",
            "127.0.0.1",
            "--blobPort",
            str(self.port),
            "--location",
            str(self.location),
            "--skipApiVersionCheck",
            "--loose",
            "--silent",
        ]
        self._process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ}
        )
        try:
            wait_listening(self._process, self.port, "Azurite")
        except RuntimeError:
            self._process = None
            raise

    def stop(self) -> None:
        if self._process is None:
            return
        stop_process(self._process, 10)
        self._process = None

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.location, ignore_errors=True)

    def service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def new_container(self) -> str:
        name = f"test-{uuid.uuid4().hex[:12]}"
        self.service().create_container(name)
        return name


@dataclass(frozen=True)
class AzureEnv:
    """What an Azure test gets: the server, a fresh container, a client for setting up."""

    server: AzuriteServer
    container: str
    client: Any
    """An ``azure.storage.blob.ContainerClient`` on the container."""

    def uri(self, key: str = "") -> str:
        return f"az://{self.container}/{key}"

    def objects(self, prefix: str = "") -> list[str]:
        return sorted(b.name for b in self.client.list_blobs(name_starts_with=prefix))

    def upload(self, path: Path, key: str) -> None:
        with path.open("rb") as data:
            self.client.upload_blob(key, data, overwrite=True)

    def read(self, key: str) -> bytes:
        data: bytes = self.client.download_blob(key).readall()
        return data


def trainer_environment(server: AzuriteServer, root: Path, monkeypatch: Any) -> None:
    """The environment of a trainer pointed at ``server``: the connection string (the
    standard variable the Azure tools read), short timeouts, and cache and secrets
    directories under ``root``; no other Azure variable of this machine."""
    for name in list(os.environ):
        if name.startswith("AZURE_"):
            monkeypatch.delenv(name, raising=False)
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": server.connection_string,
        "FINETUNE_AZURE_CONNECT_TIMEOUT": "1",
        "FINETUNE_AZURE_READ_TIMEOUT": "10",
        "FINETUNE_CACHE_DIR": str(root / "cache"),
        "FINETUNE_SECRETS_ROOT": str(root / "secrets"),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
