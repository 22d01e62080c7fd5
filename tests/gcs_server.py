"""A real GCS JSON API endpoint for tests: gcp-storage-emulator on 127.0.0.1, in memory.

The trainer talks to it exactly as to Google Cloud Storage, through gcsfs over HTTP,
pointed at it by ``STORAGE_EMULATOR_HOST`` (the variable Google's libraries honour).
What the tests need beyond a plain server:

* Outages. :meth:`GcsServer.stop` shuts the HTTP server down and closes its socket (so
  clients are refused, not left hanging); :meth:`GcsServer.start` serves the same
  in-memory storage again on the same port, so what was stored survives.
* Generations. The emulator ignores ``ifGenerationMatch``, which GCS honours and the
  lease relies on (``gcs.GcsStore.lease``), and serves any ``?generation=`` read with the
  current object. :func:`_with_preconditions` adds both to its handlers, answering 412
  and 404 as GCS does; the emulator serves one request at a time, so the check and the
  write are atomic, as in GCS.
* Authentication. The emulator checks no credentials. :class:`OAuthRefusal` is a token
  endpoint that refuses every grant as Google's does a revoked or unknown key
  (``400 invalid_grant``): a service-account key whose ``token_uri`` points there is
  a key GCS would not accept.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from gcp_storage_emulator import server as emulator
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

from _servers import Restartable, free_port

Handler = Callable[..., Any]


def _precondition(handler: Handler, name_of: Callable[[Any], str | None]) -> Handler:
    def checked(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        expected = (request.query.get("ifGenerationMatch") or [None])[0]
        name = name_of(request)
        if expected is not None and name is not None:
            try:
                current = str(
                    storage.get_file_obj(request.params["bucket_name"], name)["generation"]
                )
            except NotFound:
                current = "0"
            if current != expected:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    return checked


def _generation(handler: Handler) -> Handler:
    """A read of ``?generation=G`` answers 404 once the object is another generation, as
    GCS does for a bucket without versioning (the emulator serves whatever is there)."""

    def pinned(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
        wanted = (request.query.get("generation") or [None])[0]
        if wanted is not None:
            try:
                found = storage.get_file_obj(
                    request.params["bucket_name"], request.params["object_id"]
                )
            except NotFound:
                found = {}
            if str(found.get("generation")) != wanted:
                response.status = HTTPStatus.NOT_FOUND
                response.json({"error": {"code": 404, "message": "No such object"}})
                return None
        return handler(request, response, storage, *args, **kwargs)

    return pinned


def _with_preconditions() -> None:
    """The emulator's insert (media uploads) and delete honouring ``ifGenerationMatch``."""
    if getattr(emulator, "_finetune_preconditions", False):
        return
    insert = _precondition(objects.insert, lambda r: (r.query.get("name") or [None])[0])
    delete = _precondition(objects.delete, lambda r: r.params.get("object_id"))
    download = _generation(objects.download)
    routes = []
    for regex, handlers in emulator.HANDLERS:
        patched = dict(handlers)
        for method, handler in handlers.items():
            if handler is objects.insert:
                patched[method] = insert
            elif handler is objects.delete:
                patched[method] = delete
            elif handler is objects.download:
                patched[method] = download
        routes.append((regex, patched))
    emulator.HANDLERS = tuple(routes)
    emulator._finetune_preconditions = True  # type: ignore[attr-defined]


class GcsServer(Restartable):
    """The emulator on 127.0.0.1, on a free port that stays the same across restarts."""

    def __init__(self) -> None:
        _with_preconditions()
        self.port = free_port()
        self._server = emulator.create_server("127.0.0.1", self.port, in_memory=True)
        self._storage = self._server._storage
        self._api: Any = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._api is not None:
            return
        api = emulator.APIThread("127.0.0.1", self.port, self._storage, daemon=True)
        api.start()
        api.is_running.wait()
        self._api = api

    def stop(self) -> None:
        if self._api is not None:
            self._api.join()  # shuts down and closes the socket
            self._api = None

    def new_bucket(self) -> str:
        from gcp_storage_emulator.handlers import buckets

        name = f"test-{uuid.uuid4().hex[:12]}"
        buckets.create_bucket(name, self._storage)
        return name

    def ensure_bucket(self, name: str) -> None:
        from gcp_storage_emulator.handlers import buckets

        if self._storage.get_bucket(name) is None:
            buckets.create_bucket(name, self._storage)

    def put(self, bucket: str, key: str, data: bytes) -> None:
        """An object written straight into the emulator's storage (test set-up)."""
        from base64 import b64encode
        from hashlib import md5

        obj = objects._make_object_resource(
            self.endpoint, bucket, key, "application/octet-stream", str(len(data))
        )
        obj["md5Hash"] = b64encode(md5(data).digest()).decode()
        self._storage.create_file(bucket, key, data, objects._checksums(data, obj))

    def get(self, bucket: str, key: str) -> bytes:
        data: bytes = self._storage.get_file(bucket, key)
        return data

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        listed, _ = self._storage.get_file_list(bucket, prefix=prefix)  # (objects, prefixes)
        return sorted(str(o["name"]) for o in listed)


class OAuthRefusal:
    """A token endpoint refusing every grant (``400 invalid_grant``), on 127.0.0.1."""

    def __init__(self) -> None:
        class Refuse(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps(
                    {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
                ).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._http = HTTPServer(("127.0.0.1", 0), Refuse)
        self.url = f"http://127.0.0.1:{self._http.server_address[1]}/token"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()


def service_account_key(token_uri: str) -> dict[str, str]:
    """A well-formed service-account key (a fresh RSA key) that ``token_uri`` judges."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": "finetune-test",
        "private_key_id": uuid.uuid4().hex,
        "private_key": pem,
        "client_email": "trainer@finetune-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": token_uri,
    }


@dataclass(frozen=True)
class GcsEnv:
    """What a GCS test gets: the server and a fresh bucket."""

    server: GcsServer
    bucket: str

    def uri(self, key: str = "") -> str:
        return f"gs://{self.bucket}/{key}"

    def objects(self, prefix: str = "") -> list[str]:
        return self.server.names(self.bucket, prefix)


def trainer_environment(server: GcsServer, root: Path, monkeypatch: Any) -> None:
    """The environment of a trainer pointed at ``server``: STORAGE_EMULATOR_HOST, cache
    and secrets directories under ``root``, and no Google credentials from this machine."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.endpoint)
    monkeypatch.setenv("FINETUNE_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("FINETUNE_SECRETS_ROOT", str(root / "secrets"))
