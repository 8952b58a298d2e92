"""A loopback stand-in for the Hugging Face Hub's commit and read APIs, as huggingface_hub 2.4 and
datasets 5 call them.

Tests only. Holds dataset repos, branches, commits and LFS objects in memory and serves
them over real HTTP (uvicorn on 127.0.0.1, a background thread), so `HfApi`, `HfFileSystem` and
`datasets.load_dataset` run unmodified with `HF_ENDPOINT` pointed here and `HF_HUB_DISABLE_XET=1`
(the LFS path; Xet's CAS has no stand-in). Every revision argument takes a branch name or a
commit id, as on the Hub.

What `upload_folder` hits on that path (read from huggingface_hub 2.4's hf_api.py,
_commit_api.py and lfs.py), and what this server answers:

    GET  /api/whoami-v2                                  user info; 401 for a bad token
    POST /api/repos/create                               409 when it exists (exist_ok passes)
    GET  /api/datasets/{ns}/{name}[/revision/{rev}]      repo info (sha, siblings)
    POST /api/datasets/{ns}/{name}/branch/{branch}       create a branch (409 when it exists)
    POST /api/validate-yaml                              README.md front matter check
    GET  /api/datasets/{ns}/{name}/tree/{rev}[/{path}]   listing (for delete_patterns)
    POST /api/datasets/{ns}/{name}/preupload/{rev}       uploadMode per file, plus the remote
                                                         `oid` of the file at that path: this is
                                                         how the client drops unchanged files
                                                         (sha256 for LFS, git blob sha1 otherwise)
    POST /datasets/{ns}/{name}.git/info/lfs/objects/batch  basic transfer; objects already stored
                                                         get no `actions` (the client skips them)
    PUT  /lfs-upload/{oid}                               the "presigned" upload URL of a batch
    POST /datasets/{ns}/{name}.git/info/lfs/objects/verify
    POST /api/datasets/{ns}/{name}/commit/{rev}          NDJSON: header, file, lfsFile,
                                                         deletedFile, deletedFolder; ?create_pr=1

What reading a dataset hits (`dataset_info`, `hf_hub_download`, `HfFileSystem` as `datasets`
uses it to resolve a config's data files and stream them):

    HEAD/GET /datasets/{ns}/{name}/resolve/{rev}/{path}  file bytes; `X-Repo-Commit`, `ETag` (blob
                                                         sha1, or `X-Linked-Etag` sha256 for LFS),
                                                         `Content-Length`; `Range: bytes=a-b` -> 206;
                                                         404 `EntryNotFound` for a missing file
    POST /api/datasets/{ns}/{name}/paths-info/{rev}      form `paths`, `expand`: entries as in tree

Tests seed a dataset with `hub.push_files(repo_id, {path: bytes})`, which commits as the API
would and returns the commit id.

Errors follow the Hub's shape: a JSON body `{"error": ...}` and `X-Error-Code` /
`X-Error-Message` headers, which `hf_raise_for_status` turns into typed errors.

Faults, switched by tests: `fail_lfs_after = K` makes every LFS upload after the K-th answer
403 "Request has expired" (what S3 says when a presigned URL runs out mid-upload: the client
stops, as on an interrupted upload); `echo_auth_in_errors` makes repo creation fail with the
request's Authorization header in the error text, as a misbehaving proxy would, so tests can
check that callers scrub the token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import parse_qs, unquote

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

# The Hub stores these as LFS because the default .gitattributes of a dataset repo lists them,
# and any file over 10 MB; the rest are regular git blobs sent inline (base64) in the commit.
LFS_SUFFIXES = (".parquet", ".arrow", ".bin", ".safetensors", ".zip", ".gz")
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024
INITIAL_GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Entry:
    """One file at one revision."""

    size: int
    oid: str  # git blob sha1 (of the content, or of the LFS pointer)
    lfs_sha256: str | None = None  # set for LFS files
    content: bytes | None = None  # set for regular files


@dataclass
class Repo:
    repo_id: str
    private: bool
    branches: dict[str, dict[str, Entry]] = field(default_factory=dict)  # branch -> path -> Entry
    heads: dict[str, str] = field(default_factory=dict)  # branch -> commit oid
    snapshots: dict[str, dict[str, Entry]] = field(default_factory=dict)  # commit oid -> path -> Entry
    pull_requests: int = 0


@dataclass
class Commit:
    """A commit made through the commit API (repo creation's initial commit is not counted)."""

    repo_id: str
    branch: str
    oid: str
    summary: str
    operations: list[dict[str, Any]]


def _file_item(path: str, e: Entry) -> dict[str, Any]:
    """A file as the tree and paths-info APIs list it."""
    item: dict[str, Any] = {"type": "file", "oid": e.oid, "size": e.size, "path": path}
    if e.lfs_sha256:
        item["lfs"] = {"oid": e.lfs_sha256, "size": e.size, "pointerSize": 134}
    return item


def _folder_item(path: str) -> dict[str, Any]:
    return {"type": "directory", "oid": hashlib.sha1(path.encode()).hexdigest(), "size": 0, "path": path}


def _error(status: int, message: str, code: str | None = None) -> JSONResponse:
    headers = {"X-Error-Message": message}
    if code:
        headers["X-Error-Code"] = code
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Blobs:
    """LFS objects by oid: in memory, or with `spool` one file each in that folder (a benchmark's
    upload of gigabytes), so that the stand-in's memory does not grow with what it was sent."""

    def __init__(self, spool: Path | None = None) -> None:
        self.spool = spool
        self._held: dict[str, bytes] = {}
        self._sizes: dict[str, int] = {}
        if spool is not None:
            spool.mkdir(parents=True, exist_ok=True)

    def __contains__(self, oid: object) -> bool:
        return oid in self._sizes

    def __getitem__(self, oid: str) -> bytes:
        if oid not in self._sizes:
            raise KeyError(oid)
        return self._held[oid] if self.spool is None else (self.spool / oid).read_bytes()

    def __setitem__(self, oid: str, content: bytes) -> None:
        if self.spool is None:
            self._held[oid] = content
        else:
            (self.spool / oid).write_bytes(content)
        self._sizes[oid] = len(content)

    def size(self, oid: str) -> int:
        return self._sizes[oid]


class HubServer:
    """The stand-in: `with HubServer(tokens={"hf_x": "alice"}) as hub: ... hub.url ...`; with `spool`,
    LFS objects are kept as files in that folder instead of in memory."""

    def __init__(self, tokens: dict[str, str] | None = None, orgs: dict[str, list[str]] | None = None,
                 spool: Path | None = None) -> None:
        self.tokens = dict(tokens or {"hf_test_token": "alice"})  # token -> user name
        self.orgs = dict(orgs or {})  # user -> organizations it may write to
        self.repos: dict[str, Repo] = {}
        self.lfs_objects = Blobs(spool)
        self.commits: list[Commit] = []
        self.requests: list[tuple[str, str]] = []  # (method, path), in arrival order
        self.lfs_uploads = 0  # LFS objects accepted
        self.lfs_bytes = 0  # LFS bytes accepted
        self.fail_lfs_after: int | None = None  # K: LFS uploads after the K-th (server lifetime) fail
        self.echo_auth_in_errors = False
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        app = Starlette(routes=[Route("/{path:path}", self._dispatch, methods=["GET", "POST", "PUT", "HEAD", "DELETE"])])
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("hub stand-in did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        """The content of every file of a branch (LFS files resolved to their bytes)."""
        with self._lock:
            entries = self.repos[repo_id].branches[branch]
            return {
                path: (e.content if e.content is not None else self.lfs_objects[e.lfs_sha256 or ""])
                for path, e in entries.items()
            }

    def push_files(self, repo_id: str, files: dict[str, bytes], branch: str = "main", private: bool = False) -> str:
        """Commit `files` (path -> content; parquet and big files as LFS) to a dataset repo, creating
        it if needed; return the new commit id. What a maintainer's upload would leave on the Hub."""
        with self._lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                repo = self.repos[repo_id] = Repo(repo_id, private=private)
                repo.branches["main"] = {".gitattributes": Entry(len(INITIAL_GITATTRIBUTES), git_blob_sha1(INITIAL_GITATTRIBUTES),
                                                                 content=INITIAL_GITATTRIBUTES)}
                self._set_head(repo, "main", self._new_commit_oid(repo_id, "initial commit"))
            tree = dict(repo.branches.get(branch) or repo.branches["main"])
            for path, content in files.items():
                if path.endswith(LFS_SUFFIXES) or len(content) > LFS_SIZE_THRESHOLD:
                    oid = hashlib.sha256(content).hexdigest()
                    self.lfs_objects[oid] = content
                    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(content)}\n"
                    tree[path] = Entry(len(content), git_blob_sha1(pointer.encode()), lfs_sha256=oid)
                else:
                    tree[path] = Entry(len(content), git_blob_sha1(content), content=content)
            repo.branches[branch] = tree
            oid = self._new_commit_oid(repo_id, branch, json.dumps(sorted(files)))
            self._set_head(repo, branch, oid)
            return oid

    def commits_to(self, repo_id: str) -> list[Commit]:
        with self._lock:
            return [c for c in self.commits if c.repo_id == repo_id]

    # ------------------------------------------------------------------ plumbing

    def _user(self, request: Request) -> tuple[str | None, JSONResponse | None]:
        """(user, None) for a valid token, (None, None) with no token, (None, 401) for a bad one."""
        auth = request.headers.get("authorization", "")
        if not auth:
            return None, None
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        user = self.tokens.get(token)
        if user is None:
            return None, _error(401, "Invalid credentials in Authorization header")
        return user, None

    def _may_write(self, user: str | None, namespace: str) -> bool:
        return user is not None and (namespace == user or namespace in self.orgs.get(user, []))

    def _new_commit_oid(self, *parts: str) -> str:
        return hashlib.sha1("\0".join(parts + (str(time.monotonic_ns()),)).encode()).hexdigest()

    @staticmethod
    def _set_head(repo: Repo, branch: str, oid: str) -> None:
        """Move a branch to a commit and keep that commit's files readable by its id."""
        repo.heads[branch] = oid
        repo.snapshots[oid] = dict(repo.branches[branch])

    async def _dispatch(self, request: Request) -> Response:
        # Route on the raw path: a revision is one URL-quoted segment (`refs%2Fpr%2F1`), which
        # decoded routing would split.
        raw = request.scope.get("raw_path", request.url.path.encode()).decode().split("?", 1)[0]
        parts = [unquote(p) for p in raw.strip("/").split("/")]
        method = request.method
        with self._lock:
            self.requests.append((method, "/" + "/".join(parts)))
        user, denied = self._user(request)
        # The Hub rejects an invalid token on every endpoint, even public ones.
        if denied is not None and parts[:1] != ["lfs-upload"]:
            return denied
        body = await request.body()
        with self._lock:
            return self._route(method, parts, request, body, user)

    def _route(self, method: str, parts: list[str], request: Request, body: bytes, user: str | None) -> Response:
        if parts == ["api", "whoami-v2"] and method == "GET":
            if user is None:
                return _error(401, "Invalid credentials in Authorization header")
            orgs = [{"name": o, "type": "org"} for o in self.orgs.get(user, [])]
            return JSONResponse({"type": "user", "name": user, "orgs": orgs,
                                 "auth": {"type": "access_token", "accessToken": {"role": "write"}}})
        if parts == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(request, json.loads(body or b"{}"), user)
        if parts == ["api", "validate-yaml"] and method == "POST":
            return self._validate_yaml(json.loads(body or b"{}"))
        if len(parts) >= 4 and parts[:2] == ["api", "datasets"]:
            repo_id, rest = f"{parts[2]}/{parts[3]}", parts[4:]
            return self._repo_api(method, repo_id, rest, request, body, user)
        if len(parts) == 7 and parts[0] == "datasets" and parts[2].endswith(".git") and parts[3:6] == ["info", "lfs", "objects"]:
            repo_id = f"{parts[1]}/{parts[2][:-4]}"
            return self._lfs_api(parts[6], repo_id, json.loads(body or b"{}"), user)
        if len(parts) == 2 and parts[0] == "lfs-upload" and method == "PUT":
            return self._lfs_put(parts[1], body)
        if len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve" and method in ("GET", "HEAD"):
            return self._resolve(f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:]), request, user, method)
        return _error(404, f"Sorry, we can't find the page you are looking for: /{'/'.join(parts)}")

    # ------------------------------------------------------------------ repos

    def _create_repo(self, request: Request, payload: dict[str, Any], user: str | None) -> Response:
        if user is None:
            return _error(401, "You must be authenticated to create a repo")
        if self.echo_auth_in_errors:
            # In the JSON body only (huggingface_hub puts it in the exception text); httpcore's
            # DEBUG log prints response headers, which no caller can scrub.
            echo = f"Bad request (proxy echo: authorization={request.headers.get('authorization')})"
            return JSONResponse({"error": echo}, status_code=400)
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload.get('name')}"
        if payload.get("type") != "dataset":
            return _error(400, "this stand-in only serves dataset repos")
        if not self._may_write(user, namespace):
            return _error(403, f'You don\'t have the rights to create a dataset under the namespace "{namespace}"')
        if repo_id in self.repos:
            return JSONResponse({"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo_id}"},
                                status_code=409)
        repo = Repo(repo_id, private=payload.get("visibility") == "private")
        # A new repo's first commit holds .gitattributes, as on the Hub.
        repo.branches["main"] = {".gitattributes": Entry(len(INITIAL_GITATTRIBUTES), git_blob_sha1(INITIAL_GITATTRIBUTES),
                                                         content=INITIAL_GITATTRIBUTES)}
        self._set_head(repo, "main", self._new_commit_oid(repo_id, "initial commit"))
        self.repos[repo_id] = repo
        return JSONResponse({"url": f"{self.url}/datasets/{repo_id}", "name": repo_id, "id": repo_id})

    def _validate_yaml(self, payload: dict[str, Any]) -> Response:
        content = str(payload.get("content", ""))
        if content.startswith("---"):
            front = content.split("---", 2)[1] if content.count("---") >= 2 else ""
            try:
                meta = yaml.safe_load(front)
            except yaml.YAMLError as exc:
                return JSONResponse({"errors": [{"message": f"Invalid YAML: {exc}"}]}, status_code=400)
            if meta is not None and not isinstance(meta, dict):
                return JSONResponse({"errors": [{"message": "metadata must be a mapping"}]}, status_code=400)
        return JSONResponse({"errors": [], "warnings": []})

    def _repo_for(self, repo_id: str, user: str | None, write: bool) -> tuple[Repo | None, Response | None]:
        repo = self.repos.get(repo_id)
        namespace = repo_id.split("/")[0]
        if repo is None or (repo.private and not self._may_write(user, namespace)):
            return None, _error(404, "Repository not found", "RepoNotFound")
        if write and user is None:
            return None, _error(401, "You must be authenticated to write to this repo")
        if write and not self._may_write(user, namespace):
            return None, _error(403, "You don't have write access to this repo")
        return repo, None

    def _branch(self, repo: Repo, revision: str) -> tuple[dict[str, Entry] | None, Response | None]:
        """The files at a branch or a commit id."""
        if revision in repo.branches:
            return repo.branches[revision], None
        if revision in repo.snapshots:
            return repo.snapshots[revision], None
        return None, _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    @staticmethod
    def _commit_at(repo: Repo, revision: str) -> str:
        return repo.heads.get(revision, revision)

    def _repo_api(self, method: str, repo_id: str, rest: list[str], request: Request, body: bytes,
                  user: str | None) -> Response:
        write = method == "POST" and rest[:1] != ["paths-info"]
        repo, problem = self._repo_for(repo_id, user, write)
        if problem is not None or repo is None:
            return problem or _error(404, "Repository not found", "RepoNotFound")
        if method == "GET" and (not rest or (len(rest) == 2 and rest[0] == "revision")):
            return self._repo_info(repo, rest[1] if rest else "main")
        if method == "GET" and len(rest) >= 2 and rest[0] == "tree":
            return self._tree(repo, rest[1], "/".join(rest[2:]), request.query_params.get("recursive", "").lower() == "true")
        if method == "POST" and len(rest) == 2 and rest[0] == "branch":
            if rest[1] in repo.branches:
                return _error(409, f"Reference already exists: refs/heads/{rest[1]}")
            payload = json.loads(body or b"{}")
            start = payload.get("startingPoint") or "main"
            files, problem = self._branch(repo, start)
            if problem is not None or files is None:
                return problem or _error(404, "", "RevisionNotFound")
            repo.branches[rest[1]] = dict(files)
            self._set_head(repo, rest[1], self._commit_at(repo, start))
            return JSONResponse({})
        if method == "POST" and len(rest) == 2 and rest[0] == "paths-info":
            return self._paths_info(repo, rest[1], body)
        if method == "POST" and len(rest) == 2 and rest[0] == "preupload":
            return self._preupload(repo, rest[1], json.loads(body or b"{}"))
        if method == "POST" and len(rest) == 2 and rest[0] == "commit":
            return self._commit(repo, rest[1], body, request.query_params.get("create_pr") == "1")
        return _error(404, f"Sorry, we can't find the page you are looking for: {method} {'/'.join(rest)}")

    def _repo_info(self, repo: Repo, revision: str) -> Response:
        files, problem = self._branch(repo, revision)
        if problem is not None or files is None:
            return problem or _error(404, "", "RevisionNotFound")
        return JSONResponse({
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": self._commit_at(repo, revision),
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "siblings": [{"rfilename": path} for path in sorted(files)],
        })

    def _tree(self, repo: Repo, revision: str, prefix: str, recursive: bool) -> Response:
        files, problem = self._branch(repo, revision)
        if problem is not None or files is None:
            return problem or _error(404, "", "RevisionNotFound")
        base = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        out: list[dict[str, Any]] = []
        folders: set[str] = set()
        for path in sorted(files):
            if not path.startswith(base):
                continue
            below = path[len(base):].split("/")
            # Every folder between `base` and the file, or just the first one when not recursive.
            for depth in range(1, len(below) if recursive else min(2, len(below))):
                folders.add(base + "/".join(below[:depth]))
            if recursive or len(below) == 1:
                out.append(_file_item(path, files[path]))
        out += [_folder_item(f) for f in sorted(folders)]
        return JSONResponse(out)

    def _paths_info(self, repo: Repo, revision: str, body: bytes) -> Response:
        files, problem = self._branch(repo, revision)
        if problem is not None or files is None:
            return problem or _error(404, "", "RevisionNotFound")
        form = parse_qs(body.decode())
        out: list[dict[str, Any]] = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in files:
                out.append(_file_item(path, files[path]))
            elif any(p.startswith(path + "/") for p in files):
                out.append(_folder_item(path))
        return JSONResponse(out)

    def _resolve(self, repo_id: str, revision: str, path: str, request: Request, user: str | None,
                 method: str) -> Response:
        repo, problem = self._repo_for(repo_id, user, write=False)
        if problem is not None or repo is None:
            return problem or _error(404, "Repository not found", "RepoNotFound")
        files, problem = self._branch(repo, revision)
        if problem is not None or files is None:
            return problem or _error(404, "", "RevisionNotFound")
        entry = files.get(path)
        if entry is None:
            return _error(404, "Entry not found", "EntryNotFound")
        content = entry.content if entry.content is not None else self.lfs_objects[entry.lfs_sha256 or ""]
        headers = {"X-Repo-Commit": self._commit_at(repo, revision), "ETag": f'"{entry.oid}"', "Accept-Ranges": "bytes"}
        if entry.lfs_sha256:
            headers.update({"X-Linked-Etag": f'"{entry.lfs_sha256}"', "X-Linked-Size": str(len(content))})
        status = 200
        wanted = request.headers.get("range", "")
        if wanted.startswith("bytes=") and content:
            first, _, last = wanted[len("bytes="):].split(",")[0].partition("-")
            start = int(first) if first else max(0, len(content) - int(last))
            end = min(int(last), len(content) - 1) if first and last else len(content) - 1
            if start >= len(content):
                return Response(status_code=416, headers={"Content-Range": f"bytes */{len(content)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(content)}"
            content, status = content[start:end + 1], 206
        headers["Content-Length"] = str(len(content))
        return Response(b"" if method == "HEAD" else content, status_code=status, headers=headers,
                        media_type="application/octet-stream")

    # ------------------------------------------------------------------ uploads and commits

    def _preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> Response:
        files, problem = self._branch(repo, revision)
        if problem is not None or files is None:
            return problem or _error(404, "", "RevisionNotFound")
        answer = []
        for item in payload.get("files", []):
            path, size = str(item["path"]), int(item["size"])
            lfs = path.endswith(LFS_SUFFIXES) or size > LFS_SIZE_THRESHOLD
            current = files.get(path)
            # The client compares this with its own oid of the local file and drops equal ones.
            oid = None if current is None else (current.lfs_sha256 or current.oid)
            answer.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False, "oid": oid})
        return JSONResponse({"files": answer, "commitOid": self._commit_at(repo, revision)})

    def _lfs_api(self, action: str, repo_id: str, payload: dict[str, Any], user: str | None) -> Response:
        repo, problem = self._repo_for(repo_id, user, write=True)
        if problem is not None or repo is None:
            return problem or _error(404, "Repository not found", "RepoNotFound")
        if action == "verify":
            oid = str(payload.get("oid"))
            if oid not in self.lfs_objects or self.lfs_objects.size(oid) != payload.get("size"):
                return _error(404, f"object {oid} was not uploaded")
            return JSONResponse({})
        if action != "batch" or payload.get("operation") != "upload":
            return _error(400, "only the upload operation of the batch API is served here")
        objects = []
        for obj in payload.get("objects", []):
            oid, size = str(obj["oid"]), int(obj["size"])
            if oid in self.lfs_objects:
                objects.append({"oid": oid, "size": size})  # already stored: no actions, no upload
                continue
            objects.append({
                "oid": oid,
                "size": size,
                "authenticated": True,
                "actions": {
                    "upload": {"href": f"{self.url}/lfs-upload/{oid}", "header": {}},
                    "verify": {"href": f"{self.url}/datasets/{repo_id}.git/info/lfs/objects/verify", "header": {}},
                },
            })
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"})

    def _lfs_put(self, oid: str, body: bytes) -> Response:
        # Requests are handled one at a time under the lock, so exactly K uploads get through.
        if self.fail_lfs_after is not None and self.lfs_uploads >= self.fail_lfs_after:
            xml = ("<?xml version='1.0' encoding='UTF-8'?>"
                   "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>")
            return Response(xml, status_code=403, media_type="application/xml")
        if hashlib.sha256(body).hexdigest() != oid:
            return _error(400, f"uploaded content does not match oid {oid}")
        self.lfs_objects[oid] = body
        self.lfs_uploads += 1
        self.lfs_bytes += len(body)
        return Response(status_code=200)

    def _commit(self, repo: Repo, revision: str, body: bytes, create_pr: bool) -> Response:
        base, problem = self._branch(repo, revision)
        if problem is not None or base is None:
            return problem or _error(404, "", "RevisionNotFound")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            return _error(400, "the first line of a commit must be its header")
        header = lines[0]["value"]
        if header.get("parentCommit") and header["parentCommit"] != self._commit_at(repo, revision):
            return _error(412, "A commit has happened since. Please refresh and try again.")
        files = dict(base)
        operations = []
        for line in lines[1:]:
            key, value = line.get("key"), line.get("value", {})
            path = str(value.get("path", ""))
            if key == "file":
                content = base64.b64decode(value["content"])
                files[path] = Entry(len(content), git_blob_sha1(content), content=content)
            elif key == "lfsFile":
                oid = str(value["oid"])
                if oid not in self.lfs_objects:
                    return _error(400, "Your push was rejected because an LFS pointer pointed to a file that does not exist.")
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {self.lfs_objects.size(oid)}\n"
                files[path] = Entry(self.lfs_objects.size(oid), git_blob_sha1(pointer.encode()), lfs_sha256=oid)
            elif key == "deletedFile":
                if path not in files:
                    return _error(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                for name in [p for p in files if p.startswith(prefix)]:
                    del files[name]
            else:
                return _error(400, f"unknown commit operation {key!r}")
            operations.append({"key": key, "path": path})
        branch = revision
        if create_pr:
            repo.pull_requests += 1
            branch = f"refs/pr/{repo.pull_requests}"
        oid = self._new_commit_oid(repo.repo_id, branch, self._commit_at(repo, revision), json.dumps(operations))
        repo.branches[branch] = files
        self._set_head(repo, branch, oid)
        self.commits.append(Commit(repo.repo_id, branch, oid, str(header.get("summary", "")), operations))
        answer: dict[str, Any] = {"success": True, "commitOid": oid, "hookOutput": "",
                                  "commitUrl": f"{self.url}/datasets/{repo.repo_id}/commit/{oid}"}
        if create_pr:
            answer["pullRequestUrl"] = f"{self.url}/datasets/{repo.repo_id}/discussions/{repo.pull_requests}"
        return JSONResponse(answer)
