"""What the test servers share (tests/s3_server.py, gcs_server.py, azurite_server.py,
mlflow_server.py): a free port, waiting for a process to listen, stopping it, and the
outages the store tests inject (stop now, start again later on the same port)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import TypeVar

S = TypeVar("S", bound="Restartable")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server started after this returns)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(
    process: subprocess.Popen[bytes], port: int, name: str, seconds: float = 30
) -> None:
    """Until ``process`` accepts connections on ``port``; RuntimeError (with its stderr)
    when it exits first, or (after stopping it) when it does not listen in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            err = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"{name} exited at start: {err}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    stop_process(process, 10)
    raise RuntimeError(f"{name} did not listen on 127.0.0.1:{port} within {seconds:g}s")


def stop_process(process: subprocess.Popen[bytes], seconds: float) -> None:
    """Terminate ``process``; kill it when it has not ended after ``seconds``."""
    process.terminate()
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Restartable(ABC):
    """A server a test can take down for a while: :meth:`outage` stops it (connections
    are refused at once) and starts it again after some seconds, on the same port."""

    _restart: threading.Timer | None = None

    @abstractmethod
    def start(self) -> None:
        """Serve (nothing when already serving)."""

    @abstractmethod
    def stop(self) -> None:
        """Stop serving and close the socket (nothing when stopped)."""

    def outage(self, seconds: float | None) -> None:
        """Stop now; start again after ``seconds`` (None: until :meth:`end_outage`)."""
        self.stop()
        if seconds is not None:
            self._restart = threading.Timer(seconds, self.start)
            self._restart.start()

    def end_outage(self) -> None:
        if self._restart is not None:
            self._restart.cancel()
            self._restart.join()
            self._restart = None
        self.start()

    def close(self) -> None:
        self.end_outage()
        self.stop()


def serving(server: S) -> Iterator[S]:
    """``server`` started, for a fixture to ``yield from``; closed after."""
    server.start()
    try:
        yield server
    finally:
        server.close()
