"""Tokenising chunks of examples in worker processes, results in the order given.

Rendering chat templates and mapping offsets to labels is pure Python under the GIL:
threads do not help, processes do. Workers are forked (the tokenizer and the function
that tokenizes are inherited, never pickled per chunk); where fork is not available the
chunks are tokenized in this process. At most ``2 * processes`` chunks are in flight, so
the rows read ahead are bounded whatever the file's size. One process (or one chunk)
needs no pool: it tokenizes here, and a test that replaces the tokenizing function sees
every call.

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
"""The function a forked worker tokenizes with (set before the fork, inherited)."""


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


def _fork_context() -> Any:
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    return multiprocessing.get_context("fork")


def tokenize_chunks(
    chunks: Iterable[list[Example]], tokenize: Tokenize, processes: int
) -> Iterator[list[TokenizedExample] | Failure]:
    """Each chunk's tokenized examples (or its failure), in the order of ``chunks``."""
    iterator = iter(chunks)
    first = next(iterator, None)
    if first is None:
        return
    second = next(iterator, None)
    context = _fork_context() if processes > 1 and second is not None else None
    if context is None:
        yield _tokenize_chunk(tokenize, first)
        if second is not None:
            yield _tokenize_chunk(tokenize, second)
        for chunk in iterator:
            yield _tokenize_chunk(tokenize, chunk)
        return
    _WORKER[:] = [tokenize]
    try:
        with context.Pool(processes) as pool:
            pending: deque[Any] = deque()
            pending.append(pool.apply_async(_in_worker, (first,)))
            pending.append(pool.apply_async(_in_worker, (second,)))
            for chunk in iterator:
                while len(pending) >= 2 * processes:
                    yield pending.popleft().get()
                pending.append(pool.apply_async(_in_worker, (chunk,)))
            while pending:
                yield pending.popleft().get()
    finally:
        _WORKER.clear()


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
