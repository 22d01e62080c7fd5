"""SIGTERM handling: what Kubernetes sends a pod before it kills it.

While the loop trains, the signal only raises a flag; the loop sees it after the
current optimizer step, saves a checkpoint and raises ``Preempted``, so the
work of the run survives the pod. Before and after training there is nothing worth
saving that a restart would not redo, so the signal ends the run at once. Either way
the exit is :class:`~finetune_trainer.errors.Preempted` (code 143).

The pod's ``terminationGracePeriodSeconds`` must cover one optimizer step plus one
checkpoint upload; after it, the kubelet sends SIGKILL and the newest earlier
checkpoint is where the next attempt starts.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from finetune_trainer.errors import Preempted

log = logging.getLogger("finetune.trainer")


class StopRequest:
    """The flag the SIGTERM handler raises and the loop polls."""

    def __init__(self) -> None:
        self.requested = False
        self.training = False

    def __call__(self) -> bool:
        return self.requested

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        if not self.training:
            raise Preempted("terminated (SIGTERM) outside the training loop; nothing to save")
        log.warning("SIGTERM: saving a checkpoint after this step, then stopping")

    @contextmanager
    def during_training(self) -> Iterator[None]:
        """Within this block the signal waits for the step to end instead of interrupting."""
        self.training = True
        try:
            yield
        finally:
            self.training = False


@contextmanager
def handle_sigterm() -> Iterator[StopRequest]:
    """Install the SIGTERM handler for the block (main thread only; elsewhere a no-op)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = signal.signal(signal.SIGTERM, request.handle)
    try:
        yield request
    finally:
        signal.signal(signal.SIGTERM, previous)
