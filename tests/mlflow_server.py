"""A real MLflow tracking server for tests: ``mlflow server`` on 127.0.0.1.

The trainer's MLflow tracker talks to it as to any team's server: REST over HTTP, with
the run's artifacts proxied by the server (``--artifacts-destination``), so the client
needs no access to the artifact store. A sqlite file is the backend store. Startup
takes 10-30 s on a 2-core machine (the server imports its whole web stack), so
fixtures share one server per module or session.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _servers import free_port as free_port
from _servers import stop_process

STARTUP_SECONDS = 180


@contextmanager
def mlflow_server(root: Path) -> Iterator[str]:
    """Serve a tracking server storing under ``root``; yield its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        str(Path(sys.executable).with_name("mlflow")),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
    ]
    log_path = root / "server.log"
    with log_path.open("w") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ}, cwd=root
        )
        try:
            _wait_healthy(url, server, log_path)
            yield url
        finally:
            stop_process(server, 30)


def _wait_healthy(url: str, server: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"mlflow server did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.5)
