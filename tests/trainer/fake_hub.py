"""A Hugging Face Hub stand-in on 127.0.0.1 for the shared-cache tests, and a loopback-only guard.

Only what `huggingface_hub` 1.x / transformers 5 call to load a model by repo id is served: model
info, the file tree, and file metadata (HEAD) and content (GET) under `resolve/`. Everything else
is refused with a 404, so a job cannot quietly depend on a real Hub. Every request is recorded; the
content GETs are the downloads the tests count.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

MAIN = "main"
MODEL_INFO = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)(?:/revision/(?P<rev>[^/]+))?$")
TREE = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?$")
RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")


@dataclass(frozen=True)
class HubFile:
    content: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def git_oid(self) -> str:
        """The git blob id the real Hub lists in trees."""
        return hashlib.sha1(b"blob %d\0" % len(self.content) + self.content).hexdigest()


@dataclass(frozen=True)
class HubRepo:
    files: dict[str, HubFile]

    @property
    def commit(self) -> str:
        """A stable 40-hex commit id, so `refs/main` and `snapshots/<commit>` look like the real Hub's."""
        listing = "".join(f"{name}:{file.sha256}\n" for name, file in sorted(self.files.items()))
        return hashlib.sha1(listing.encode()).hexdigest()

    @classmethod
    def from_dir(cls, root: Path) -> HubRepo:
        return cls(
            {p.relative_to(root).as_posix(): HubFile(p.read_bytes()) for p in root.rglob("*") if p.is_file()}
        )


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str
    query: str
    status: int


@dataclass
class FakeHub:
    """The server's state.

    With `hold_first_download`, the first content GET of each file is held until the file has been asked
    for (HEAD) twice, or `hold_timeout` passes. A job asks once and then downloads (or waits for the
    download lock), so a second HEAD while the first download is unfinished means a second job came for
    the file before it was in the cache: the download lock is exercised, not merely available.
    """

    repos: dict[str, HubRepo]
    hold_first_download: bool = False
    hold_timeout: float = 300.0
    url: str = ""
    requests: list[HubRequest] = field(default_factory=list)
    overlapped: dict[str, bool] = field(default_factory=dict)  # "repo/file" -> asked twice before served
    _lock: threading.Condition = field(default_factory=threading.Condition)
    _heads: Counter[str] = field(default_factory=Counter)  # "repo/file" -> HEADs so far

    def by_method_and_path(self) -> Counter[tuple[str, str]]:
        with self._lock:
            return Counter((r.method, r.path) for r in self.requests)

    def downloads(self) -> Counter[str]:
        """Successful content GETs per "repo/file"."""
        with self._lock:
            return Counter(
                f"{m['repo']}/{unquote(m['path'])}"
                for r in self.requests
                if r.method == "GET" and r.status == 200 and (m := RESOLVE.match(r.path))
            )

    def release_holds(self) -> None:
        """Stop holding downloads (a job has exited: nobody else may come for the file)."""
        with self._lock:
            self.hold_first_download = False
            self._lock.notify_all()

    # -- called by the handler --
    def record(self, request: HubRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def saw_head(self, key: str) -> None:
        with self._lock:
            self._heads[key] += 1
            self._lock.notify_all()

    def hold_if_first(self, key: str) -> None:
        with self._lock:
            if not self.hold_first_download or key in self.overlapped:
                return
            self.overlapped[key] = False  # later GETs of the file pass at once
            self._lock.wait_for(
                lambda: self._heads[key] >= 2 or not self.hold_first_download, self.hold_timeout
            )
            self.overlapped[key] = self._heads[key] >= 2


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_POST(self) -> None:
            parts = urlsplit(self.path)
            hub.record(HubRequest(self.command, parts.path, parts.query, 404))
            self._send(*_not_found())

        do_PUT = do_DELETE = do_PATCH = do_POST

        def _serve(self, head: bool) -> None:
            parts = urlsplit(self.path)
            path = parts.path
            if match := RESOLVE.match(path):
                key = f"{match['repo']}/{unquote(match['path'])}"
                if head:
                    hub.saw_head(key)
                status, headers, body = _resolve(hub, match)
                if status == 200 and not head:
                    hub.record(HubRequest(self.command, path, parts.query, status))  # counted on arrival
                    hub.hold_if_first(key)
                    self._send(status, headers, body)
                    return
            elif not head and (match := MODEL_INFO.match(path)):
                status, headers, body = _model_info(hub, match)
            elif not head and (match := TREE.match(path)):
                status, headers, body = _tree(hub, match)
            else:
                status, headers, body = _not_found()
            hub.record(HubRequest(self.command, path, parts.query, status))
            self._send(status, headers, b"" if head else body)

        def _send(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


Response = tuple[int, dict[str, str], bytes]


def _json(data: Any) -> Response:
    body = json.dumps(data).encode()
    return 200, {"Content-Type": "application/json"}, body


def _not_found(code: str | None = None, commit: str | None = None) -> Response:
    headers = {"Content-Type": "application/json"}
    if code:
        headers["X-Error-Code"] = code
    if commit:
        headers["X-Repo-Commit"] = commit
    return 404, headers, json.dumps({"error": code or "not served by the fake hub"}).encode()


def _repo_at(hub: FakeHub, match: re.Match[str]) -> HubRepo | Response:
    repo = hub.repos.get(match["repo"])
    if repo is None:
        return _not_found("RepoNotFound")
    revision = unquote(match["rev"] or MAIN)
    if revision not in (MAIN, repo.commit):
        return _not_found("RevisionNotFound")
    return repo


def _model_info(hub: FakeHub, match: re.Match[str]) -> Response:
    repo = _repo_at(hub, match)
    if not isinstance(repo, HubRepo):
        return repo
    return _json(
        {
            "id": match["repo"],
            "modelId": match["repo"],
            "sha": repo.commit,
            "private": False,
            "gated": False,
            "disabled": False,
            "tags": [],
            "siblings": [{"rfilename": name} for name in sorted(repo.files)],
        }
    )


def _tree(hub: FakeHub, match: re.Match[str]) -> Response:
    repo = _repo_at(hub, match)
    if not isinstance(repo, HubRepo):
        return repo
    folder = unquote(match["path"] or "").strip("/")
    prefix = f"{folder}/" if folder else ""
    entries = [
        {"type": "file", "path": name, "size": len(file.content), "oid": file.git_oid}
        for name, file in sorted(repo.files.items())
        if name.startswith(prefix) and "/" not in name[len(prefix) :]
    ]
    if folder and not entries:
        return _not_found("EntryNotFound", repo.commit)
    return _json(entries)


def _resolve(hub: FakeHub, match: re.Match[str]) -> Response:
    repo = _repo_at(hub, match)
    if not isinstance(repo, HubRepo):
        return repo
    file = repo.files.get(unquote(match["path"]))
    if file is None:
        return _not_found("EntryNotFound", repo.commit)
    headers = {
        "Content-Type": "application/octet-stream",
        "Content-Length": str(len(file.content)),
        "ETag": f'"{file.sha256}"',  # the blob's name in the cache
        "X-Repo-Commit": repo.commit,
        "Accept-Ranges": "bytes",
    }
    return 200, headers, file.content


@contextlib.contextmanager
def serve_fake_hub(repos: Mapping[str, Path], *, hold_first_download: bool = False) -> Iterator[FakeHub]:
    """Serve `{repo_id: directory}` on 127.0.0.1; the hub's `url` is what HF_ENDPOINT should be."""
    hub = FakeHub({repo_id: HubRepo.from_dir(root) for repo_id, root in repos.items()}, hold_first_download)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    httpd.daemon_threads = True
    hub.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield hub
    finally:
        hub.release_holds()  # so no client waits on a closed server
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


LOOPBACK_GUARD = '''"""From tests/trainer/fake_hub.py: refuse, and record, any connection off 127.0.0.1."""
import os
import socket
import traceback

_LOG = os.environ.get("LOOPBACK_GUARD_LOG")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "", None}
_getaddrinfo = socket.getaddrinfo
_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _refuse(what):
    if _LOG:
        with open(_LOG, "a", encoding="utf-8") as log:
            stack = "".join(traceback.format_stack()[:-2])
            log.write(f"pid {os.getpid()}: {what}\\n{stack}\\n")
    return f"{what}: only 127.0.0.1 may be reached in this test"


def _is_loopback(host):
    host = host.decode() if isinstance(host, bytes) else host
    return host in _LOOPBACK or str(host).startswith("127.")


def getaddrinfo(host, *args, **kwargs):
    if not _is_loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, _refuse(f"resolve {host}"))
    return _getaddrinfo(host, *args, **kwargs)


def _check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
        raise OSError(101, _refuse(f"connect {address}"))


def connect(self, address):
    _check(self, address)
    return _connect(self, address)


def connect_ex(self, address):
    _check(self, address)
    return _connect_ex(self, address)


socket.getaddrinfo = getaddrinfo
socket.socket.connect = connect
socket.socket.connect_ex = connect_ex
'''


def install_loopback_guard(directory: Path) -> Path:
    """Write a `sitecustomize.py` into `directory`; put it on PYTHONPATH (with LOOPBACK_GUARD_LOG set)
    and every Python process of the job refuses, and logs, any connection to a host off 127.0.0.1.

    It sees Python sockets only; native clients (hf_xet) are not covered, and the fake hub sends no Xet
    headers, so huggingface_hub does not use one."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(LOOPBACK_GUARD, encoding="utf-8")
    return directory
