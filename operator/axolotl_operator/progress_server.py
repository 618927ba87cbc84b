"""The HTTP endpoint trainer pods POST progress to (`run --progress-port`): a thin shell over `progress`.

Why its own thread and event loop: Kopf's loop must never wait on this endpoint, and this endpoint must
never wait on Kopf. Blocking API calls (TokenReview, reads) run in a small thread pool.

    POST /progress   Authorization: Bearer <projected ServiceAccount token, audience = settings>
      429 too many from this address or token · 401 no/invalid token · 413 body over 16 KiB
      400 bad payload · 403 not this job's pod · 503 API server unavailable · 202 taken
    POST /kubeflow/namespaces/<namespace>/axolotljobs/<name>
      what transformers' KubeflowCallback sends (images without our runner): the same checks in the
      same order, the job named by the path; 200 taken (the callback ignores anything else)

Over HTTPS when given an SSLContext (`progress_tls` keeps its certificate): a bearer token never crosses
the pod network in cleartext. Plain HTTP is for local runs on loopback.

The input is the attacker's, so the order is cheapest and most certain first: rate limits (a token
bucket per remote address, then per token hash; 429 with Retry-After), then who sends (TokenReview),
and only then is the body read and parsed (a stranger's body is never looked at); the job it names
decides the pod and Job checks. TokenReview answers are cached per token hash, refusals too (60 s / 10 s),
so a pod reporting every 5 s costs one review a minute and junk tokens one per 10 s; pod checks per
(token, job) likewise. Every table is bounded (oldest entry out first). Tokens and bodies are never
logged or stored (only a hash), and a log line is one line.

An accepted report is handed to `accept` (the Operator's status queue, which writes at most one progress
update per job and interval); this endpoint writes nothing itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, NamedTuple, TypeVar

from aiohttp import web

from . import metrics
from .constants import Names
from .kube import KubeApi
from .progress import (
    KUBEFLOW_ROUTE,
    PROGRESS_PATH,
    Bucket,
    Denied,
    Identity,
    PayloadError,
    Report,
    authorize,
    bearer_token,
    check_identity,
    identity_of,
    parse_kubeflow,
    parse_report,
    take,
)
from .trainer_contract import PROGRESS_MAX_BODY_BYTES as MAX_BODY_BYTES

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("axolotl_operator.progress")

PATH = PROGRESS_PATH
ALLOWED_SECONDS = 60.0  # a token's identity, and its pod's right to report for a job
REFUSED_SECONDS = 10.0  # a refusal (401, 403): a junk token costs one TokenReview per 10 s
CACHE_MAX = 4096  # entries per table (identities, authorizations, each rate limiter)
WORKERS = 4

K = TypeVar("K", bound=Hashable)
Parse = Callable[[bytes, datetime], Report]  # a protocol's body (and path) -> a Report, or PayloadError
V = TypeVar("V")


@dataclass(frozen=True)
class Limit:
    """A token bucket: `rate` requests per second on average, `burst` at once."""

    rate: float = 10.0
    burst: float = 20.0


class Answer(NamedTuple):
    code: int
    message: str
    retry_after: float | None = None


class Expiring(Generic[K, V]):
    """A map whose entries expire, holding at most `size` (the oldest goes first). Not thread-safe:
    used from the endpoint's event loop only."""

    def __init__(self, size: int = CACHE_MAX) -> None:
        self.size = size
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K, now: float) -> V | None:
        item = self._items.get(key)
        if item is None:
            return None
        if item[0] <= now:
            del self._items[key]
            return None
        return item[1]

    def put(self, key: K, value: V, expires: float) -> None:
        self._items[key] = (expires, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class RateLimiter:
    """A token bucket per key, for at most `size` keys (the least recently seen go first: a sender
    needs `size` others in between to start afresh). Event loop only."""

    def __init__(self, limit: Limit, size: int = CACHE_MAX) -> None:
        self.limit = limit
        self.size = size
        self._buckets: OrderedDict[Hashable, Bucket] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, now: float) -> float:
        """0 if a request of `key` may pass now, else the seconds until one may."""
        bucket, wait = take(self._buckets.get(key), now, self.limit.rate, self.limit.burst)
        self._buckets[key] = bucket
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.size:
            self._buckets.popitem(last=False)
        return wait


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
        *,
        monotonic: Callable[[], float] = time.monotonic,
        per_address: Limit = Limit(),
        per_token: Limit = Limit(),
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.kube = kube
        self.audience = audience
        self.accept = accept
        self.host = host
        self.port = port
        self.clock = clock
        self.monotonic = monotonic
        self.ssl_context = ssl_context
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="progress")
        self._by_address = RateLimiter(per_address)
        self._by_token = RateLimiter(per_token)
        self._identities: Expiring[str, Identity | Denied] = Expiring()
        self._authorized: Expiring[tuple[str, str, str], Denied | str] = Expiring()  # -> job uid
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(PATH, self._post)
        app.router.add_post(KUBEFLOW_ROUTE, self._post_kubeflow)
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
            site = web.TCPSite(runner, self.host, self.port, ssl_context=self.ssl_context)
            loop.run_until_complete(site.start())
            self.port = int(runner.addresses[0][1])
            self._stop = asyncio.Event()
        except BaseException as exc:
            errors.append(exc)
            ready.set()
            loop.run_until_complete(runner.cleanup())
            loop.close()
            return
        scheme = "https" if self.ssl_context is not None else "http"
        log.info("progress endpoint on %s://%s:%d%s", scheme, self.host, self.port, PATH)
        ready.set()
        try:
            loop.run_until_complete(self._stop.wait())
            loop.run_until_complete(runner.cleanup())
        finally:
            loop.close()

    # ---------------------------------------------------------------- HTTP

    async def _post(self, request: web.Request) -> web.Response:
        return await self._respond(request, lambda body, now: parse_report(body, now), 202)

    async def _post_kubeflow(self, request: web.Request) -> web.Response:
        namespace, name = request.match_info["namespace"], request.match_info["name"]
        return await self._respond(request, lambda body, now: parse_kubeflow(body, namespace, name, now), 200)

    async def _respond(self, request: web.Request, parse: Parse, accepted: int) -> web.Response:
        try:
            answer = await self._answer(request, parse, accepted)
        except Exception as exc:  # a bug: one line in the log, no traceback with a request in it
            log.error("progress report failed: %s", one_line(exc))
            answer = Answer(500, "internal error")
        metrics.progress_report(answer.code)
        headers = {}
        if answer.code == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="axolotl-operator"'
        if answer.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(answer.retry_after)))
        return web.json_response(
            {"code": answer.code, "message": answer.message}, status=answer.code, headers=headers
        )

    async def _answer(self, request: web.Request, parse: Parse, accepted: int) -> Answer:
        wait = self._by_address.take(request.remote or "", self.monotonic())
        if wait:
            return Answer(429, "too many requests from this address", wait)
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            return Answer(401, "a bearer token is required")
        digest = hashlib.sha256(token.encode()).hexdigest()
        wait = self._by_token.take(digest, self.monotonic())
        if wait:
            return Answer(429, "too many requests with this token", wait)
        if (request.content_length or 0) > MAX_BODY_BYTES:
            return Answer(413, f"body over {MAX_BODY_BYTES} bytes")
        try:
            identity = await self._identity(token, digest)
        except Denied as denied:
            return Answer(denied.status, denied.reason)
        except Exception as exc:  # the API server is unreachable or answered an error: try again later
            log.warning("cannot review a progress report's token: %s", one_line(exc, token))
            return Answer(503, "the API server could not check the token")
        body = await _read_at_most(request, MAX_BODY_BYTES + 1)
        if len(body) > MAX_BODY_BYTES:
            return Answer(413, f"body over {MAX_BODY_BYTES} bytes")
        try:
            report = parse(body, self.clock())
        except PayloadError as exc:
            return Answer(400, str(exc))
        try:
            uid = await self._authorize(identity, digest, report)
        except Denied as denied:
            return Answer(denied.status, denied.reason)
        except Exception as exc:
            where = f"{report.job_namespace}/{report.job_name}"
            log.warning("%s: cannot check a progress report's pod: %s", where, one_line(exc, token))
            return Answer(503, "the API server could not check the pod")
        self.accept(dataclasses.replace(report, job_uid=uid))
        return Answer(accepted, "accepted")

    # ---------------------------------------------------------------- who sends, and may it report

    async def _identity(self, token: str, digest: str) -> Identity:
        """The token's identity, from the cache or a TokenReview; a refusal is cached too."""
        known = self._identities.get(digest, self.monotonic())
        if known is None:
            loop = asyncio.get_running_loop()
            review = await loop.run_in_executor(self._pool, self.kube.token_review, token, [self.audience])
            try:
                known, seconds = identity_of(review, self.audience), ALLOWED_SECONDS
            except Denied as denied:
                log.debug("progress report refused (%d): %s", denied.status, denied.reason)
                known, seconds = denied, REFUSED_SECONDS
            self._identities.put(digest, known, self.monotonic() + seconds)
        if isinstance(known, Denied):
            raise Denied(known.status, known.reason)
        return known

    async def _authorize(self, identity: Identity, digest: str, report: Report) -> str:
        """The uid of the AxolotlJob the token's pod may report for (from the cache or the pod and Job
        checks), or Denied."""
        key = (digest, report.job_namespace, report.job_name)
        known = self._authorized.get(key, self.monotonic())
        if known is None:
            loop = asyncio.get_running_loop()
            try:
                known = await loop.run_in_executor(self._pool, self._check, identity, report)
                seconds = ALLOWED_SECONDS
            except Denied as denied:
                where = f"{report.job_namespace}/{report.job_name}"
                log.info("%s: progress report refused (%d): %s", where, denied.status, denied.reason)
                known, seconds = denied, REFUSED_SECONDS
            self._authorized.put(key, known, self.monotonic() + seconds)
        if isinstance(known, Denied):
            raise Denied(known.status, known.reason)
        return known

    def _check(self, identity: Identity, report: Report) -> str:
        """In a worker thread: read the token's pod, the AxolotlJob and its Job, and decide (pure)."""
        check_identity(identity, report)
        namespace = report.job_namespace
        assert identity.pod_name is not None  # check_identity ensured it
        pod = self.kube.get_pod(namespace, identity.pod_name)
        axj = self.kube.get_axolotljob(namespace, report.job_name)
        job = self.kube.get_job(namespace, Names.of(report.job_name).job)
        authorize(identity, report, pod, job, axj)
        assert axj is not None  # authorize ensured it
        return str(axj["metadata"]["uid"])


def one_line(error: BaseException, secret: str | None = None, limit: int = 300) -> str:
    """An error for the log: its type and first line, bounded, without `secret` (a client library may
    put the request, token included, into its message)."""
    text = str(error)
    if secret:
        text = text.replace(secret, "<token>")
    first = text.strip().partition("\n")[0]
    return f"{type(error).__name__}: {first}"[:limit]


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The body, or its first `limit` bytes (a chunked body has no Content-Length to refuse early)."""
    body = bytearray()
    while len(body) < limit:
        chunk = await request.content.read(limit - len(body))
        if not chunk:
            break
        body += chunk
    return bytes(body)
