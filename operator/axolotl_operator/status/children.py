"""Reading what the children show: the Job's conditions, the trainer container's state, the summary.

Why a module of its own: the Job and pod objects are Kubernetes' shapes, not ours; every path into
them is written once here, tolerant of missing fields, so the rules and messages read like prose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ..constants import COMPLETION_INDEX_ANNOTATION, CONTAINER_NAME
from ..trainer_contract import EXIT_PREEMPTED, OUTCOME_PREEMPTED, parse_summary

Obj = Mapping[str, Any]
EVICTION_REASONS = frozenset({"Evicted", "Preempting"})


# The Job conditions that end a run, as the Job controller sets them: the target first, then the final one.
SUCCESS_CONDITIONS = ("Complete", "SuccessCriteriaMet")
FAILURE_CONDITIONS = ("Failed", "FailureTarget")


def get(obj: Obj | None, *path: str, default: Any = None) -> Any:
    """obj[path[0]][path[1]]..., or `default` where a step is missing or not a mapping."""
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return default
        cur = cur.get(key)
    return default if cur is None else cur


def true_condition(obj: Obj | None, type_: str) -> Obj | None:
    """The condition of this type if its status is True."""
    for cond in get(obj, "status", "conditions", default=[]):
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def run_ended(job: Obj | None) -> bool:
    """The Job says its run has ended (or is about to): the final status is computed from now on."""
    return any(true_condition(job, t) for t in (*SUCCESS_CONDITIONS, *FAILURE_CONDITIONS))


def name_of(obj: Obj | None) -> str:
    return str(get(obj, "metadata", "name", default="?"))


def phase_of(pod: Obj) -> str:
    return str(get(pod, "status", "phase", default="Pending"))


def container_status(pod: Obj) -> Obj | None:
    """The trainer container's status (or the first container's)."""
    statuses = get(pod, "status", "containerStatuses", default=[])
    return next((s for s in statuses if s.get("name") == CONTAINER_NAME), statuses[0] if statuses else None)


def terminated(pod: Obj) -> Obj | None:
    status = container_status(pod)
    return get(status, "state", "terminated") or get(status, "lastState", "terminated")


def summary_of(pod: Obj | None) -> dict[str, Any] | None:
    """The runner's termination summary, if the pod's trainer wrote one."""
    return parse_summary(get(terminated(pod), "message")) if pod is not None else None


def completion_index(pod: Obj) -> str | None:
    return get(pod, "metadata", "annotations", default={}).get(COMPLETION_INDEX_ANNOTATION)


def finished_at(pod: Obj) -> str:
    """Sort key: when the trainer finished, else when the pod was created."""
    term = terminated(pod) or {}
    return str(term.get("finishedAt") or get(pod, "metadata", "creationTimestamp", default=""))


def evicted(pod: Obj) -> bool:
    """Evicted or preempted: not the training's fault (the Job's podFailurePolicy ignores it)."""
    return (
        get(pod, "status", "reason") in EVICTION_REASONS
        or true_condition(pod, "DisruptionTarget") is not None
    )


def saved_on_sigterm(pod: Obj) -> int | None:
    """The step a pod stopped by SIGTERM saved its checkpoint at (the runner's `preempted` outcome)."""
    term = terminated(pod) or {}
    summary = summary_of(pod) or {}
    if summary.get("outcome") != OUTCOME_PREEMPTED and term.get("exitCode") != EXIT_PREEMPTED:
        return None
    step = summary.get("steps")
    return step if isinstance(step, int) else -1


def memory_limit(pod: Obj) -> str | None:
    for container in get(pod, "spec", "containers", default=[]):
        if container.get("name") == CONTAINER_NAME:
            return get(container, "resources", "limits", "memory")
    return None


@dataclass(frozen=True)
class Observed:
    """The children as read now: the Job (None if absent), its pods, and a Job of the same name that
    another (deleted) AxolotlJob still controls."""

    job: Obj | None
    pods: Sequence[Obj] = ()
    foreign_job: Obj | None = None

    @cached_property
    def finished(self) -> list[Obj]:
        """Pods whose trainer ended, oldest first."""
        return sorted((p for p in self.pods if phase_of(p) in {"Succeeded", "Failed"}), key=finished_at)

    @cached_property
    def failed(self) -> list[Obj]:
        return [p for p in self.finished if phase_of(p) == "Failed"]

    @cached_property
    def counted_failures(self) -> list[Obj]:
        """Failures that use up backoffLimit (evictions and checkpointed stops do not)."""
        return [p for p in self.failed if not evicted(p) and saved_on_sigterm(p) is None]

    @cached_property
    def last_stop(self) -> tuple[str, int] | None:
        """(pod, step) when the newest finished pod was stopped by SIGTERM after saving a checkpoint."""
        if not self.finished:
            return None
        step = saved_on_sigterm(self.finished[-1])
        return None if step is None else (name_of(self.finished[-1]), step)

    @cached_property
    def succeeded(self) -> list[Obj]:
        return [p for p in self.finished if phase_of(p) == "Succeeded"]

    @cached_property
    def active(self) -> list[Obj]:
        """Pods that are starting or running (not being deleted)."""
        return [
            p
            for p in self.pods
            if phase_of(p) in {"Pending", "Running"} and not get(p, "metadata", "deletionTimestamp")
        ]

    @cached_property
    def training(self) -> list[Obj]:
        """Active pods whose trainer has started. A trainer that has just exited still sits in a Running
        pod until the kubelet records the pod's phase: it has started, so the job is not back to Pending."""
        return [
            p
            for p in self.active
            if phase_of(p) == "Running"
            and {"running", "terminated"} & set(get(container_status(p), "state", default={}))
        ]

    @cached_property
    def last_summary(self) -> dict[str, Any] | None:
        """The newest termination summary of any finished pod."""
        return next((s for s in map(summary_of, reversed(self.finished)) if s), None)

    @cached_property
    def rank0_success(self) -> Obj | None:
        """The succeeded pod whose numbers describe the run: rank 0 (completion index 0) of a
        multi-node job, which alone reports steps and loss; else the newest success."""
        ranked = [p for p in self.succeeded if completion_index(p) in (None, "0")]
        return (ranked or self.succeeded or [None])[-1]

    def job_condition(self, *types: str) -> Obj | None:
        return next((c for c in (true_condition(self.job, t) for t in types) if c), None)
