"""A base model's shape for the planner: its ``config.json``, read from the Hugging Face
Hub (or the mirror the operator's settings name).

Only hf:// models can be read by the operator: s3://, pvc:// and file:// models need
the trainer's credentials or volumes, so their jobs run unplanned (``finetune plan``
plans them where they are readable). The request is made with aiohttp on kopf's event
loop, so a slow Hub holds neither the loop nor a worker thread, with a short timeout.

Each (model, revision) is asked once: the answer is cached (:data:`FOUND_TTL`), a
failure too (:data:`MISSING_TTL`), and jobs of one model created together share one
request. An air-gapped cluster therefore pays one short timeout per model every few
minutes, not one per job (benchmarks/operator_scale.py creates a thousand jobs of one
hf:// model).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar
from urllib.parse import quote

import aiohttp

from finetune_api.plan import ModelShape, ShapeError
from finetune_api.uri import Role, UriError, parse_uri, without_credentials
from finetune_operator.planning import ModelFacts
from finetune_operator.status.phases import MODEL_CONFIG_UNAVAILABLE, MODEL_CONFIG_UNREADABLE

TIMEOUT_SECONDS = 2.0
"""For the whole request: the Hub answers config.json in well under a second."""
FOUND_TTL = 3600.0
"""How long a model's shape is reused: a branch such as ``main`` may move, rarely."""
MISSING_TTL = 300.0
"""How long a failure is reused before the Hub is asked again."""
MAX_ENTRIES = 512
"""Models remembered at once (answers of a few KiB each)."""
MAX_CONFIG_BYTES = 1 << 20
"""A config.json is a few KiB; anything larger is not one."""

log = logging.getLogger("finetune.operator")

K = TypeVar("K")
V = TypeVar("V")


def config_url(uri: str, revision: str | None, endpoint: str) -> str | None:
    """Where the Hub serves ``config.json`` of the hf:// model ``uri`` at ``revision``
    (default ``main``), as huggingface_hub asks for it; None for any other scheme, an
    invalid URI or no ``endpoint``."""
    try:
        parsed = parse_uri(uri, Role.MODEL)
    except UriError:
        return None
    if parsed.scheme != "hf" or not endpoint:
        return None
    repo = quote(parsed.location, safe="/")
    ref = quote(revision or "main", safe="")
    return f"{endpoint.rstrip('/')}/{repo}/resolve/{ref}/config.json"


class ExpiringCache(Generic[K, V]):
    """At most ``size`` entries, each until its own deadline; the oldest goes first
    when full. Not thread-safe: used from the event loop only."""

    def __init__(self, size: int = MAX_ENTRIES, clock: Callable[[], float] = time.monotonic):
        self._size = size
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V, ttl: float) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + ttl, value)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class HubConfigs:
    """The shapes of hf:// models, read from ``endpoint`` and cached (see the module)."""

    def __init__(
        self,
        endpoint: str,
        *,
        timeout: float = TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._cache: ExpiringCache[tuple[str, str], ModelFacts] = ExpiringCache(clock=clock)
        self._pending: dict[tuple[str, str], asyncio.Future[ModelFacts]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        """Requests made to the Hub (tests count them)."""

    async def model(self, uri: str, revision: str | None) -> ModelFacts:
        """The shape of the model ``uri`` at ``revision``, or why there is none."""
        url = config_url(uri, revision, self.endpoint)
        if url is None:
            return ModelFacts(None, MODEL_CONFIG_UNAVAILABLE, _not_read_here(uri, self.endpoint))
        key = (uri, revision or "")
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        pending = self._pending.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._load(key, url))
            self._pending[key] = pending
        # Shielded: a job's handler cancelled must not cancel the others' shared request.
        return await asyncio.shield(pending)

    async def _load(self, key: tuple[str, str], url: str) -> ModelFacts:
        try:
            facts = await self._fetch(url)
            self._cache.put(key, facts, FOUND_TTL if facts.shape is not None else MISSING_TTL)
            return facts
        finally:
            self._pending.pop(key, None)

    async def _fetch(self, url: str) -> ModelFacts:
        shown = without_credentials(url)
        self.requests += 1
        try:
            async with self._client().get(url) as response:
                if response.status != 200:
                    hint = _HINTS.get(response.status, "")
                    return _unavailable(f"{shown} answered HTTP {response.status}{hint}")
                body = bytearray()
                async for chunk in response.content.iter_chunked(1 << 16):
                    body += chunk
                    if len(body) > MAX_CONFIG_BYTES:
                        break
        except TimeoutError:
            return _unavailable(f"{shown} did not answer within {self.timeout:g} s")
        except aiohttp.ClientError as exc:
            return _unavailable(f"cannot read {shown}: {without_credentials(str(exc))}")
        except Exception as exc:  # advice only: whatever went wrong, the job goes on
            log.warning("reading %s failed", shown, exc_info=True)
            return _unavailable(f"cannot read {shown}: {type(exc).__name__}: {exc}")
        return shape_of(bytes(body), shown)

    def _client(self) -> aiohttp.ClientSession:
        """One session (its connection pool) for every request, made on the loop that
        uses it; ``trust_env``: HTTPS_PROXY and NO_PROXY apply, as for the trainers."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), trust_env=True
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


_HINTS = {
    401: " (a gated or private model: the operator reads the Hub without a token)",
    403: " (a gated model: the operator reads the Hub without a token)",
    404: " (no such model or revision, or no config.json in it)",
}


def shape_of(body: bytes, where: str) -> ModelFacts:
    """The model's shape from the bytes of its ``config.json`` read at ``where``."""
    if len(body) > MAX_CONFIG_BYTES:
        return _unreadable_config(f"{where} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        config = json.loads(body)
    except ValueError:
        return _unreadable_config(f"{where} is not JSON")
    if not isinstance(config, Mapping):
        return _unreadable_config(f"{where} is not a JSON object")
    try:
        return ModelFacts(ModelShape.from_config(config))
    except ShapeError as exc:
        return _unreadable_config(f"{where}: {exc}")


def _unavailable(message: str) -> ModelFacts:
    return ModelFacts(None, MODEL_CONFIG_UNAVAILABLE, f"no plan: {message}")


def _unreadable_config(message: str) -> ModelFacts:
    return ModelFacts(None, MODEL_CONFIG_UNREADABLE, f"no plan: {message}")


def _not_read_here(uri: str, endpoint: str) -> str:
    if not endpoint:
        return "no plan: the operator reads no Hub (its hub endpoint is empty)"
    scheme = uri.partition("://")[0] or "this"
    return (
        f"no plan: the operator reads config.json of hf:// models only, not of {scheme}:// "
        "ones; `finetune plan` plans the job where the model is readable"
    )
