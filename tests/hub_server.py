"""A small Hub-compatible HTTP server for tests, on 127.0.0.1: enough of the Hub API for huggingface_hub's
`create_repo`, `create_branch`, `repo_info`, `upload_folder` (preupload, LFS batch + basic PUT, NDJSON commit)
and `hf_hub_download` / `from_pretrained` (HEAD and GET on `/REPO/resolve/REV/FILE`).

Clients must set `HF_HUB_DISABLE_XET=1` (the server offers plain LFS only).

    with FakeHub() as hub:             # hub.url -> "http://127.0.0.1:PORT"
        hub.fail["commit"] = (500, "disk full")   # make a step fail
        ... hub.repos["user/name"].files("main") ...
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".hdf5", ".npy")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob (what the Hub reports as a regular file's oid)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class StoredFile:
    data: bytes
    lfs: bool

    @property
    def oid(self) -> str:
        """LFS files: sha256 of the content; regular files: git blob sha1 (as the Hub's preupload answers)."""
        return hashlib.sha256(self.data).hexdigest() if self.lfs else git_blob_sha1(self.data)


@dataclass
class Repo:
    private: bool
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)  # commit oid -> snapshot
    messages: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None

    def files(self, revision: str = "main") -> dict[str, StoredFile]:
        return self.commits[self.resolve(revision)]

    def new_commit(self, branch: str, files: dict[str, StoredFile], message: str) -> str:
        oid = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        self.commits[oid] = files
        self.messages[oid] = message
        self.branches[branch] = oid
        return oid


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 (a free port), serving while used as a context manager; `url` is its root."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


class FakeHub(LoopbackServer):
    """The server and its state: `repos`, `lfs_objects`, `requests` (method, path, Authorization) and `fail`."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        # step name -> (status, message): "create", "preupload", "lfs_batch", "lfs_put", "commit", "resolve"
        self.fail: dict[str, tuple[int, str]] = {}
        self.lock = threading.Lock()
        super().__init__(_make_handler(self))

    def commit_count(self, repo_id: str) -> int:
        return len(self.repos[repo_id].commits)

    def env(self, token: str | None = "hf_test_token") -> dict[str, str]:
        """Environment variables pointing huggingface_hub at this server."""
        env = {"HF_ENDPOINT": self.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
        if token is not None:
            env["HF_TOKEN"] = token
        return env


def _make_handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        # ------------------------------------------------------------------------------------------ helpers
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, payload=None, headers: dict[str, str] | None = None, body: bytes | None = None,
                  head: bool = False) -> None:
            if body is None:
                body = json.dumps(payload if payload is not None else {}).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _error(self, status: int, message: str, code: str | None = None, head: bool = False) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, {"error": message}, headers=headers, head=head)

        def _failing(self, step: str) -> bool:
            if step in hub.fail:
                status, message = hub.fail[step]
                self._error(status, message)
                return True
            return False

        def _record(self) -> str:
            path = urlsplit(self.path).path
            hub.requests.append((self.command, path, self.headers.get("Authorization")))
            return path

        @staticmethod
        def _split_api(path: str, marker: str) -> tuple[str, str]:
            """`/api/models/ORG/NAME/<marker>/REST` -> ("ORG/NAME", "REST")."""
            repo, _, rest = path[len("/api/models/"):].partition(f"/{marker}/")
            return unquote(repo), unquote(rest)

        def _repo(self, repo_id: str, head: bool = False) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, f"Repository {repo_id} not found", "RepoNotFound", head=head)
            return repo

        # --------------------------------------------------------------------------------------------- verbs
        def do_POST(self) -> None:
            path = self._record()
            body = self._body()
            with hub.lock:
                if path == "/api/repos/create":
                    return self._create(json.loads(body))
                if path == "/api/validate-yaml":
                    return self._send(200, {})
                if path.endswith(".git/info/lfs/objects/batch"):
                    return self._lfs_batch(json.loads(body))
                if path.startswith("/api/models/") and "/preupload/" in path:
                    return self._preupload(*self._split_api(path, "preupload"), json.loads(body))
                if path.startswith("/api/models/") and "/commit/" in path:
                    return self._commit(*self._split_api(path, "commit"), body)
                if path.startswith("/api/models/") and "/branch/" in path:
                    return self._branch(*self._split_api(path, "branch"), json.loads(body or b"{}"))
            self._error(404, f"no route for POST {path}")

        def do_PUT(self) -> None:
            path = self._record()
            body = self._body()
            if path.startswith("/lfs-upload/"):
                if self._failing("lfs_put"):
                    return
                oid = path.rsplit("/", 1)[1]
                if hashlib.sha256(body).hexdigest() != oid:
                    return self._error(400, "LFS object does not match its oid")
                with hub.lock:
                    hub.lfs_objects[oid] = body
                return self._send(200, {})
            self._error(404, f"no route for PUT {path}")

        def do_GET(self) -> None:
            self._get(head=False)

        def do_HEAD(self) -> None:
            self._get(head=True)

        def _get(self, head: bool) -> None:
            path = self._record()
            with hub.lock:
                if path.startswith("/api/models/"):
                    rest = path[len("/api/models/"):]
                    if "/tree/" in rest:
                        repo_id, tree = self._split_api(path, "tree")
                        revision, _, folder = tree.partition("/")
                        return self._tree(repo_id, revision, folder, head)
                    if "/revision/" in rest:
                        repo_id, revision = self._split_api(path, "revision")
                    else:
                        repo_id, revision = unquote(rest.rstrip("/")), "main"
                    return self._info(repo_id, revision, head)
                if "/resolve/" in path:
                    repo_id, _, rest = path.lstrip("/").partition("/resolve/")
                    revision, _, filename = rest.partition("/")
                    return self._resolve(unquote(repo_id), unquote(revision), unquote(filename), head)
            self._error(404, f"no route for GET {path}", head=head)

        # ---------------------------------------------------------------------------------------- handlers
        def _create(self, payload: dict) -> None:
            if self._failing("create"):
                return
            repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            if repo_id in hub.repos:
                message = "You already created this model repo"
                return self._send(409, {"error": message, "url": f"{hub.url}/{repo_id}"},
                                  headers={"X-Error-Message": message})
            repo = Repo(private=payload.get("visibility") == "private" or bool(payload.get("private")))
            repo.new_commit("main", {".gitattributes": StoredFile(b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
                                                                  False)}, "initial commit")
            hub.repos[repo_id] = repo
            self._send(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _branch(self, repo_id: str, branch: str, payload: dict) -> None:
            repo = self._repo(repo_id)
            if repo is None:
                return
            if branch in repo.branches:
                return self._error(409, f"Branch {branch} already exists")
            start = repo.resolve(payload.get("startingPoint") or "main")
            repo.branches[branch] = start
            self._send(200, {})

        def _info(self, repo_id: str, revision: str, head: bool) -> None:
            repo = self._repo(repo_id, head)
            if repo is None:
                return
            oid = repo.resolve(revision)
            if oid is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
            files = repo.commits[oid]
            self._send(200, {"id": repo_id, "modelId": repo_id, "sha": oid, "private": repo.private,
                             "siblings": [{"rfilename": name} for name in sorted(files)], "tags": []}, head=head)

        def _tree(self, repo_id: str, revision: str, folder: str, head: bool) -> None:
            """Direct children of `folder` (non-recursive listing)."""
            repo = self._repo(repo_id, head)
            if repo is None:
                return
            oid = repo.resolve(revision)
            if oid is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
            prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
            entries, folders = [], set()
            for name, stored in sorted(repo.commits[oid].items()):
                if not name.startswith(prefix):
                    continue
                child, sep, _ = name[len(prefix):].partition("/")
                if sep:
                    folders.add(prefix + child)
                else:
                    entries.append({"type": "file", "path": name, "oid": git_blob_sha1(stored.data),
                                    "size": len(stored.data)})
            if prefix and not entries and not folders:
                return self._error(404, f"{folder} does not exist on {revision}", "EntryNotFound", head=head)
            entries += [{"type": "directory", "path": name, "oid": "0" * 40, "size": 0} for name in sorted(folders)]
            self._send(200, entries, head=head)

        def _preupload(self, repo_id: str, revision: str, payload: dict) -> None:
            if self._failing("preupload"):
                return
            repo = self._repo(repo_id)
            if repo is None:
                return
            oid = repo.resolve(revision)
            current = repo.commits.get(oid, {}) if oid else {}
            answer = []
            for item in payload["files"]:
                lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] > 1_000_000
                existing = current.get(item["path"])
                answer.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                               "oid": existing.oid if existing is not None and existing.lfs == lfs else None})
            self._send(200, {"files": answer, "commitOid": oid})

        def _lfs_batch(self, payload: dict) -> None:
            if self._failing("lfs_batch"):
                return
            objects = []
            for item in payload["objects"]:
                entry = {"oid": item["oid"], "size": item["size"]}
                if item["oid"] not in hub.lfs_objects:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{item['oid']}"}}
                objects.append(entry)
            self._send(200, {"transfer": "basic", "objects": objects})

        def _commit(self, repo_id: str, revision: str, body: bytes) -> None:
            if self._failing("commit"):
                return
            repo = self._repo(repo_id)
            if repo is None:
                return
            parent = repo.resolve(revision)
            if parent is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            files = dict(repo.commits[parent])
            message = ""
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    message = value["summary"]
                elif item["key"] == "file":
                    files[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
                elif item["key"] == "lfsFile":
                    if value["oid"] not in hub.lfs_objects:
                        return self._error(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                    files[value["path"]] = StoredFile(hub.lfs_objects[value["oid"]], True)
                elif item["key"] == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    return self._error(400, f"unsupported commit operation {item['key']}")
            oid = repo.new_commit(revision, files, message)
            self._send(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                             "success": True})

        def _resolve(self, repo_id: str, revision: str, filename: str, head: bool) -> None:
            if self._failing("resolve"):
                return
            repo = self._repo(repo_id, head)
            if repo is None:
                return
            oid = repo.resolve(revision)
            if oid is None:
                return self._error(404, f"Invalid rev id: {revision}", "RevisionNotFound", head=head)
            stored = repo.commits[oid].get(filename)
            if stored is None:
                self.send_response(404)
                for key, value in {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": oid,
                                   "X-Error-Message": "Entry not found", "Content-Length": "0"}.items():
                    self.send_header(key, value)
                self.end_headers()
                return
            headers = {"X-Repo-Commit": oid, "ETag": f'"{stored.oid}"', "Content-Type": "application/octet-stream"}
            if stored.lfs:
                headers["X-Linked-Etag"] = f'"{stored.oid}"'
                headers["X-Linked-Size"] = str(len(stored.data))
            self._send(200, headers=headers, body=stored.data, head=head)

    return Handler
