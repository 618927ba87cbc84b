"""The Kopf handlers: thin. Apply rendered children idempotently, refresh status when children change.

- create, resume and update share `reconcile`: parse -> render -> create each child (409 = it exists:
  adopt or keep, never duplicate) -> sync the Job's mutable fields -> refresh the status.
- Child Jobs and pods are watched with `on.event` (filtered by the `axolotl.ai/job` label); each event
  refreshes the owning AxolotlJob's status from fresh reads. No timers, daemons or deletion handlers, so
  Kopf puts no finalizer on AxolotlJobs and deletion never waits for the operator.
- Handlers return None: Kopf writes nothing into .status (whose schema is ours); the status is patched
  through the status subresource with a resourceVersion precondition, and one Event is recorded per
  transition by whichever refresh wins that write.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import metrics
from .api import SpecError, parse_job
from .api.job import GROUP, PLURAL, VERSION
from .kube import ApiError, Kube, now
from .render import JOB_LABEL, controlled_by, job_updates, render
from .settings import OperatorSettings
from .status import TERMINAL, JobFacts, compute_status, facts_of, facts_of_error

log = logging.getLogger("axolotl_operator")

CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"
RETRY_DELAY = 3  # seconds before Kopf retries a reconcile that had to wait (e.g. for garbage collection)
CONFLICT_RETRIES = 8


@dataclass
class _Slot:
    """Per-AxolotlJob coalescing of status refreshes: one runs at a time, requests meanwhile set `dirty`."""

    mutex: threading.Lock = field(default_factory=threading.Lock)
    running: bool = False
    dirty: bool = False


class Operator:
    """The shell's state: settings, the API client, the refresh slots and a cache of parsed specs."""

    def __init__(self, settings: OperatorSettings, kube: Kube) -> None:
        self.settings = settings
        self.kube = kube
        self._slots: dict[tuple[str, str], _Slot] = {}
        self._facts: dict[tuple[str, int], JobFacts] = {}
        self._guard = threading.Lock()

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
            if len(self._facts) > 4096:
                self._facts.clear()
            self._facts[key] = facts
        return facts

    # ---------------------------------------------------------------- status

    def refresh(self, namespace: str, name: str) -> None:
        """Recompute and write the status. Never blocks on another refresh of the same job: if one is
        running, it is told to read again when done (so a burst of pod events costs one or two reads
        and no handler thread waits)."""
        with self._guard:
            slot = self._slots.setdefault((namespace, name), _Slot())
        with slot.mutex:
            slot.dirty = True
            if slot.running:
                return
            slot.running = True
        try:
            while True:
                with slot.mutex:
                    if not slot.dirty:
                        slot.running = False
                        return
                    slot.dirty = False
                self._refresh_now(namespace, name)
        except Exception:
            with slot.mutex:
                slot.running = False
            metrics.reconcile_error("status")
            raise

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._slots.pop((namespace, name), None)

    def _refresh_now(self, namespace: str, name: str) -> None:
        for _ in range(CONFLICT_RETRIES):
            axj = self.kube.get_axolotljob(namespace, name)
            if axj is None or axj["metadata"].get("deletionTimestamp"):
                return
            facts = self.facts(axj)
            job, pods, foreign = None, [], None
            if not facts.spec_errors:
                job = self.kube.get_job(namespace, name)
                if job is not None and not controlled_by(job, axj["metadata"]["uid"]):
                    job, foreign = None, job  # a previous AxolotlJob's Job, about to be garbage-collected
                if job is not None:
                    pods = self.kube.list_pods(namespace, f"{CONTROLLER_UID_LABEL}={job['metadata']['uid']}")
            result = compute_status(axj, job, pods, facts, now(), foreign_job=foreign)
            if not result.changed(axj.get("status")):
                return
            try:
                self.kube.patch_status(namespace, name, axj["metadata"]["resourceVersion"], result.patch())
            except ApiError as exc:
                if exc.status == 409:
                    continue  # changed meanwhile: read again
                if exc.status == 404:
                    return
                raise
            for transition in result.transitions:
                if transition.reason != "SpecWarning":
                    metrics.transition(result.status["phase"], transition.reason)
                log.info("%s/%s: %s: %s", namespace, name, transition.reason, transition.message)
                try:
                    self.kube.event(axj, transition.type, transition.reason, transition.message)
                except ApiError as exc:
                    # A namespace being deleted refuses new Events: expected, not worth a warning.
                    terminating = exc.status == 403 and "being terminated" in str(exc)
                    log.log(
                        logging.DEBUG if terminating else logging.WARNING,
                        "%s/%s: could not record event %s: %s",
                        namespace,
                        name,
                        transition.reason,
                        exc,
                    )
            return
        raise kopf.TemporaryError(f"status of {namespace}/{name} kept changing; retrying", delay=1)

    # ---------------------------------------------------------------- children

    def reconcile(self, body: Mapping[str, Any], namespace: str, name: str) -> None:
        """Make the children exist as rendered; idempotent, so create and resume share it."""
        manifest = _plain(body)
        try:
            parsed = parse_job(manifest)
        except SpecError as error:
            self.refresh(namespace, name)
            raise kopf.PermanentError(f"invalid spec, nothing created: {error}") from None
        phase = (manifest.get("status") or {}).get("phase")
        existing_job = self.kube.get_job(namespace, name)
        if existing_job is None and phase in TERMINAL:
            # Finished and its Job removed by ttlSecondsAfterFinished: never train again on resume.
            log.info("%s/%s: reconciled: %s and its Job is gone; nothing to create", namespace, name, phase)
            self.refresh(namespace, name)
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
        self.refresh(namespace, name)
        log.info("%s/%s: reconciled", namespace, name)

    def _adopt(self, existing: Mapping[str, Any], desired: Mapping[str, Any], uid: str) -> None:
        """An existing child is kept; one without a controller is adopted; another owner's is waited out."""
        meta = existing.get("metadata") or {}
        refs = list(meta.get("ownerReferences") or [])
        controller = next((ref for ref in refs if ref.get("controller")), None)
        wanted = desired["metadata"].get("ownerReferences")
        kind, child = desired["kind"], desired["metadata"]["name"]
        if controller is None:
            if wanted:
                log.info("%s/%s: adopting %s %s", desired["metadata"]["namespace"], child, kind, child)
                self.kube.merge_patch(
                    desired["apiVersion"],
                    kind,
                    desired["metadata"]["namespace"],
                    child,
                    {"metadata": {"ownerReferences": refs + list(wanted)}},
                )
            return
        if controller.get("uid") != uid:
            namespace = desired["metadata"]["namespace"]
            self.refresh(namespace, (desired["metadata"].get("labels") or {}).get(JOB_LABEL, child))
            raise kopf.TemporaryError(
                f"{kind} {child} belongs to {controller.get('kind')} {controller.get('name')} "
                f"(uid {controller.get('uid')}), e.g. a deleted AxolotlJob of the same name; "
                "waiting for it to be garbage-collected",
                delay=RETRY_DELAY,
            )


def _plain(body: Mapping[str, Any]) -> dict[str, Any]:
    """Kopf's Body as a plain dict (render and parse only read it)."""
    return {key: body[key] for key in body}


# ---------------------------------------------------------------- Kopf registration

_operator: Operator | None = None


def install(operator: Operator) -> None:
    """Bind the handlers below to an Operator (called once by the manager before Kopf starts)."""
    global _operator
    _operator = operator


def _op() -> Operator:
    if _operator is None:
        raise kopf.PermanentError("the operator is not configured (handlers.install was not called)")
    return _operator


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_DELAY)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_DELAY)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=RETRY_DELAY)
def reconcile(body: kopf.Body, namespace: str, name: str, **_: Any) -> None:
    try:
        _op().reconcile(body, namespace, name)
    except (kopf.PermanentError, kopf.TemporaryError):
        metrics.reconcile_error("reconcile")
        raise
    except ApiError as exc:
        if exc.status == 403 and "being terminated" in str(exc):
            log.info("%s/%s: the namespace is being deleted; nothing to reconcile", namespace, name)
            return None
        metrics.reconcile_error("reconcile")
        raise kopf.TemporaryError(f"API error while reconciling: {exc}", delay=RETRY_DELAY) from None
    return None


@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
def job_changed(namespace: str, labels: Mapping[str, str], **_: Any) -> None:
    _op().refresh(namespace, labels[JOB_LABEL])


@kopf.on.event("v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def pod_changed(namespace: str, labels: Mapping[str, str], **_: Any) -> None:
    _op().refresh(namespace, labels[JOB_LABEL])


@kopf.on.event(GROUP, VERSION, PLURAL)
def axolotljob_seen(event: Mapping[str, Any], namespace: str, name: str, **_: Any) -> None:
    if event.get("type") == "DELETED":
        metrics.forget_job(namespace, name)
        _op().forget(namespace, name)
    else:
        metrics.observe_job(namespace, name, (event.get("object") or {}).get("status"))
