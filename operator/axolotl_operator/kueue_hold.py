"""The user's `spec.suspend` wins over a Kueue admission.

Kueue unsuspends any Job whose Workload it has admitted, so suspending the Job of a queued AxolotlJob
is not enough: Kueue would start it again. Kueue's own way to stop a workload is `spec.active: false`
on its Workload (it then evicts it, suspends the Job and gives the quota back), so while the user keeps
the job suspended the operator deactivates the Workload Kueue made for the job's Job, and reactivates it
(only if the operator was the one to deactivate it) when the user resumes. Called from the reconcile
(the spec changed) and from every status sync (Kueue may create or admit the Workload later).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .constants import GROUP
from .kube import ApiError, KubeApi, Obj

log = logging.getLogger("axolotl_operator")

WORKLOAD_API = "kueue.x-k8s.io/v1beta2"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # Kueue's label on the Workload of a Job
HELD_ANNOTATION = f"{GROUP}/held-by-spec-suspend"  # on a Workload the operator deactivated


@dataclass(frozen=True)
class WorkloadPatch:
    name: str
    patch: dict[str, Any]


def _finished(job: Mapping[str, Any]) -> bool:
    conditions = (job.get("status") or {}).get("conditions") or []
    return any(c.get("type") in {"Complete", "Failed"} and c.get("status") == "True" for c in conditions)


def _controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    owners = obj.get("metadata", {}).get("ownerReferences") or []
    return any(o.get("controller") and o.get("uid") == uid for o in owners)


def needs_look(job: Mapping[str, Any] | None, queue_name: str | None, suspend: bool) -> bool:
    """Whether a Workload may need a change: a queued, unfinished Job that the user suspended, or that
    is suspended now (waiting for admission, or held by us until the user resumes)."""
    if job is None or not queue_name or _finished(job):
        return False
    return suspend or bool((job.get("spec") or {}).get("suspend"))


def workload_patches(workloads: list[Mapping[str, Any]], job_uid: str, suspend: bool) -> list[WorkloadPatch]:
    """The Workload changes that make Kueue follow `spec.suspend` (pure); only the Job's own Workloads."""
    patches = []
    for workload in workloads:
        meta = workload.get("metadata") or {}
        if not _controlled_by(workload, job_uid):
            continue
        active = (workload.get("spec") or {}).get("active", True) is not False
        held = (meta.get("annotations") or {}).get(HELD_ANNOTATION) == "true"
        if suspend and active:
            patch = {"metadata": {"annotations": {HELD_ANNOTATION: "true"}}, "spec": {"active": False}}
            patches.append(WorkloadPatch(meta["name"], patch))
        elif not suspend and not active and held:
            patch = {"metadata": {"annotations": {HELD_ANNOTATION: None}}, "spec": {"active": True}}
            patches.append(WorkloadPatch(meta["name"], patch))
    return patches


class KueueHold:
    """Applies `workload_patches` through the API; silent where Kueue is not installed."""

    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube
        self._warned = False

    def sync(self, job: Obj | None, queue_name: str | None, suspend: bool) -> None:
        if job is None or not needs_look(job, queue_name, suspend):
            return
        meta = job["metadata"]
        namespace, uid = meta["namespace"], meta["uid"]
        try:
            workloads = self.kube.list(WORKLOAD_API, "Workload", namespace, f"{JOB_UID_LABEL}={uid}")
            for change in workload_patches(workloads, uid, suspend):
                log.info("%s/%s: Workload %s: %s", namespace, meta["name"], change.name, change.patch["spec"])
                self.kube.merge_patch(WORKLOAD_API, "Workload", namespace, change.name, change.patch)
        except ApiError as exc:
            if exc.status == 404:  # no Kueue here (or the Workload just went): nothing to hold
                return
            # Never in the way of the job's status: the next sync (a Job event, e.g. Kueue starting the
            # Job again, or the resync) tries again.
            if exc.status == 403 and self._warned:
                return
            self._warned = self._warned or exc.status == 403
            hint = "; grant workloads.kueue.x-k8s.io list and patch (the chart does)"
            hint = hint if exc.status == 403 else ""
            log.warning(
                "%s/%s: cannot read or patch Kueue Workloads (%s): a suspended queued job may be restarted "
                "by Kueue until this works%s",
                namespace,
                meta["name"],
                exc,
                hint,
            )
