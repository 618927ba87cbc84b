"""The one writer of AxolotlJob status: the work queue's process function.

For a key it reads the AxolotlJob, its Job and pods (from the watch cache, `watch_cache`), computes the
status (pure, `status`) and applies what changed with server-side apply under two field managers: the
operator's (phase, reason, message, conditions, times, names) and the progress manager's (`status.progress`:
the trainer's accepted reports and a finished run's final numbers). Progress writes are rate-limited per
job: one per report interval, except that a final report skips the wait, at most once per interval (a sender
repeating "final" is coalesced like any other); a report that must wait makes the key run again when its
window opens. Errors propagate: the queue retries with backoff, so no update is lost.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import metrics
from .api.status import OWNED_STATUS_KEYS, PROGRESS_FIELD_MANAGER, STATUS_FIELD_MANAGER, Reason
from .constants import Names
from .kube import ApiError, KubeApi, Obj
from .notebook import NotebookView
from .ownership import controlled_by
from .progress import Report, is_newer, newest, to_progress
from .status import JobFacts, StatusResult, Transition, compute_status
from .status.children import run_ended
from .trainer_contract import PROGRESS_MIN_INTERVAL_SECONDS, utc_now
from .watch_cache import WatchCache

log = logging.getLogger("axolotl_operator")

Key = tuple[str, str]  # (namespace, name)
MESSAGE_PROGRESS_KEYS = ("checkpointStep", "resumedFromStep")  # progress the status message quotes


class StatusWriter:
    """Computes and applies one AxolotlJob's status; holds the progress reports waiting to be written."""

    def __init__(
        self,
        kube: KubeApi,
        facts: Callable[[Mapping[str, Any]], JobFacts],
        blocker: Callable[[Key], tuple[str, Reason, str] | None] = lambda key: None,
        gone: Callable[[Key], None] = lambda key: None,
        notebook: Callable[[Obj, JobFacts, Obj | None], NotebookView | None] = lambda axj, facts, job: None,
        hold: Callable[[Obj | None, str | None, bool], None] = lambda job, queue_name, suspend: None,
        progress_interval: float = PROGRESS_MIN_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        cache: WatchCache | None = None,
    ) -> None:
        self.kube = kube
        self.cache = cache if cache is not None else WatchCache(kube)  # never ready: reads the API
        self.facts = facts
        self.blocker = blocker
        self.gone = gone  # told when the AxolotlJob no longer exists
        self.notebook = notebook  # keeps spec.notebook's objects; what the status shows about them
        self.hold = hold  # keeps Kueue from restarting a queued job the user suspended
        self.progress_interval = progress_interval
        self.clock = clock
        self._lock = threading.Lock()
        self._reports: dict[Key, Report] = {}
        self._last_progress: dict[Key, float] = {}
        self._early_final: dict[Key, float] = {}  # when a final report last skipped the wait
        self._events: dict[Key, list[tuple[Obj, Transition]]] = {}  # Events written status owes the user

    # ---------------------------------------------------------------- progress reports

    def offer(self, report: Report) -> Key:
        """Keep an accepted report (the newest per job) for the next sync of its job; returns the key."""
        key = (report.job_namespace, report.job_name)
        with self._lock:
            self._reports[key] = newest(self._reports.get(key), report)
        return key

    def forget(self, key: Key) -> None:
        with self._lock:
            self._reports.pop(key, None)
            self._last_progress.pop(key, None)
            self._early_final.pop(key, None)
            self._events.pop(key, None)

    # ---------------------------------------------------------------- the sync

    def sync(self, key: Key) -> float | None:
        """Bring the job's status up to date; seconds until a waiting report may be written, or None."""
        namespace, name = key
        axj = self.cache.get_axolotljob(namespace, name)
        if axj is None or axj["metadata"].get("deletionTimestamp"):
            self.forget(key)
            self.gone(key)
            return None
        facts = self.facts(axj)
        job, pods, foreign = self._children(axj, facts)
        uid = axj["metadata"].get("uid")
        blocked = self.blocker(key)  # (uid, reason, message): only this AxolotlJob's, not a namesake's
        blocker = blocked[1:] if blocked and blocked[0] == uid else None
        self.hold(job, facts.queue_name, facts.suspend)
        notebook = self.notebook(axj, facts, job)
        result = compute_status(
            axj, job, pods, facts, utc_now(), foreign_job=foreign, blocker=blocker, notebook=notebook
        )
        status = dict(axj.get("status") or {})
        if result.changed(status):
            self._apply(key, result.status, STATUS_FIELD_MANAGER)
            self._announce(axj, result)
            status = {k: v for k, v in status.items() if k not in OWNED_STATUS_KEYS} | result.status
        self._post_events(key)
        if result.progress_changed(status):
            self._apply(key, {"progress": result.progress}, PROGRESS_FIELD_MANAGER)
            status["progress"] = result.progress
        return self._write_report(key, status, uid)

    def _children(self, axj: Obj, facts: JobFacts) -> tuple[Obj | None, list[Obj], Obj | None]:
        """(this AxolotlJob's Job, its pods, a previous AxolotlJob's Job of the same name). Read even when
        the spec is invalid now: an invalid edit of a running job must not hide the Job that still runs."""
        meta = axj["metadata"]
        job = self.cache.get_job(meta["namespace"], Names.of(meta["name"]).job)
        if job is None:
            return None, [], None
        if not controlled_by(job, meta["uid"]):
            return None, [], job  # about to be garbage-collected
        # An ended run's pods are read afresh: their termination summaries make the final status, and the
        # pod watch may deliver them after the Job's.
        pods = self.cache.job_pods(meta["namespace"], job["metadata"]["uid"], fresh=run_ended(job))
        return job, pods, None

    def _apply(self, key: Key, status: Mapping[str, Any], manager: str) -> None:
        """Write, and keep what the API server answered: the next sync must not take the status it
        replaced for the current one (it would announce the same transition twice)."""
        try:
            self.cache.put_axolotljob(self.kube.apply_status(key[0], key[1], status, manager))
        except ApiError as exc:
            if exc.status != 404:  # deleted meanwhile: nothing to write
                raise

    def _write_report(self, key: Key, status: Mapping[str, Any], uid: str | None) -> float | None:
        with self._lock:
            report = self._reports.get(key)
            if report is None:
                return None
            if (report.job_uid is not None and report.job_uid != uid) or not is_newer(report, status):
                del self._reports[key]
                return None
            at = self.clock()
            wait = self._last_progress.get(key, -math.inf) + self.progress_interval - at
            early = report.final and at - self._early_final.get(key, -math.inf) >= self.progress_interval
            if wait > 0 and not early:
                return wait
            del self._reports[key]
        written = to_progress(report, status.get("progress"))  # a partial (Kubeflow) report keeps the rest
        try:
            self._apply(key, {"progress": written}, PROGRESS_FIELD_MANAGER)
        except Exception:
            self.offer(report)  # retried with the key; a newer report meanwhile wins
            raise
        with self._lock:
            self._last_progress[key] = self.clock()
            if wait > 0:
                self._early_final[key] = self._last_progress[key]
        metrics.observe_progress(key[0], key[1], written)
        log.debug("%s/%s: progress step %s", key[0], key[1], written.get("step"))
        before = status.get("progress") or {}
        if any(written.get(k) != before.get(k) for k in MESSAGE_PROGRESS_KEYS):
            return 0.0  # the message quotes these ("checkpoint saved at step N"): compute it again now
        return None

    # ---------------------------------------------------------------- events

    def _announce(self, axj: Obj, result: StatusResult) -> None:
        """Queue one Event (and log one line) per transition just written; `_post_events` sends them."""
        namespace, name = axj["metadata"]["namespace"], axj["metadata"]["name"]
        owner = {key: axj.get(key) for key in ("apiVersion", "kind")} | {"metadata": dict(axj["metadata"])}
        for transition in result.transitions:
            if transition.reason != Reason.SPEC_WARNING:
                metrics.transition(result.status["phase"], transition.reason)
            log.info("%s/%s: %s: %s", namespace, name, transition.reason, transition.message)
        if result.transitions:
            with self._lock:
                self._events.setdefault((namespace, name), []).extend((owner, t) for t in result.transitions)

    def _post_events(self, key: Key) -> None:
        """Send the job's queued Events in order. One the API server refuses for good (a namespace being
        deleted, a 4xx) is dropped with a log line; a transient failure (429, 5xx, unreachable) raises, so
        the queue retries the job with backoff and the Events follow the status they describe."""
        while True:
            with self._lock:
                pending = self._events.get(key)
                if not pending:
                    self._events.pop(key, None)
                    return
                owner, transition = pending[0]
            try:
                self.kube.event(owner, transition.type, transition.reason, transition.message)
            except ApiError as exc:
                if exc.status == 429 or exc.status >= 500:
                    raise
                terminating = exc.status == 403 and "being terminated" in str(exc)
                log.log(
                    logging.DEBUG if terminating else logging.WARNING,
                    "%s/%s: could not record event %s: %s",
                    key[0],
                    key[1],
                    transition.reason,
                    exc,
                )
            with self._lock:
                pending.pop(0)
