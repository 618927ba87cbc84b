"""The operator's state and its two jobs: make an AxolotlJob's children exist, keep its status current.

- `reconcile` (create/update/resume): parse -> render -> create each child (409 = it exists: adopt or
  keep, never duplicate) -> sync the Job's mutable fields -> enqueue the status.
- Everything that may change a status (reconciles, Job and pod events, accepted progress reports, the
  periodic resync) only enqueues the job's key; `StatusWriter.sync` does the work, one worker per key,
  retried with backoff (`WorkQueue`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import kopf

from . import metrics
from .api import SpecError, parse_job
from .api.status import TERMINAL_PHASES
from .constants import JOB_LABEL
from .kube import KubeApi
from .progress import Report
from .render import controlled_by, job_updates, render
from .settings import OperatorSettings
from .status import JobFacts, facts_of, facts_of_error
from .status_writer import Key, StatusWriter
from .workqueue import WorkQueue

log = logging.getLogger("axolotl_operator")

RETRY_DELAY = 3  # seconds before Kopf retries a reconcile that had to wait (e.g. for garbage collection)
STATUS_WORKERS = 8
RESYNC_SECONDS = 300.0
FACTS_CACHE_MAX = 4096


class Operator:
    """Settings, the API client, the status queue and writer, and a cache of parsed specs."""

    def __init__(
        self,
        settings: OperatorSettings,
        kube: KubeApi,
        *,
        workers: int = STATUS_WORKERS,
        resync_seconds: float = RESYNC_SECONDS,
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 60.0,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.resync_seconds = resync_seconds
        self.writer = StatusWriter(kube, self.facts)
        self.queue = WorkQueue(
            self.writer.sync,  # type: ignore[arg-type]
            workers=workers,
            base_delay=retry_base_delay,
            max_delay=retry_max_delay,
            on_error=self._status_failed,
            name="status",
        )
        self._facts: dict[tuple[str, int], JobFacts] = {}
        self._phases: dict[Key, str | None] = {}  # every AxolotlJob seen -> its last seen phase
        self._guard = threading.Lock()

    def start(self) -> Operator:
        self.queue.start()
        if self.resync_seconds > 0:
            self.queue.every(self.resync_seconds, self._unfinished)
        return self

    def stop(self) -> None:
        self.queue.stop()

    # ---------------------------------------------------------------- triggers

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def seen(self, namespace: str, name: str, phase: str | None) -> None:
        """An AxolotlJob as the watch delivered it: remembered for the resync."""
        with self._guard:
            self._phases[(namespace, name)] = phase

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        with self._guard:
            self._phases.pop(key, None)
        self.queue.forget(key)
        self.writer.forget(key)

    def accept_progress(self, report: Report) -> None:
        """A progress report the endpoint authorized: written by the job's next status sync."""
        self.queue.add(self.writer.offer(report))

    def _unfinished(self) -> Iterator[Key]:
        """What the resync revisits: jobs not known to be finished (a finished job changes only
        through its Job or pods, whose events still enqueue it)."""
        with self._guard:
            keys = [key for key, phase in self._phases.items() if phase not in TERMINAL_PHASES]
        yield from keys

    def _status_failed(self, key: Any, error: BaseException, failures: int, delay: float) -> None:
        metrics.reconcile_error("status")
        namespace, name = key
        log.warning(
            "%s/%s: status not written (%d failure(s) in a row), retrying in %.1fs: %s",
            namespace,
            name,
            failures,
            delay,
            error,
        )

    # ---------------------------------------------------------------- facts (parse once per generation)

    def facts(self, axj: Mapping[str, Any]) -> JobFacts:
        meta = axj["metadata"]
        key = (meta["uid"], int(meta.get("generation") or 0))
        with self._guard:
            cached = self._facts.get(key)
        if cached is not None:
            return cached
        try:
            facts = facts_of(parse_job(axj), self.settings)
        except SpecError as error:
            facts = facts_of_error(error)
        with self._guard:
            if len(self._facts) >= FACTS_CACHE_MAX:
                self._facts.clear()
            self._facts[key] = facts
        return facts

    # ---------------------------------------------------------------- children

    def reconcile(self, body: Mapping[str, Any], namespace: str, name: str) -> None:
        """Make the children exist as rendered; idempotent, so create, update and resume share it."""
        manifest = {key: body[key] for key in body}  # Kopf's Body as a plain dict
        try:
            parsed = parse_job(manifest)
        except SpecError as error:
            self.enqueue(namespace, name)
            raise kopf.PermanentError(f"invalid spec, nothing created: {error}") from None
        phase = (manifest.get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES and self.kube.get_job(namespace, name) is None:
            # Finished and its Job removed by ttlSecondsAfterFinished: never train again on resume.
            log.info("%s/%s: reconciled: %s and its Job is gone; nothing to create", namespace, name, phase)
            self.enqueue(namespace, name)
            return
        children = render(parsed, self.settings, namespace, owner=manifest)
        uid = manifest["metadata"]["uid"]
        job: dict[str, Any] | None = None
        for child in children.manifests():
            obj, created = self.kube.create(child)
            if created:
                log.info("%s/%s: created %s %s", namespace, name, child["kind"], child["metadata"]["name"])
            else:
                self._adopt(obj, child, uid)
            if child is children.job:
                job = obj
        assert job is not None
        updates = job_updates(
            job, children.job, queue_name=parsed.job.spec.queue_name, suspend=parsed.job.spec.suspend
        )
        if updates:
            log.info("%s/%s: updating Job spec %s", namespace, name, updates)
            self.kube.merge_patch("batch/v1", "Job", namespace, name, {"spec": updates})
        self.enqueue(namespace, name)
        log.info("%s/%s: reconciled", namespace, name)

    def _adopt(self, existing: Mapping[str, Any], desired: Mapping[str, Any], uid: str) -> None:
        """An existing child is kept; one without a controller is adopted; another owner's is waited out."""
        meta = existing.get("metadata") or {}
        refs = list(meta.get("ownerReferences") or [])
        controller = next((ref for ref in refs if ref.get("controller")), None)
        wanted = desired["metadata"].get("ownerReferences")
        kind, child = desired["kind"], desired["metadata"]["name"]
        namespace = desired["metadata"]["namespace"]
        if controller is None:
            if wanted:
                log.info("%s/%s: adopting %s %s", namespace, child, kind, child)
                self.kube.merge_patch(
                    desired["apiVersion"],
                    kind,
                    namespace,
                    child,
                    {"metadata": {"ownerReferences": refs + list(wanted)}},
                )
            return
        if not controlled_by(existing, uid):
            self.enqueue(namespace, (desired["metadata"].get("labels") or {}).get(JOB_LABEL, child))
            raise kopf.TemporaryError(
                f"{kind} {child} belongs to {controller.get('kind')} {controller.get('name')} "
                f"(uid {controller.get('uid')}), e.g. a deleted AxolotlJob of the same name; "
                "waiting for it to be garbage-collected",
                delay=RETRY_DELAY,
            )
