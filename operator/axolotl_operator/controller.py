"""The operator's state and its two jobs: make an AxolotlJob's children exist, keep its status current.

- `reconcile`: parse -> render -> create each child (409 = it exists: adopt or keep, never duplicate)
  -> sync the Job's mutable fields -> enqueue the status. It runs on the reconcile queue, once per
  generation of each AxolotlJob the watch delivers (new, edited, or seen at start), and again when it
  must wait (`Waits`) or failed (backoff); `Stopped` ends it until the spec changes. Kopf's own change
  handlers are not used: they keep a diff base per object (a deep copy per event and a PATCH per change)
  that a generation number makes unnecessary.
- Everything that may change a status (reconciles, Job and pod events, accepted progress reports, the
  periodic resync) only enqueues the job's key; `StatusWriter.sync` does the work, one worker per key,
  retried with backoff (`WorkQueue`).
"""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from . import metrics
from .api import SpecError, parse_job
from .api.job import API_VERSION, KIND
from .api.status import TERMINAL_PHASES, Reason
from .constants import CLAIM_PENDING, CLAIM_UID_ANNOTATION
from .kube import REJECTED_STATUSES, ApiError, KubeApi
from .kueue_hold import KueueHold
from .notebook_keeper import NotebookKeeper
from .ownership import Ownership, controlled_by, controller_of, describe, made_for, made_since, ownership
from .progress import Report
from .render import job_updates, render
from .settings import OperatorSettings
from .status import JobFacts, facts_of, facts_of_error
from .status.diagnosis import clip
from .status_writer import Key, StatusWriter
from .trainer_contract import utc_now
from .watch_cache import WatchCache
from .workqueue import WorkQueue

log = logging.getLogger("axolotl_operator")

RETRY_DELAY = 3  # seconds before a reconcile that had to wait runs again (e.g. for garbage collection)
CONFLICT_RECHECK_SECONDS = 30  # a child name taken by a foreign object: look again (the user may remove it)
STATUS_WORKERS = 8
RECONCILE_WORKERS = 16  # creates are I/O-bound: 4 starved them, 32 bought nothing (bench/README.md)
RESYNC_SECONDS = 300.0
FACTS_CACHE_MAX = 4096


class Stopped(Exception):
    """The reconcile cannot go on with this spec; it is not retried until the spec changes (the status
    says why)."""


class Waits(Exception):
    """The reconcile must wait (for garbage collection, for a conflicting object to go): it runs again
    after `delay` seconds."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay


class Operator:
    """Settings, the API client, the watch cache, the status queue and writer, and parsed specs."""

    def __init__(
        self,
        settings: OperatorSettings,
        kube: KubeApi,
        *,
        workers: int = STATUS_WORKERS,
        reconcile_workers: int = RECONCILE_WORKERS,
        resync_seconds: float = RESYNC_SECONDS,
        namespaces: tuple[str, ...] = (),
        retry_base_delay: float = 0.5,
        retry_max_delay: float = 60.0,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.resync_seconds = resync_seconds
        self.namespaces = namespaces  # watched namespaces; empty: the whole cluster
        self.kueue_hold = KueueHold(kube)
        self.cache = WatchCache(kube)
        self.writer = StatusWriter(
            kube,
            self.facts,
            self.blocker,
            self._gone,
            NotebookKeeper(kube).sync,
            self.kueue_hold.sync,
            cache=self.cache,
        )
        self.queue = WorkQueue(
            self.writer.sync,  # type: ignore[arg-type]
            workers=workers,
            base_delay=retry_base_delay,
            max_delay=retry_max_delay,
            on_error=self._status_failed,
            name="status",
        )
        self.reconciles = WorkQueue(
            self._reconcile_key,  # type: ignore[arg-type]
            workers=reconcile_workers,
            base_delay=retry_base_delay,
            max_delay=retry_max_delay,
            on_error=self._reconcile_failed,
            name="reconcile",
        )
        self._reconciled: dict[Key, tuple[str, int]] = {}  # (uid, generation) last reconciled in full
        self._facts: dict[tuple[str, int], JobFacts] = {}
        self._phases: dict[Key, str | None] = {}  # every AxolotlJob seen -> its last seen phase
        self._uids: dict[Key, str] = {}  # the uid of the AxolotlJob last seen under each name
        self._blockers: dict[Key, tuple[str, Reason, str]] = {}  # (uid, why reconcile stopped), in status
        self._claims: dict[str, str] = {}  # AxolotlJob uid -> uid of the claim the operator created for it
        self._guard = threading.Lock()

    def start(self) -> Operator:
        self.queue.start()
        self.reconciles.start()
        if self.resync_seconds > 0:
            self.queue.every(self.resync_seconds, self._resync)
        return self

    def stop(self) -> None:
        self.reconciles.stop()
        self.queue.stop()

    # ---------------------------------------------------------------- triggers

    def enqueue(self, namespace: str, name: str) -> None:
        self.queue.add((namespace, name))

    def changed(self, namespace: str, name: str, uid: str, generation: int) -> None:
        """An AxolotlJob as the watch delivered it: reconcile it unless this generation already was."""
        key = (namespace, name)
        with self._guard:
            done = self._reconciled.get(key) == (uid, generation)
        if not done:
            self.reconciles.add(key)

    def seen(self, namespace: str, name: str, phase: str | None, uid: str | None = None) -> None:
        """An AxolotlJob as the watch delivered it: remembered for the resync."""
        with self._guard:
            self._phases[(namespace, name)] = phase
            if uid:
                self._uids[(namespace, name)] = uid

    def forget(self, namespace: str, name: str, uid: str | None = None) -> None:
        """Drop what is kept about the AxolotlJob `uid` (any, when None). A job re-created under the same
        name keeps its own: queued runs stay (a run for a gone job is a cheap no-op), and blockers and
        progress reports carry their uid."""
        key = (namespace, name)
        with self._guard:
            if uid is not None and self._uids.get(key, uid) != uid:
                return  # a newer AxolotlJob of that name is known: not ours to forget
            self._phases.pop(key, None)
            self._uids.pop(key, None)
            self._reconciled.pop(key, None)
            self._claims.pop(uid or "", None)
            blocked = self._blockers.get(key)
            if blocked and (uid is None or blocked[0] == uid):
                self._blockers.pop(key, None)
        self.writer.forget(key)

    def accept_progress(self, report: Report) -> None:
        """A progress report the endpoint authorized: written by the job's next status sync."""
        self.queue.add(self.writer.offer(report))

    def _resync(self) -> Iterator[Key]:
        """The safety net, from one LIST: forget jobs that are gone (a relisted watch brings no DELETED
        event), pick up jobs never seen, and revisit every job not known to be finished (a finished job
        changes only through its Job or pods, whose events still enqueue it)."""
        try:
            listed = self._list_keys()
        except Exception as exc:  # the API server is away: revisit what is known, list next time
            log.warning("resync: cannot list AxolotlJobs: %s", exc)
            listed = None
        with self._guard:
            known = dict(self._phases)
        if listed is not None:
            self.cache.prune_pods()
            for key in known.keys() - listed:
                self._gone(key)
            for key in listed - known.keys():
                self.seen(*key, None)
                yield key
        yield from (key for key, phase in known.items() if phase not in TERMINAL_PHASES)

    def _list_keys(self) -> set[Key]:
        """Every AxolotlJob the operator watches: per namespace, or cluster-wide when a namespace is a
        glob (Kopf allows them) or none is given."""
        if not self.namespaces or any(set(ns) & set("*?[") for ns in self.namespaces):
            keys = set(self.kube.list_axolotljob_keys(None))
            if not self.namespaces:
                return keys
            return {key for key in keys if any(fnmatch.fnmatchcase(key[0], ns) for ns in self.namespaces)}
        return {key for ns in self.namespaces for key in self.kube.list_axolotljob_keys(ns)}

    def _gone(self, key: Key) -> None:
        """The AxolotlJob no longer exists: drop what the operator keeps about it, metrics included."""
        metrics.forget_job(*key)
        self.cache.forget_axolotljob(key)
        self.forget(*key)

    def _reconcile_failed(self, key: Any, error: BaseException, failures: int, delay: float) -> None:
        _retrying("reconcile", "reconcile failed", key, error, failures, delay)

    def _status_failed(self, key: Any, error: BaseException, failures: int, delay: float) -> None:
        _retrying("status", "status not written", key, error, failures, delay)

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
        except Exception as error:  # never retried forever: the status says the spec is unreadable
            facts = JobFacts(spec_errors=(f"the operator could not read the spec: {_short(error)}",))
        with self._guard:
            if len(self._facts) >= FACTS_CACHE_MAX:
                self._facts.clear()
            self._facts[key] = facts
        return facts

    # ---------------------------------------------------------------- children

    def _reconcile_key(self, key: Key) -> float | None:
        """The reconcile queue's process: the AxolotlJob as last delivered, unless this generation was
        done; seconds until it runs again when it must wait."""
        namespace, name = key
        axj = self.cache.get_axolotljob(namespace, name)
        if axj is None or axj["metadata"].get("deletionTimestamp"):
            return None  # gone or going: its children go with it
        meta = axj["metadata"]
        version = (str(meta["uid"]), int(meta.get("generation") or 0))
        with self._guard:
            if self._reconciled.get(key) == version:
                return None
        try:
            self.reconcile(axj, namespace, name)
        except Stopped as stop:
            metrics.reconcile_error("reconcile")
            log.warning("%s/%s: not reconciled (until the spec changes): %s", namespace, name, stop)
        except Waits as wait:
            metrics.reconcile_error("reconcile")
            log.info("%s/%s: reconcile waits %.0fs: %s", namespace, name, wait.delay, wait)
            return wait.delay
        except ApiError as exc:
            if not (exc.status == 403 and "being terminated" in str(exc)):
                raise  # retried with backoff (`_reconcile_failed`)
            log.info("%s/%s: the namespace is being deleted; nothing to reconcile", namespace, name)
        with self._guard:
            self._reconciled[key] = version
        return None

    def reconcile(self, body: Mapping[str, Any], namespace: str, name: str) -> None:
        """Make the children exist as rendered; idempotent, so create, update and resume share it."""
        manifest = dict(body)  # a plain dict of its own (the cache's object is shared)
        key = (namespace, name)
        try:
            parsed = parse_job(manifest)
        except SpecError as error:
            self.enqueue(namespace, name)
            raise Stopped(f"invalid spec, nothing created: {error}") from None
        except Exception as error:  # a spec that breaks the parser is reported, never retried forever
            why = f"the operator could not read the spec: {_short(error)}"
            self._block(key, manifest["metadata"].get("uid", ""), Reason.INVALID_SPEC, why)
            raise Stopped(f"unreadable spec: {_short(error)}") from None
        phase = (manifest.get("status") or {}).get("phase")
        if phase in TERMINAL_PHASES and self.kube.get_job(namespace, name) is None:
            # Finished and its Job removed by ttlSecondsAfterFinished: never train again on resume.
            log.info("%s/%s: reconciled: %s and its Job is gone; nothing to create", namespace, name, phase)
            self.enqueue(namespace, name)
            return
        self._unblock(key)  # this attempt finds out again what (if anything) stops it
        children = render(parsed, self.settings, namespace, owner=manifest)
        job: dict[str, Any] | None = None
        for child in children.manifests():
            obj = self._ensure(key, child, manifest)
            if child is children.job:
                job = obj
        assert job is not None
        self.cache.put_job(job)  # the status sync reads it before the watch may have delivered it
        self._persist_claim(manifest)
        spec = parsed.job.spec
        self.kueue_hold.sync(job, spec.queue_name, spec.suspend)  # before the Job: Kueue would undo it
        updates = job_updates(job, children.job, queue_name=spec.queue_name, suspend=spec.suspend)
        if updates:
            log.info("%s/%s: updating Job spec %s", namespace, name, updates)
            self.kube.merge_patch("batch/v1", "Job", namespace, name, {"spec": updates})
        self.enqueue(namespace, name)
        log.info("%s/%s: reconciled", namespace, name)

    def _ensure(self, key: Key, child: Mapping[str, Any], axj: Mapping[str, Any]) -> Mapping[str, Any]:
        """Create the child, or accept the existing one only if it is provably this job's."""
        namespace, name = key
        uid = axj["metadata"]["uid"]
        kind, child_name = child["kind"], child["metadata"]["name"]
        if kind == "PersistentVolumeClaim":
            self._intend_claim(axj)
        try:
            obj, created = self.kube.create(child)
        except ApiError as exc:
            if exc.status in REJECTED_STATUSES:  # the API server refuses what the spec asks for
                message = f"the API server refused {kind} {child_name}: {_short(exc)}. Fix the field it names"
                self._block(key, uid, Reason.CREATE_REJECTED, message)
                raise Stopped(message) from None
            raise
        if created:
            log.info("%s/%s: created %s %s", namespace, name, kind, child_name)
            if kind == "PersistentVolumeClaim":
                self._record_claim(axj, obj, persist=False)  # written once the Job exists: one step less
            return obj
        found = ownership(obj, name, uid)
        if found is Ownership.OURS or (kind == "PersistentVolumeClaim" and self._our_claim(axj, obj)):
            return obj
        if found is Ownership.NAMESAKE:
            self.enqueue(namespace, name)  # the status says WaitingForCleanup once the Job is read
            raise Waits(
                f"{describe(obj)} belongs to a deleted AxolotlJob of the same name "
                f"(uid {controller_of(obj).get('uid')}); waiting for it to be garbage-collected",  # type: ignore[union-attr]
                delay=RETRY_DELAY,
            )
        fix = (
            f"set spec.storage.existingClaim: {child_name} to train on that claim's data, or delete it"
            if kind == "PersistentVolumeClaim"
            else "delete or rename it, or give the AxolotlJob another name"
        )
        message = f"{describe(obj)} already exists where this job needs its {kind}; left untouched: {fix}"
        self._block(key, uid, Reason.CHILD_NAME_CONFLICT, message)
        raise Waits(message, delay=CONFLICT_RECHECK_SECONDS)

    # ---------------------------------------------------------------- the claim (it outlives the job)

    def _record_claim(self, axj: Mapping[str, Any], claim: Mapping[str, Any], persist: bool = True) -> None:
        """Remember which claim the operator created for this AxolotlJob: in memory at once, and as an
        annotation on the AxolotlJob (it has no owner reference to prove it later). Until the annotation
        is written, the intent recorded before the create proves the claim after a restart."""
        meta, claim_uid = axj["metadata"], str(claim["metadata"]["uid"])
        with self._guard:
            self._claims[meta["uid"]] = claim_uid
        if persist:
            self._annotate_claim(meta, claim_uid)

    def _persist_claim(self, axj: Mapping[str, Any]) -> None:
        """Write the uid of the claim created for this AxolotlJob, if only memory knows it yet."""
        meta = axj["metadata"]
        with self._guard:
            claim_uid = self._claims.get(meta["uid"])
        written = (meta.get("annotations") or {}).get(CLAIM_UID_ANNOTATION)
        if claim_uid and not claim_uid.startswith(CLAIM_PENDING) and written != claim_uid:
            self._annotate_claim(meta, claim_uid)

    def _annotate_claim(self, meta: Mapping[str, Any], value: str) -> None:
        patch = {"metadata": {"annotations": {CLAIM_UID_ANNOTATION: value}}}
        self.kube.merge_patch(API_VERSION, KIND, meta["namespace"], meta["name"], patch)

    def _intend_claim(self, axj: Mapping[str, Any]) -> None:
        """Before the first create of the claim, record when it is about to be made: an operator killed
        between creating the claim and recording its uid then knows, on restart, that a claim made for
        this job since that moment is its own (`_our_claim`)."""
        meta = axj["metadata"]
        with self._guard:
            known = meta["uid"] in self._claims
        if known or (meta.get("annotations") or {}).get(CLAIM_UID_ANNOTATION):
            return
        intent = CLAIM_PENDING + utc_now()
        self._annotate_claim(meta, intent)
        with self._guard:
            self._claims.setdefault(meta["uid"], intent)

    def _our_claim(self, axj: Mapping[str, Any], claim: Mapping[str, Any]) -> bool:
        """The claim the operator created for this AxolotlJob (its uid is recorded, or it was made for
        this job after the operator recorded it was about to make it). One created before uids were
        recorded counts only if this AxolotlJob's own Job already exists (and mounts it)."""
        meta, claim_uid = axj["metadata"], str(claim["metadata"].get("uid"))
        with self._guard:
            recorded = self._claims.get(meta["uid"])
        recorded = recorded or (meta.get("annotations") or {}).get(CLAIM_UID_ANNOTATION)
        since = recorded[len(CLAIM_PENDING) :] if recorded and recorded.startswith(CLAIM_PENDING) else None
        if since is not None and made_for(claim, meta["name"], meta["uid"]) and made_since(claim, since):
            self._record_claim(axj, claim)
            return True
        pending = since is not None
        if recorded is not None and not pending:
            return recorded == claim_uid
        job = self.kube.get_job(meta["namespace"], meta["name"])
        ours = job is not None and controlled_by(job, meta["uid"])
        if not ours or not made_for(claim, meta["name"], meta["uid"]):
            return False
        self._record_claim(axj, claim)
        return True

    # ---------------------------------------------------------------- blockers (shown in the status)

    def _block(self, key: Key, uid: str, reason: Reason, message: str) -> None:
        with self._guard:
            self._blockers[key] = (uid, reason, message)
        self.queue.add(key)

    def _unblock(self, key: Key) -> None:
        with self._guard:
            self._blockers.pop(key, None)

    def blocker(self, key: Key) -> tuple[str, Reason, str] | None:
        with self._guard:
            return self._blockers.get(key)


def _retrying(step: str, what: str, key: Key, error: BaseException, failures: int, delay: float) -> None:
    """A queue's failed run, counted and logged; the queue retries it after `delay`."""
    metrics.reconcile_error(step)
    log.warning(
        "%s/%s: %s (%d failure(s) in a row), retrying in %.1fs: %s", *key, what, failures, delay, error
    )


def _short(error: BaseException) -> str:
    """An error for the status: one line, token-looking text masked, bounded; its type if it says nothing."""
    return clip(str(error) or type(error).__name__, 500)
