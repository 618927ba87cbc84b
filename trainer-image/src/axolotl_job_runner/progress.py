"""Delivering progress reports without ever slowing or failing the training.

The training thread only calls `submit()`, which swaps one reference under a lock. A daemon
thread writes the state file (read by the runner for metrics and the summary) as soon as a report
arrives, and hands the newest report to a POST thread at most every 5 s, plus the final one. One POST
is in flight at a time and the state file never waits for it: an endpoint that hangs (a replaced
operator, a stuck DNS lookup, a server trickling bytes) delays only delivery, never the numbers the
runner reports. Reports that could not be sent are coalesced, not queued.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .contract import PROGRESS_MIN_INTERVAL_SECONDS, ProgressReport

LOG = logging.getLogger("axolotl_job_runner.progress")

POST_TIMEOUT_SECONDS = 3.0  # one POST never blocks the sender longer than this
FINAL_FLUSH_SECONDS = 8.0  # how long close() waits for the final report at most


def read_token(path: str | None) -> str | None:
    """The bearer token, read fresh each time because projected tokens rotate."""
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return token or None


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON so that readers never see a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".progress-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tls_context(ca_file: str | None) -> ssl.SSLContext | None:
    """Verification against the operator's CA (mounted from its ConfigMap) for an https URL; None: the
    system's CAs. Built once per reporter: the CA outlives a training run."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else None


def post_report(
    url: str,
    payload: dict[str, Any],
    token: str | None,
    timeout: float,
    context: ssl.SSLContext | None = None,
) -> int:
    """POST one payload; returns the HTTP status (raises on transport errors, a failed TLS check too)."""
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "axolotl-job-runner"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    # No proxies: the endpoint is the in-cluster operator Service.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


class ProgressReporter:
    """Coalescing, rate-limited, background delivery of ProgressReports."""

    def __init__(
        self,
        url: str | None,
        token_file: str | None,
        state_file: Path | None,
        interval: float = PROGRESS_MIN_INTERVAL_SECONDS,
        timeout: float = POST_TIMEOUT_SECONDS,
        ca_file: str | None = None,
    ) -> None:
        self.url = url if url and url.startswith(("http://", "https://")) else None
        if url and not self.url:
            LOG.warning("AXOLOTL_PROGRESS_URL %r is not http(s); progress will not be POSTed", url)
        self.token_file = token_file
        self.ca_file = ca_file
        self._context: ssl.SSLContext | None = None
        self.state_file = state_file
        self.interval = interval
        self.timeout = timeout
        self.sent = 0
        self.failed = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._unsent: ProgressReport | None = None
        self._unwritten: ProgressReport | None = None
        self._closing = False
        self._posting = False
        self._last_post = float("-inf")
        self._last_error_log = float("-inf")
        self._thread = threading.Thread(target=self._run, name="axolotl-progress", daemon=True)
        self._thread.start()

    def submit(self, report: ProgressReport) -> None:
        """Hand over the newest report (called on the training thread; never blocks on I/O)."""
        with self._lock:
            self._unsent = report
            self._unwritten = report
        self._wake.set()

    def close(self, timeout: float = FINAL_FLUSH_SECONDS) -> None:
        """Send the last report now (ignoring the interval) and stop, waiting at most `timeout`."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout)

    def _take(self) -> tuple[ProgressReport | None, ProgressReport | None, bool, bool, bool]:
        """(to write, to post, closing, a report waits for the interval, a POST is in flight)."""
        with self._lock:
            closing = self._closing
            unwritten, self._unwritten = self._unwritten, None
            if self.url is None:
                self._unsent = None
            busy = self._posting
            due = not busy and (closing or (time.monotonic() - self._last_post) >= self.interval)
            unsent = None
            if due and self._unsent is not None:
                unsent, self._unsent = self._unsent, None
                self._posting = busy = True
            return unwritten, unsent, closing, self._unsent is not None, busy

    def _run(self) -> None:
        while True:
            unwritten, unsent, closing, pending, busy = self._take()
            if unwritten is not None and self.state_file is not None:
                try:
                    write_json_atomic(self.state_file, unwritten.to_payload())
                except OSError as exc:
                    LOG.debug("could not write progress state file: %s", exc)
            if unsent is not None:
                threading.Thread(
                    target=self._post_then_wake, args=(unsent,), name="axolotl-progress-post", daemon=True
                ).start()
            if closing and not pending and not busy:
                return
            # A POST in flight wakes us when it ends; a waiting report, once the interval has passed.
            wait = None
            if pending and not busy:
                wait = max(0.05, self.interval - (time.monotonic() - self._last_post))
            self._wake.wait(wait)
            self._wake.clear()

    def _post_then_wake(self, report: ProgressReport) -> None:
        try:
            self._post(report)
        finally:
            with self._lock:
                self._posting = False
            self._wake.set()

    def _post(self, report: ProgressReport) -> None:
        self._last_post = time.monotonic()
        token = read_token(self.token_file)
        if self.token_file and token is None:
            self._log_failure(f"token file {self.token_file} is missing or empty; report skipped")
            return
        try:
            assert self.url is not None
            if self._context is None and self.ca_file:
                self._context = tls_context(self.ca_file)  # here: a bad CA file is a failed POST
            status = post_report(self.url, report.to_payload(), token, self.timeout, self._context)
        except Exception as exc:  # a dead endpoint must never matter
            self._log_failure(f"POST {self.url} failed: {exc}")
            return
        if 200 <= status < 300:
            self.sent += 1
        else:
            self._log_failure(f"POST {self.url} answered HTTP {status}")

    def _log_failure(self, message: str) -> None:
        self.failed += 1
        now = time.monotonic()
        if now - self._last_error_log >= 60:  # at most one warning a minute
            self._last_error_log = now
            LOG.warning("progress report not delivered (%d so far): %s", self.failed, message)
