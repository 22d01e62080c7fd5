"""A stand-in for the Hugging Face Hub on 127.0.0.1: never the network.

Two uses. The operator's planner reads ``GET /{org}/{name}/resolve/{revision}/config.json``,
answered from :attr:`HubStandIn.files` (SmolLM2's config by default); every path asked is
recorded, and the Hub can be made slow (``delay``) to play one that does not answer in
time. And the trainer publishes to ``hf://`` outputs and reads them back through
huggingface_hub itself, so the stand-in keeps git-like model repositories in memory and
answers the routes huggingface_hub 2.4 calls for that (read from its ``HfApi`` source):

- ``POST /api/repos/create`` (409 when the repository exists: ``exist_ok`` handles it)
- ``POST /api/validate-yaml`` (the README's metadata, checked before a commit)
- ``GET /api/models/{repo}[/revision/{rev}]`` (``model_info``: the head commit, files)
- ``POST /api/models/{repo}/branch/{branch}`` (``create_branch``)
- ``POST /api/models/{repo}/preupload/{rev}`` (every file a regular upload: tests keep
  their files small, so no LFS transfer)
- ``POST /api/models/{repo}/commit/{rev}`` (the NDJSON commit; a ``parentCommit`` that is
  no longer the branch's head is refused with 412, as the Hub does)
- ``GET /api/models/{repo}/tree/{rev}[/{path}]`` (``list_repo_tree``)
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` (``hf_hub_download``, by branch or commit)

With ``token`` set, every write needs ``Authorization: Bearer <token>`` (401 otherwise).

Dataset repositories (:meth:`HubStandIn.add_dataset`, kept apart from models as the Hub
keeps them) answer the routes huggingface_hub calls to read one:
``GET /api/datasets/{repo}[/revision/{rev}]`` (``dataset_info``), ``GET
/api/datasets/{repo}/tree/{rev}[/{path}]`` (``list_repo_tree``, recursive) and
``HEAD``/``GET /datasets/{repo}/resolve/{rev}/{path}`` (``hf_hub_download``). A revision is
a branch, a tag (:meth:`HubStandIn.tag_dataset`) or a commit. A private dataset answers
401 to a request without its ``Authorization: Bearer <token>``, 403 to another token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_CONFIG_PATH = f"/{SMOLLM2}/resolve/main/config.json"
# models/SmolLM2-135M-Instruct/config.json, the fields its config.json on the Hub has
# (copied: `make test-fast` runs the tests without the converted model).
SMOLLM2_CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 576,
    "intermediate_size": 1536,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 9,
    "num_hidden_layers": 30,
    "num_key_value_heads": 3,
    "rms_norm_eps": 1e-05,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
    "vocab_size": 49152,
}
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_REV_PATH = r"(?P<rev>[^/]+)(?:/(?P<path>.*))?"


@dataclass
class Repo:
    """A model repository: branches pointing at commits, each commit a whole tree."""

    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    log: list[tuple[str, str]] = field(default_factory=list)
    """Every commit as (branch, summary), oldest first."""

    def commit(self, branch: str, tree: dict[str, bytes], summary: str) -> str:
        sha = secrets.token_hex(20)
        self.commits[sha] = tree
        self.branches[branch] = sha
        self.log.append((branch, summary))
        return sha

    def tree(self, revision: str) -> tuple[str, dict[str, bytes]] | None:
        """(commit, files) at a branch name or a commit id."""
        sha = self.branches.get(revision, revision)
        return (sha, self.commits[sha]) if sha in self.commits else None


class HubStandIn:
    """The Hub on 127.0.0.1 while entered (``with HubStandIn() as hub: hub.url``)."""

    def __init__(self, delay: float = 0.0, token: str | None = None) -> None:
        self.files: dict[str, str] = {SMOLLM2_CONFIG_PATH: json.dumps(SMOLLM2_CONFIG)}
        self.asked: list[str] = []
        self.delay = delay
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.datasets: dict[str, Repo] = {}
        self.private: dict[str, str] = {}
        """Private dataset repositories: the token each one answers to."""
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                stand_in.asked.append(self.path)
                time.sleep(stand_in.delay)
                body = stand_in.files.get(self.path)
                if body is not None:
                    self.reply(200, body.encode())
                    return
                with stand_in.lock:
                    stand_in.route(self, "GET")

            def do_HEAD(self) -> None:
                with stand_in.lock:
                    stand_in.route(self, "HEAD")

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.body = self.rfile.read(length)
                with stand_in.lock:
                    stand_in.route(self, "POST")

            def reply(
                self,
                status: int,
                body: bytes | Any = b"",
                headers: dict[str, str] | None = None,
                *,
                head: bool = False,
            ) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> HubStandIn:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------------ what tests read

    def tree(self, repo: str, revision: str = "main") -> dict[str, bytes]:
        found = self.repos[repo].tree(revision)
        assert found is not None, f"{repo} has no {revision}"
        return found[1]

    def add_dataset(
        self,
        repo: str,
        files: dict[str, bytes | str],
        branch: str = "main",
        token: str | None = None,
    ) -> str:
        """Commit ``files`` (the whole tree) as ``repo``'s ``branch``; the commit id. With
        ``token`` the repository is private: reads need that token."""
        hub = self.datasets.setdefault(repo, Repo())
        tree = {p: b.encode() if isinstance(b, str) else b for p, b in files.items()}
        if token is not None:
            self.private[repo] = token
        return hub.commit(branch, tree, f"{len(tree)} files")

    def tag_dataset(self, repo: str, tag: str, commit: str) -> None:
        """A tag: a ref like a branch, that no commit moves."""
        self.datasets[repo].branches[tag] = commit

    # ------------------------------------------------------------------ routing

    def route(self, req: Any, method: str) -> None:
        path = unquote(urlsplit(req.path).path)
        routes: list[tuple[str, str, Any]] = [
            ("POST", r"/api/repos/create", self.create_repo),
            ("POST", r"/api/validate-yaml", lambda r: r.reply(200, {"errors": [], "warnings": []})),
            ("POST", rf"/api/models/{_REPO}/preupload/(?P<rev>.+)", self.preupload),
            ("POST", rf"/api/models/{_REPO}/commit/(?P<rev>.+)", self.commit),
            ("POST", rf"/api/models/{_REPO}/branch/(?P<rev>.+)", self.create_branch),
            ("GET", rf"/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", self.list_tree),
            ("GET", rf"/api/models/{_REPO}(?:/revision/(?P<rev>.+))?", self.model_info),
            ("GET", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
            ("HEAD", rf"/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
            (
                "GET",
                rf"/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?",
                self.list_tree,
            ),
            ("GET", rf"/api/datasets/{_REPO}(?:/revision/(?P<rev>.+))?", self.dataset_info),
            ("GET", rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
            ("HEAD", rf"/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", self.resolve),
        ]
        for verb, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                if method == "POST" and not self.authorised(req):
                    return
                req.kind = "datasets" if "/datasets/" in pattern else "models"
                if req.kind == "datasets" and not self.may_read(req, match["repo"]):
                    return
                handler(req, **{k: v for k, v in match.groupdict().items() if v is not None})
                return
        req.reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})

    def authorised(self, req: Any) -> bool:
        if self.token is None or req.headers.get("Authorization") == f"Bearer {self.token}":
            return True
        req.reply(401, {"error": "Invalid credentials in Authorization header"})
        return False

    def may_read(self, req: Any, repo: str) -> bool:
        """A private dataset: 401 without a token, 403 with another one (as the Hub)."""
        token = self.private.get(repo)
        given = req.headers.get("Authorization")
        if token is None or given == f"Bearer {token}":
            return True
        status = 403 if given else 401
        req.reply(status, {"error": "Invalid credentials"}, head=req.command == "HEAD")
        return False

    def repos_of(self, req: Any) -> dict[str, Repo]:
        return self.datasets if getattr(req, "kind", "models") == "datasets" else self.repos

    def repo_or_404(self, req: Any, repo: str) -> Repo | None:
        repos = self.repos_of(req)
        if repo not in repos:
            req.reply(
                404,
                {"error": "Repository not found"},
                {"X-Error-Code": "RepoNotFound"},
                head=req.command == "HEAD",
            )
            return None
        return repos[repo]

    def revision_or_404(self, req: Any, repo: str, rev: str) -> tuple[str, dict[str, bytes]] | None:
        found = self.repos_of(req)[repo].tree(rev)
        if found is None:
            req.reply(
                404,
                {"error": f"Invalid rev id: {rev}"},
                {"X-Error-Code": "RevisionNotFound"},
                head=req.command == "HEAD",
            )
        return found

    # ------------------------------------------------------------------ handlers

    def create_repo(self, req: Any) -> None:
        payload = json.loads(req.body)
        repo = f"{payload['organization']}/{payload['name']}"
        if repo in self.repos:
            req.reply(
                409, {"error": "You already created this model repo", "url": self.repo_url(repo)}
            )
            return
        self.repos[repo] = Repo()
        self.repos[repo].commit("main", {".gitattributes": b"*.safetensors filter=lfs\n"}, "init")
        req.reply(200, {"url": self.repo_url(repo)})

    def repo_url(self, repo: str) -> str:
        return f"{self.url}/{repo}"

    def create_branch(self, req: Any, repo: str, rev: str) -> None:
        hub = self.repo_or_404(req, repo)
        if hub is None:
            return
        if rev in hub.branches:
            req.reply(409, {"error": f"Reference {rev} already exists"})
            return
        hub.branches[rev] = hub.branches["main"]
        req.reply(200, {})

    def model_info(self, req: Any, repo: str, rev: str = "main") -> None:
        if self.repo_or_404(req, repo) is None:
            return
        found = self.revision_or_404(req, repo, rev)
        if found is None:
            return
        sha, tree = found
        siblings = [{"rfilename": p} for p in sorted(tree)]
        req.reply(200, {"id": repo, "modelId": repo, "sha": sha, "siblings": siblings})

    def dataset_info(self, req: Any, repo: str, rev: str = "main") -> None:
        if self.repo_or_404(req, repo) is None:
            return
        found = self.revision_or_404(req, repo, rev)
        if found is None:
            return
        sha, tree = found
        siblings = [{"rfilename": p} for p in sorted(tree)]
        private = repo in self.private
        req.reply(200, {"id": repo, "sha": sha, "siblings": siblings, "private": private})

    def preupload(self, req: Any, repo: str, rev: str) -> None:
        if self.repo_or_404(req, repo) is None:
            return
        files = json.loads(req.body)["files"]
        answer = [
            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files
        ]
        req.reply(200, {"files": answer, "commitOid": self.repos[repo].branches.get(rev)})

    def commit(self, req: Any, repo: str, rev: str) -> None:
        hub = self.repo_or_404(req, repo)
        if hub is None:
            return
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        head = hub.branches.get(rev)
        if head is None:
            req.reply(
                404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"}
            )
            return
        parent = header.get("parentCommit")
        if parent is not None and not head.startswith(parent):
            req.reply(
                412,
                {"error": f"A commit has happened since. Please refresh and try again. ({parent})"},
            )
            return
        tree = dict(hub.commits[head])
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                tree[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "deletedFile":
                tree.pop(value["path"], None)
            elif line["key"] == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                tree = {p: b for p, b in tree.items() if not p.startswith(folder)}
            elif line["key"] == "lfsFile":
                req.reply(400, {"error": "the stand-in takes regular uploads only"})
                return
        sha = hub.commit(rev, tree, header.get("summary", ""))
        req.reply(
            200,
            {"commitUrl": f"{self.repo_url(repo)}/commit/{sha}", "commitOid": sha, "success": True},
        )

    def list_tree(self, req: Any, repo: str, rev: str, path: str = "") -> None:
        if self.repo_or_404(req, repo) is None:
            return
        found = self.revision_or_404(req, repo, rev)
        if found is None:
            return
        prefix = path.rstrip("/") + "/" if path else ""
        entries = [
            {"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
            for p, b in sorted(found[1].items())
            if p.startswith(prefix)
        ]
        req.reply(200, entries)

    def resolve(self, req: Any, repo: str, rev: str, path: str) -> None:
        head = req.command == "HEAD"
        if self.repo_or_404(req, repo) is None:
            return
        found = self.revision_or_404(req, repo, rev)
        if found is None:
            return
        sha, tree = found
        if path not in tree:
            req.reply(
                404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"}, head=head
            )
            return
        data = tree[path]
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": sha,
            "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
        }
        req.reply(200, data, headers, head=head)
