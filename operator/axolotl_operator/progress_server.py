"""The HTTP endpoint trainer pods POST progress to (`run --progress-port`): a thin shell over `progress`.

Why its own thread and event loop: Kopf's loop must never wait on this endpoint, and this endpoint must
never wait on Kopf. Blocking API calls (TokenReview, reads) run in a small thread pool.

    POST /progress   Authorization: Bearer <projected ServiceAccount token, audience = settings>
      413 body over 16 KiB · 401 no/invalid token · 400 bad payload · 403 not this job's pod · 202 taken

An accepted report is handed to `accept` (the Operator's status queue, which writes at most one progress
update per job and interval, the final report at once); this endpoint writes nothing itself. A
successful authorization is remembered for a minute per (token, job) so that a pod reporting every 5 s
costs one TokenReview a minute. The token is never logged or stored (only a hash).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

from aiohttp import web

from . import metrics
from .constants import Names
from .kube import KubeApi
from .progress import (
    Denied,
    PayloadError,
    Report,
    authorize,
    bearer_token,
    check_identity,
    identity_of,
    parse_report,
)
from .trainer_contract import PROGRESS_MAX_BODY_BYTES as MAX_BODY_BYTES

log = logging.getLogger("axolotl_operator.progress")

PATH = "/progress"
AUTH_CACHE_SECONDS = 60.0
AUTH_CACHE_MAX = 4096
WORKERS = 4


class ProgressServer:
    """Receives progress reports, authorizes them and hands the accepted ones to `accept`."""

    def __init__(
        self,
        kube: KubeApi,
        audience: str,
        accept: Callable[[Report], None],
        host: str = "0.0.0.0",
        port: int = 0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.audience = audience
        self.accept = accept
        self.host = host
        self.port = port
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="progress")
        self._authorized: dict[tuple[str, str, str], float] = {}
        self._auth_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(PATH, self._post)
        return app

    def start(self, timeout: float = 30) -> int:
        """Listen in a daemon thread; return the bound port once it accepts (or raise why it cannot)."""
        ready = threading.Event()
        errors: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, errors), name="progress-server", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("the progress endpoint did not start")
        if errors:
            raise errors[0]
        return self.port

    def stop(self, timeout: float = 10) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _serve(self, ready: threading.Event, errors: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        runner = web.AppRunner(self.app(), access_log=None)  # one line per pod every 5 s is noise
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, self.host, self.port)
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
            self._stop = asyncio.Event()
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        log.info("progress endpoint on http://%s:%d%s", self.host, self.port, PATH)
        ready.set()
        try:
            loop.run_until_complete(self._stop.wait())
            loop.run_until_complete(runner.cleanup())
        finally:
            loop.close()

    # ---------------------------------------------------------------- HTTP

    async def _post(self, request: web.Request) -> web.Response:
        code, message = await self._answer(request)
        metrics.progress_report(code)
        headers = {"WWW-Authenticate": 'Bearer realm="axolotl-operator"'} if code == 401 else None
        return web.json_response({"code": code, "message": message}, status=code, headers=headers)

    async def _answer(self, request: web.Request) -> tuple[int, str]:
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return 413, f"body over {MAX_BODY_BYTES} bytes"
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return 401, "a bearer token is required"
        body = await _read_at_most(request, MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return 413, f"body over {MAX_BODY_BYTES} bytes"
        try:
            report = parse_report(body, self.clock())
        except PayloadError as exc:
            return 400, str(exc)
        loop = asyncio.get_running_loop()
        where = f"{report.job_namespace}/{report.job_name}"
        try:
            await loop.run_in_executor(self._pool, self._authorize, token, report)
        except Denied as denied:
            log.info("%s: progress report refused (%d): %s", where, denied.status, denied.reason)
            return denied.status, denied.reason
        except Exception as exc:  # the API server is unreachable or answered an error: try again later
            log.warning("%s: cannot check a progress report's token: %s", where, exc)
            return 503, "the API server could not check the token"
        self.accept(report)
        return 202, "accepted"

    # ---------------------------------------------------------------- authorization (worker threads)

    def _authorize(self, token: str, report: Report) -> None:
        key = (hashlib.sha256(token.encode()).hexdigest(), report.job_namespace, report.job_name)
        now = time.monotonic()
        with self._auth_lock:
            if self._authorized.get(key, 0.0) > now:
                return
        identity = identity_of(self.kube.token_review(token, [self.audience]), self.audience)
        check_identity(identity, report)
        namespace = report.job_namespace
        assert identity.pod_name is not None  # check_identity ensured it
        pod = self.kube.get_pod(namespace, identity.pod_name)
        axj = self.kube.get_axolotljob(namespace, report.job_name)
        job = self.kube.get_job(namespace, Names.of(report.job_name).job)
        authorize(identity, report, pod, job, axj)
        with self._auth_lock:
            if len(self._authorized) >= AUTH_CACHE_MAX:
                self._authorized = {k: v for k, v in self._authorized.items() if v > now}
                if len(self._authorized) >= AUTH_CACHE_MAX:
                    self._authorized.clear()
            self._authorized[key] = now + AUTH_CACHE_SECONDS


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The body, or its first `limit` bytes (a chunked body has no Content-Length to refuse early)."""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
