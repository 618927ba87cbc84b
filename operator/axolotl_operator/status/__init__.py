"""The AxolotlJob's status from what its children show. Pure: (AxolotlJob, Job, pods, now) -> status.

Why pure: every message a user reads (why a job is pending, why it failed, what to do) is decided here
and unit-tested without a cluster; the shell (`status_writer`) only fetches the inputs and applies the
result. By concern: `children` reads the Job and pods, `phase` is the ordered rule table, `diagnosis`
the message catalogue, `conditions` the metav1.Conditions; this module assembles the typed status.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..api.status import (
    OWNED_STATUS_KEYS,
    PROBLEM_REASONS,
    TERMINAL_PHASES,
    AxolotlJobStatus,
    Condition,
    ConditionType,
    NotebookStatus,
    Phase,
    Reason,
)
from ..constants import Names
from .children import Obj, Observed, get, true_condition
from .conditions import conditions_for, set_condition
from .diagnosis import pod_failure, pod_problem
from .model import JobFacts, Observation, Transition, facts_of, facts_of_error
from .outputs import outputs_of
from .phase import RULES, observe

if TYPE_CHECKING:
    from ..notebook import NotebookView

__all__ = [
    "RULES",
    "JobFacts",
    "Observation",
    "Observed",
    "StatusResult",
    "Transition",
    "compute_status",
    "facts_of",
    "facts_of_error",
    "pod_failure",
    "pod_problem",
    "set_condition",
]


@dataclass(frozen=True)
class StatusResult:
    """The operator's part of the status (JSON, by alias), the final progress to show if the run ended
    with a summary (written by the progress field manager), and the Events to record."""

    status: dict[str, Any]
    progress: dict[str, Any] | None = None
    transitions: tuple[Transition, ...] = field(default_factory=tuple)

    def changed(self, previous: Obj | None) -> bool:
        """Whether applying `status` would change anything the operator owns."""
        previous = previous or {}
        return any(previous.get(key) != self.status.get(key) for key in OWNED_STATUS_KEYS)

    def progress_changed(self, previous: Obj | None) -> bool:
        return self.progress is not None and (previous or {}).get("progress") != self.progress


def compute_status(
    axj: Obj,
    job: Obj | None,
    pods: Sequence[Obj],
    facts: JobFacts,
    now: str,
    foreign_job: Obj | None = None,
    blocker: tuple[Reason, str] | None = None,
    notebook: NotebookView | None = None,
) -> StatusResult:
    """The new status of the AxolotlJob and the transitions to announce as Events.

    `foreign_job`: a Job with the job's name that another (deleted) AxolotlJob still controls.
    `blocker`: why the last reconcile could not create the children (a name conflict, a refused create).
    `notebook`: what the notebook keeper found (spec.notebook enabled), shown with a NotebookReady condition.
    """
    previous: Obj = axj.get("status") or {}
    meta = axj.get("metadata") or {}
    generation = meta.get("generation")
    names = Names.of(meta.get("name", ""))
    obs = observe(previous, Observed(job, pods, foreign_job), facts, blocker)
    conditions = conditions_for(
        previous.get("conditions") or [], obs, _created(previous, job, facts, names), generation, now
    )
    notebook_shown: NotebookStatus | None = None
    if notebook is not None:
        from ..notebook import notebook_condition, notebook_status  # the notebook module builds on this one

        shown = notebook_status(notebook, meta["namespace"], meta["name"], facts)
        notebook_shown, ready, reason, message = shown
        conditions.append(
            notebook_condition(previous.get("conditions") or [], ready, reason, message, generation, now)
        )
    if facts.gpu_fit is not None:
        fits, fit_message = facts.gpu_fit
        fit_reason = Reason.PLAN_FITS if fits else Reason.GPU_MEMORY_TOO_SMALL
        before = previous.get("conditions") or []
        type_ = ConditionType.GPU_MEMORY_FITS
        conditions.append(set_condition(before, type_, fits, fit_reason, fit_message, generation, now))
    if facts.spec_errors:  # an invalid edit changes nothing: keep showing what the last valid spec gave
        kept = {ConditionType.GPU_MEMORY_FITS}
        if notebook is None and previous.get("notebook"):
            notebook_shown = NotebookStatus.model_validate(previous["notebook"])
            kept.add(ConditionType.NOTEBOOK_READY)
        before = previous.get("conditions") or []
        conditions.extend(Condition.model_validate(c) for c in before if c.get("type") in kept)
    status = AxolotlJobStatus(
        phase=obs.phase,
        reason=obs.reason,
        message=obs.message,
        observed_generation=generation,
        conditions=conditions,
        notebook=notebook_shown,
    )
    if not facts.spec_errors or job is not None:
        status.job_name = names.job
        status.config_map_name = names.config_map
        status.claim_name = facts.claim_name or previous.get("claimName")
        status.attempts = _attempts(previous, job, pods)
        status.start_time = get(job, "status", "startTime") or previous.get("startTime")
        status.outputs = outputs_of(previous.get("outputs") or {}, obs.summary, facts)
    progress = None
    if obs.phase in TERMINAL_PHASES:
        same = previous.get("phase") == obs.phase
        status.completion_time = (previous.get("completionTime") if same else None) or _completion_time(
            job, now
        )
        progress = _final_progress(previous, obs.summary, obs.phase, status.completion_time)
    return StatusResult(status.owned(), progress, tuple(_transitions(previous, obs, facts)))


def _created(previous: Obj, job: Obj | None, facts: JobFacts, names: Names) -> tuple[bool, Reason, str]:
    if facts.spec_errors and job is None:
        return False, Reason.INVALID_SPEC, "nothing was created: the spec is invalid"
    if job is not None:
        return True, Reason.JOB_CREATED, f"created Job {names.job} and ConfigMap {names.config_map}"
    if previous.get("phase") in TERMINAL_PHASES:
        return (
            True,
            Reason.JOB_DELETED,
            f"Job {names.job} was deleted after it finished (ttlSecondsAfterFinished)",
        )
    return False, Reason.CREATING, "creating the training Job"


def _attempts(previous: Obj, job: Obj | None, pods: Sequence[Obj]) -> int | None:
    """Training attempts (1 + retries, evictions included); never decreases when pods are cleaned up."""
    if job is None:
        return previous.get("attempts")
    per_attempt = max(1, int(get(job, "spec", "parallelism", default=1)))
    counters = sum(int(get(job, "status", key, default=0)) for key in ("active", "succeeded", "failed"))
    started = max(len(pods), counters)
    return max(int(previous.get("attempts") or 0), math.ceil(started / per_attempt))


def _final_progress(
    previous: Obj, summary: Mapping[str, Any] | None, phase: Phase, finished: str
) -> dict[str, Any] | None:
    """The runner's final numbers (steps, loss) as progress, so `kubectl get axj` shows how it ended."""
    if not summary or not isinstance(summary.get("steps"), int):
        return None
    progress = dict(previous.get("progress") or {})
    steps, total = summary["steps"], summary.get("totalSteps")
    progress["step"] = steps
    if isinstance(total, int) and total > 0:
        progress["totalSteps"] = total
        progress["percent"] = min(100, steps * 100 // total)
    if isinstance(summary.get("finalLoss"), int | float):
        progress["loss"] = summary["finalLoss"]
        progress.pop("lossNonFinite", None)  # the run ended on a finite loss
    if phase == Phase.SUCCEEDED:
        progress["etaSeconds"] = 0
    progress["updatedAt"] = finished
    return progress


def _completion_time(job: Obj | None, now: str) -> str:
    for type_ in ("Complete", "Failed"):
        cond = true_condition(job, type_)
        if cond:
            return get(job, "status", "completionTime") or cond.get("lastTransitionTime") or now
    return now


def _transitions(previous: Obj, obs: Observation, facts: JobFacts) -> Iterable[Transition]:
    if previous.get("phase") is None:
        for warning in facts.warnings:
            yield Transition("Warning", Reason.SPEC_WARNING, warning)
    if (previous.get("phase"), previous.get("reason")) == (obs.phase, obs.reason):
        return
    warn = obs.phase == Phase.FAILED or obs.reason in PROBLEM_REASONS
    yield Transition("Warning" if warn else "Normal", obs.reason, f"{obs.phase}: {obs.message}")
