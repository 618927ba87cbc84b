"""The HTTP endpoint trainer pods POST progress to (`run --progress-port`): a thin shell over `progress`.

Why its own thread and event loop: Kopf's loop must never wait on this endpoint, and this endpoint must
never wait on Kopf. Blocking API calls (TokenReview, reads, the status patch) run in a small thread pool.

    POST /progress   Authorization: Bearer <projected ServiceAccount token, audience = settings>
      413 body over 16 KiB · 401 no/invalid token · 400 bad payload · 403 not this job's pod · 202 taken

Writes are coalesced per job: at most one status patch every 5 s carrying the newest report, and a final
report at once. A successful authorization is remembered for a minute per (token, job) so that a pod
reporting every 5 s costs one TokenReview a minute. The token is never logged or stored (only a hash).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from . import metrics
from .kube import ApiError, Kube
from .progress import (
    MAX_BODY_BYTES,
    MIN_PATCH_INTERVAL_SECONDS,
    Denied,
    PayloadError,
    Report,
    authorize,
    bearer_token,
    check_identity,
    identity_of,
    is_newer,
    newest,
    parse_report,
    progress_patch,
    to_progress,
)
from .render import Names

log = logging.getLogger("axolotl_operator.progress")

PATH = "/progress"
AUTH_CACHE_SECONDS = 60.0
AUTH_CACHE_MAX = 4096
MAX_SLOTS = 1024
WORKERS = 4
CONFLICT_RETRIES = 5


@dataclass
class _Slot:
    """One job's coalescing state; touched only on the server's event loop."""

    pending: Report | None = None
    last_write: float = -math.inf
    timer: asyncio.TimerHandle | None = None
    writing: bool = False


class ProgressServer:
    """Receives progress reports and writes them to the AxolotlJobs' status."""

    def __init__(
        self,
        kube: Kube,
        audience: str,
        host: str = "0.0.0.0",
        port: int = 0,
        interval: float = MIN_PATCH_INTERVAL_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.audience = audience
        self.host = host
        self.port = port
        self.interval = interval
        self.clock = clock
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="progress")
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._authorized: dict[tuple[str, str, str], float] = {}
        self._auth_lock = threading.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
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
            for slot in self._slots.values():
                if slot.timer is not None:
                    slot.timer.cancel()
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
        self._submit(report)
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

    # ---------------------------------------------------------------- coalescing (event loop)

    def _submit(self, report: Report) -> None:
        key = (report.job_namespace, report.job_name)
        if key not in self._slots and len(self._slots) >= MAX_SLOTS:
            self._prune()
        slot = self._slots.setdefault(key, _Slot())
        slot.pending = newest(slot.pending, report)
        self._schedule(key, slot)

    def _prune(self) -> None:
        idle_since = time.monotonic() - self.interval
        for key, slot in list(self._slots.items()):
            busy = slot.pending is not None or slot.writing or slot.timer is not None
            if not busy and slot.last_write < idle_since:
                del self._slots[key]

    def _schedule(self, key: tuple[str, str], slot: _Slot) -> None:
        if slot.writing or slot.pending is None:
            return  # the running write reschedules when done
        delay = 0.0 if slot.pending.final else max(0.0, slot.last_write + self.interval - time.monotonic())
        if slot.timer is not None:
            if delay > 0:
                return  # already due at the end of this window
            slot.timer.cancel()
        slot.timer = asyncio.get_running_loop().call_later(delay, self._fire, key, slot)

    def _fire(self, key: tuple[str, str], slot: _Slot) -> None:
        slot.timer = None
        report, slot.pending = slot.pending, None
        if report is None:
            return
        slot.writing = True
        task = asyncio.get_running_loop().create_task(self._flush(key, slot, report))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, key: tuple[str, str], slot: _Slot, report: Report) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._pool, self._write, report)
        except Exception as exc:
            metrics.reconcile_error("progress")
            log.warning("%s/%s: could not write progress: %s", key[0], key[1], exc)
        finally:
            slot.writing = False
            slot.last_write = time.monotonic()
        self._schedule(key, slot)

    # ---------------------------------------------------------------- the status write (worker thread)

    def _write(self, report: Report) -> bool:
        """Patch status.progress if the report is newer than what it shows; True if written."""
        namespace, name = report.job_namespace, report.job_name
        for _ in range(CONFLICT_RETRIES):
            axj = self.kube.get_axolotljob(namespace, name)
            if axj is None or axj["metadata"].get("deletionTimestamp"):
                return False
            if not is_newer(report, axj.get("status")):
                return False
            patch: dict[str, Any] = {"progress": progress_patch(report)}
            try:
                self.kube.patch_status(namespace, name, axj["metadata"]["resourceVersion"], patch)
            except ApiError as exc:
                if exc.status == 409:
                    continue  # the status changed meanwhile: decide again on the fresh one
                if exc.status == 404:
                    return False
                raise
            metrics.observe_progress(namespace, name, to_progress(report))
            log.debug("%s/%s: progress step %d", namespace, name, report.step)
            return True
        log.warning("%s/%s: status kept changing; progress step %d dropped", namespace, name, report.step)
        return False


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The body, or its first `limit` bytes (a chunked body has no Content-Length to refuse early)."""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
