"""Keeps an AxolotlJob's notebook (spec.notebook) as the spec and the training's state want it.

Called by the status writer on every sync of the job (so it is retried with the status, never lost):
the notebook's place depends on whether training runs now, which only the sync knows. It creates the
Deployment and Service when missing, replaces the Deployment when its spec changed (a new placement,
image or resources), deletes both when the notebook is turned off, and never touches an object it did
not make (a name conflict is shown in the status, like the training children's).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .api.status import TERMINAL_PHASES, NotebookPlacement, Reason
from .constants import JOB_LABEL, Names
from .kube import REJECTED_STATUSES, ApiError, KubeApi, Obj
from .notebook import (
    COMPONENT,
    SHARED_MODES,
    UNKNOWN_MODES,
    NotebookPlan,
    NotebookView,
    desired,
    placement_for,
    spec_hash,
    training_active,
)
from .ownership import Ownership, describe, ownership
from .status.children import get
from .status.diagnosis import clip
from .status.model import JobFacts

log = logging.getLogger("axolotl_operator")



class NotebookKeeper:
    def __init__(self, kube: KubeApi) -> None:
        self.kube = kube

    def sync(self, axj: Obj, facts: JobFacts, job: Obj | None) -> NotebookView | None:
        """Make the notebook match the spec; what the status should show about it (None: no notebook)."""
        if facts.spec_errors:
            return None  # an invalid edit changes nothing, the notebook included
        plan = facts.notebook
        if plan is None:
            if (axj.get("status") or {}).get("notebook"):
                self._remove(axj)
            return None
        try:
            return self._keep(axj, plan, job)
        except ApiError as exc:
            if exc.status != 403:
                raise  # transient (409, 429, 5xx): retried with the status, with backoff
            # Forbidden (RBAC not upgraded, an admission policy, a quota): shown, not retried in a loop.
            why = f"the API server forbids the notebook's objects: {clip(str(exc), 500)}"
            log.warning("%s/%s: %s", axj["metadata"]["namespace"], axj["metadata"]["name"], why)
            problem = (Reason.CREATE_REJECTED, f"{why}. Check the operator's RBAC and admission policies")
            return NotebookView(NotebookPlacement.ANYWHERE, problem=problem, gpus=plan.gpus)

    def _keep(self, axj: Obj, plan: NotebookPlan, job: Obj | None) -> NotebookView:
        status = axj.get("status") or {}
        finished = status.get("phase") in TERMINAL_PHASES
        started = bool(finished or status.get("startTime") or get(job, "status", "startTime"))
        if job is None and not started:
            # Not before the training Job: a notebook first on a ReadWriteOnce claim could bind it to a
            # node the training pod cannot use.
            waiting = (Reason.NOTEBOOK_STARTING, "the notebook is created once the training Job exists")
            return NotebookView(NotebookPlacement.ANYWHERE, problem=waiting, gpus=plan.gpus)
        modes = self._claim_modes(axj, plan)
        if not started and not SHARED_MODES & set(modes):
            # A queued or suspended job that never ran: the same, until its training pod has used the claim.
            waiting = (
                Reason.WAITING_FOR_TRAINING_POD,
                "the claim is ReadWriteOnce: the notebook starts once training has started (the training "
                "pod binds the claim first, so it lands where the GPUs are)",
            )
            return NotebookView(NotebookPlacement.WITH_TRAINING_POD, problem=waiting, gpus=plan.gpus)
        placement = placement_for(modes, training_active(job))
        deployment, service = desired(plan, placement, axj["metadata"]["namespace"], axj)
        problem = self._ensure(service, axj) or self._ensure(deployment, axj)
        pods: list[Obj] = []
        if problem is None:
            meta = axj["metadata"]
            selector = f"{JOB_LABEL}={meta['name']},app.kubernetes.io/component={COMPONENT}"
            pods = self.kube.list_pods(meta["namespace"], selector)
        return NotebookView(placement, tuple(pods), problem, plan.gpus)

    def _claim_modes(self, axj: Obj, plan: NotebookPlan) -> tuple[str, ...]:
        if plan.claim_modes is not None:
            return plan.claim_modes
        claim = self.kube.get("v1", "PersistentVolumeClaim", axj["metadata"]["namespace"], plan.claim_name)
        modes = ((claim or {}).get("spec") or {}).get("accessModes")
        return tuple(modes) if modes else UNKNOWN_MODES

    def _ensure(self, manifest: Mapping[str, Any], axj: Obj) -> tuple[Reason, str] | None:
        """Create or update one object; why it cannot be had, or None."""
        meta = axj["metadata"]
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        existing = self.kube.get(manifest["apiVersion"], kind, meta["namespace"], name)
        try:
            if existing is None:
                existing, created = self.kube.create(manifest)
                if created:
                    log.info("%s/%s: created notebook %s %s", meta["namespace"], meta["name"], kind, name)
                    return None
            found = ownership(existing, meta["name"], meta["uid"])
            if found is Ownership.OURS:
                if kind == "Deployment" and spec_hash(existing) != spec_hash(manifest):
                    version = {"resourceVersion": _version(existing)}
                    self.kube.replace({**manifest, "metadata": {**manifest["metadata"], **version}})
                    log.info("%s/%s: updated notebook Deployment %s", meta["namespace"], meta["name"], name)
                return None
        except ApiError as exc:
            if exc.status in REJECTED_STATUSES:
                why = f"the API server refused the notebook's {kind} {name}: {clip(str(exc), 500)}"
                return Reason.CREATE_REJECTED, f"{why}. Fix spec.notebook"
            raise
        if found is Ownership.NAMESAKE:
            why = f"{describe(existing)} belongs to a deleted AxolotlJob of this name; waiting for the GC"
            return Reason.WAITING_FOR_CLEANUP, why
        return Reason.CHILD_NAME_CONFLICT, (
            f"{describe(existing)} already exists where this job's notebook needs its {kind}; left "
            "untouched: delete or rename it, or give the AxolotlJob another name"
        )

    def _remove(self, axj: Obj) -> None:
        """The notebook was turned off: delete its Deployment and Service (only if this job made them)."""
        meta = axj["metadata"]
        name = Names.of(meta["name"]).notebook
        for api_version, kind in (("apps/v1", "Deployment"), ("v1", "Service")):
            existing = self.kube.get(api_version, kind, meta["namespace"], name)
            if existing is not None and ownership(existing, meta["name"], meta["uid"]) is Ownership.OURS:
                uid = existing["metadata"].get("uid")
                try:
                    self.kube.delete(api_version, kind, meta["namespace"], name, uid=uid)
                except ApiError as exc:
                    if exc.status != 409:  # 409: replaced since it was read; the new one is not ours
                        raise
                    continue
                log.info("%s/%s: deleted notebook %s %s", meta["namespace"], meta["name"], kind, name)


def _version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")
