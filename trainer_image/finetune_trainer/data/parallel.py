"""Tokenising chunks of examples in worker processes, results in the order given.

Rendering chat templates and mapping offsets to labels is pure Python under the GIL:
threads do not help, processes do. Workers are started by a fork server (or spawned),
never forked from the trainer itself: by the time data is prepared the trainer has
threads (the metrics server, the output lease's renewal, a storage client's pool), and a
child forked from a threaded process inherits every lock another thread held at that
moment, forever locked (a suite run hung that way in a worker). The function that
tokenizes travels to each worker once, pickled (:class:`Pool` ``initializer``), not per
chunk. At most ``2 * processes`` chunks are in flight, so the rows read ahead are
bounded whatever the file's size. Starting workers costs seconds (each imports the
tokenizer's library), so a file of fewer than ``2 * processes`` chunks is tokenized in
this process, as is everything with one process: a test that replaces the tokenizing
function then sees every call.

A row the template cannot render is not raised in the worker (the message would lose
its place): the chunk comes back as a :class:`Failure` naming the row's position, and
the caller, who knows the file and line, words the error.

*Once per node*: :func:`node_lock` is an exclusive ``fcntl`` lock on a file beside the
cache entry; the first rank of a node to take it tokenizes and writes the entry, the
others wait for it and then find the entry and map it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetune_trainer.data.tokenize import TemplateError, TokenizedExample

if TYPE_CHECKING:
    from finetune_trainer.data.formats import Example

Tokenize = Callable[["Example"], TokenizedExample]

MAX_DEFAULT_PROCESSES = 8


@dataclass(frozen=True)
class Failure:
    """Tokenizing the chunk's row at ``position`` failed with a template error."""

    position: int
    message: str


def _cgroup_cpus() -> float | None:
    """The container's CPU quota (cgroup v2 ``cpu.max``), in CPUs; None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return int(quota) / int(period)


def default_processes() -> int:
    """The CPUs this container may use (affinity, and the cgroup quota when there is
    one), at most :data:`MAX_DEFAULT_PROCESSES`: ``dataset.tokenizeProcesses``'s default."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, int(quota)))
    return max(1, min(cpus, MAX_DEFAULT_PROCESSES))


_WORKER: list[Tokenize] = []
"""The function this worker tokenizes with (set by the pool's initializer)."""


def _set_worker(tokenize: Tokenize) -> None:
    _WORKER[:] = [tokenize]


def _tokenize_chunk(tokenize: Tokenize, chunk: list[Example]) -> list[TokenizedExample] | Failure:
    out = []
    for position, example in enumerate(chunk):
        try:
            out.append(tokenize(example))
        except TemplateError as exc:
            return Failure(position, str(exc))
    return out


def _in_worker(chunk: list[Example]) -> list[TokenizedExample] | Failure:
    return _tokenize_chunk(_WORKER[0], chunk)


def worker_context() -> Any:
    """How workers start: a fork server where there is one (Linux, macOS), else spawn;
    never a plain fork of this (threaded) process."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def tokenize_chunks(
    chunks: Iterable[list[Example]], tokenize: Tokenize, processes: int
) -> Iterator[list[TokenizedExample] | Failure]:
    """Each chunk's tokenized examples (or its failure), in the order of ``chunks``.
    ``tokenize`` must pickle (a module-level class or function) when ``processes`` > 1."""
    iterator = iter(chunks)
    ahead = list(islice(iterator, 2 * processes)) if processes > 1 else []
    if len(ahead) < 2 * processes:
        for chunk in chain(ahead, iterator):
            yield _tokenize_chunk(tokenize, chunk)
        return
    with worker_context().Pool(processes, initializer=_set_worker, initargs=(tokenize,)) as pool:
        pending: deque[Any] = deque(pool.apply_async(_in_worker, (c,)) for c in ahead)
        for chunk in iterator:
            while len(pending) >= 2 * processes:
                yield pending.popleft().get()
            pending.append(pool.apply_async(_in_worker, (chunk,)))
        while pending:
            yield pending.popleft().get()


@contextlib.contextmanager
def node_lock(path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block; yields
    whether it is held (False when the file cannot be created: no lock, each process
    on its own, as without a cache)."""
    import fcntl

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock
