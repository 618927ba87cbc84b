"""The phase rules: an ordered table, the first rule that applies decides (like `api/compat.py`'s RULES).

Each rule reads the previous status, the children and the spec facts, and returns an Observation or
None. The order is the precedence: an invalid spec beats everything, a finished Job beats its pods, a
suspended Job beats pods that are still being stopped, a stuck pod beats a running one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..api.status import TERMINAL_PHASES, Phase, Reason
from .children import FAILURE_CONDITIONS, SUCCESS_CONDITIONS, Obj, Observed, get, summary_of
from .diagnosis import (
    invalid_edit_note,
    invalid_spec_message,
    job_failure,
    pod_problem,
    retry_note,
    success_message,
)
from .model import JobFacts, Observation


@dataclass(frozen=True)
class Inputs:
    previous: Obj  # the status as stored
    observed: Observed
    facts: JobFacts
    blocker: tuple[Reason, str] | None = None  # why the last reconcile stopped


Rule = Callable[[Inputs], Observation | None]


def _invalid_spec(i: Inputs) -> Observation | None:
    """Nothing could be created. (An invalid edit of a job whose Job exists is not a failure: the Job
    goes on as it was, and the message says the edit was not applied.)"""
    if not i.facts.spec_errors or i.observed.job is not None:
        return None
    return Observation(Phase.FAILED, Reason.INVALID_SPEC, invalid_spec_message(i.facts.spec_errors))


def _finished_and_job_deleted(i: Inputs) -> Observation | None:
    """The Job was deleted after finishing (ttlSecondsAfterFinished): keep the result."""
    phase = i.previous.get("phase")
    if i.observed.job is not None or phase not in TERMINAL_PHASES:
        return None
    reason = i.previous.get("reason") or (Reason.SUCCEEDED if phase == Phase.SUCCEEDED else Reason.JOB_FAILED)
    return Observation(Phase(phase), _reason(reason), i.previous.get("message") or "")


def _blocked(i: Inputs) -> Observation | None:
    """The last reconcile stopped: a foreign object has a child's name (the user must act; Pending),
    or the API server refused a child (the spec must change; Failed)."""
    if i.blocker is None:
        return None
    reason, message = i.blocker
    failed = reason in (Reason.CREATE_REJECTED, Reason.INVALID_SPEC)
    return Observation(Phase.FAILED if failed else Phase.PENDING, reason, message)


def _foreign_job(i: Inputs) -> Observation | None:
    foreign = i.observed.foreign_job
    if i.observed.job is not None or foreign is None:
        return None
    owner = next(
        (r for r in get(foreign, "metadata", "ownerReferences", default=[]) if r.get("controller")), {}
    )
    return Observation(
        Phase.PENDING,
        Reason.WAITING_FOR_CLEANUP,
        f"Job {get(foreign, 'metadata', 'name')} still belongs to {owner.get('kind', '?')} "
        f"uid {owner.get('uid', '?')} (a deleted job of the same name); the new Job is created once "
        "the garbage collector has removed it",
    )


def _no_job_yet(i: Inputs) -> Observation | None:
    if i.observed.job is not None:
        return None
    return Observation(Phase.PENDING, Reason.CREATING, "creating the training Job")


def _complete(i: Inputs) -> Observation | None:
    if not i.observed.job_condition(*SUCCESS_CONDITIONS):
        return None
    own = summary_of(i.observed.rank0_success)
    message = success_message(own, i.facts)
    return Observation(Phase.SUCCEEDED, Reason.SUCCEEDED, message, own or i.observed.last_summary)


def _failed(i: Inputs) -> Observation | None:
    failure = i.observed.job_condition(*FAILURE_CONDITIONS)
    return job_failure(i.observed, failure, i.facts) if failure else None


def _suspended(i: Inputs) -> Observation | None:
    if not get(i.observed.job, "spec", "suspend"):
        return None
    if i.facts.queue_name and not i.facts.suspend:
        return Observation(
            Phase.PENDING,
            Reason.QUEUED,
            f"waiting for Kueue to admit the job from LocalQueue {i.facts.queue_name} "
            "(the Job stays suspended until then)",
            i.observed.last_summary,
        )
    step = i.observed.last_stop[1] if i.observed.last_stop else -1
    if step < 0:  # the stopped pod is gone (the Job controller deletes a suspended job's pods)
        step = _progress(i).get("checkpointStep", -1)
    saved = f"; checkpoint saved at step {step}" if isinstance(step, int) and step >= 0 else ""
    return Observation(
        Phase.SUSPENDED,
        Reason.SUSPENDED,
        "suspended by spec.suspend: the training pods are stopped; set spec.suspend: false to resume "
        f"(from the last checkpoint){saved}",
        i.observed.last_summary,
    )


def _stuck_pod(i: Inputs) -> Observation | None:
    for pod in i.observed.active:
        problem = pod_problem(pod, i.facts)
        if problem:
            reason, message = problem
            return Observation(
                Phase.PENDING, reason, message + retry_note(i.observed, i.facts), i.observed.last_summary
            )
    return None


def _training(i: Inputs) -> Observation | None:
    running = i.observed.training
    if not running:
        return None
    nodes = ", ".join(sorted({get(p, "spec", "nodeName", default="?") for p in running}))
    note = retry_note(i.observed, i.facts)
    resumed = _progress(i).get("resumedFromStep")
    if not note and isinstance(resumed, int) and resumed > 0:
        note = f" (resumed from the checkpoint at step {resumed})"
    message = f"training in {len(running)} pod(s) on {nodes}" + note
    return Observation(Phase.RUNNING, Reason.TRAINING, message, i.observed.last_summary)


def _starting(i: Inputs) -> Observation | None:
    if not i.observed.active:
        return None
    message = "the training pod is starting" + retry_note(i.observed, i.facts)
    return Observation(Phase.PENDING, _starting_reason(i), message, i.observed.last_summary)


def _progress(i: Inputs) -> dict:
    progress = i.previous.get("progress")
    return progress if isinstance(progress, dict) else {}


def _starting_reason(i: Inputs) -> Reason:
    return Reason.PREEMPTED if i.observed.last_stop else Reason.STARTING


def _recording_completion(i: Inputs) -> Observation | None:
    """The trainer exited 0; the Job controller marks the Job Complete a moment later."""
    if not i.observed.succeeded:
        return None
    return Observation(
        Phase.RUNNING, Reason.TRAINING, "the trainer finished; the Job is recording completion"
    )


def _waiting_for_pod(i: Inputs) -> Observation:
    message = "waiting for the Job controller to create the pod" + retry_note(i.observed, i.facts)
    return Observation(Phase.PENDING, _starting_reason(i), message, i.observed.last_summary)


RULES: tuple[tuple[str, Rule], ...] = (
    ("invalid spec", _invalid_spec),
    ("finished, Job deleted", _finished_and_job_deleted),
    ("reconcile blocked", _blocked),
    ("foreign Job", _foreign_job),
    ("no Job yet", _no_job_yet),
    ("Job complete", _complete),
    ("Job failed", _failed),
    ("Job suspended", _suspended),
    ("a pod is stuck", _stuck_pod),
    ("training", _training),
    ("a pod is starting", _starting),
    ("recording completion", _recording_completion),
)


def observe(
    previous: Obj, observed: Observed, facts: JobFacts, blocker: tuple[Reason, str] | None = None
) -> Observation:
    """The phase, reason and message: the first rule that applies, else waiting for the pod."""
    inputs = Inputs(previous, observed, facts, blocker)
    found = next((obs for obs in map(lambda rule: rule[1](inputs), RULES) if obs is not None), None)
    found = found or _waiting_for_pod(inputs)
    if facts.spec_errors and observed.job is not None:
        note = invalid_edit_note(facts.spec_errors)
        found = Observation(found.phase, found.reason, f"{found.message}; {note}", found.summary)
    return found


def _reason(text: str) -> Reason:
    try:
        return Reason(text)
    except ValueError:
        return Reason.JOB_FAILED
