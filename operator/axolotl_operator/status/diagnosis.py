"""The message catalogue: why a pod is stuck, why it failed, how the run ended, in words a user can act on.

Every message names the field or the command that fixes the problem; token-looking strings are masked
and the length is bounded, so messages are fit for status and Events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..api.secrets_guard import redact
from ..api.status import Phase, Reason
from ..trainer_contract import EXIT_INVALID_CONFIG, OUTCOME_INVALID_CONFIG
from .children import (
    Obj,
    Observed,
    container_status,
    evicted,
    get,
    memory_limit,
    name_of,
    summary_of,
    terminated,
    true_condition,
)
from .model import JobFacts, Observation
from .outputs import clean_path, clean_url

MAX_DETAIL = 1500  # characters of a runner's message kept in status.message
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)
CONTAINER_START_REASONS = frozenset({"RunContainerError", "CreateContainerError", "CrashLoopBackOff"})


def clip(text: str, limit: int = MAX_DETAIL) -> str:
    """One line, token-looking strings masked, at most `limit` characters."""
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def log_tail(text: str, limit: int = MAX_DETAIL) -> str:
    """The end of a log (where the error is), on one line."""
    lines = [line.strip() for line in redact(text).strip().splitlines() if line.strip()]
    joined = " | ".join(lines[-8:])
    return joined if len(joined) <= limit else "..." + joined[-limit:]


# ---------------------------------------------------------------- one pod


def pod_failure(pod: Obj) -> tuple[Reason, str]:
    """Why a pod failed: OOM, eviction, invalid config, or its exit code and the runner's message."""
    name = name_of(pod)
    if evicted(pod):
        why = get(pod, "status", "message") or get(true_condition(pod, "DisruptionTarget"), "message") or ""
        return Reason.EVICTED, clip(
            f"pod {name} was evicted or preempted ({why.rstrip('.')}); "
            "this does not count against backoffLimit and the Job starts a new pod"
        )
    term = terminated(pod) or {}
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled":
        limit = memory_limit(pod)
        return Reason.OOM_KILLED, (
            f"the trainer in pod {name} was OOMKilled (out of CPU memory"
            + (f", limit {limit}" if limit else "")
            + "): raise spec.resources.limits.memory, or lower micro_batch_size / sequence_len, "
            "or enable gradient_checkpointing"
        )
    summary = summary_of(pod)
    detail = _runner_detail(summary, term.get("message") or "")
    if code == EXIT_INVALID_CONFIG or (summary and summary.get("outcome") == OUTCOME_INVALID_CONFIG):
        return Reason.INVALID_CONFIG, clip(
            f"Axolotl rejected the config (exit code {EXIT_INVALID_CONFIG}, not retried): {detail}. "
            "spec.config is immutable: fix it in a new AxolotlJob"
        )
    return Reason.ERROR, clip(f"the trainer in pod {name} exited with code {code}: {detail}")


def _runner_detail(summary: dict[str, Any] | None, text: str) -> str:
    if summary is None:
        return log_tail(text) if text.strip() else "no message (see kubectl logs)"
    error = summary.get("error") or {}
    detail = str(error.get("message") or summary.get("outcome"))
    return f"spec.config.{error['key']}: {detail}" if error.get("key") else detail


def pod_problem(pod: Obj, facts: JobFacts) -> tuple[Reason, str] | None:
    """Why a not-yet-running pod is stuck; None when it is just starting."""
    name = name_of(pod)
    for cond in get(pod, "status", "conditions", default=[]):
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            asks = f"{facts.gpus} {facts.gpu_resource}" if facts.gpus else "its CPU/memory requests"
            scheduler = (cond.get("message") or "no node fits").rstrip(".")
            return Reason.UNSCHEDULABLE, clip(
                f"pod {name} cannot be scheduled: it needs {asks} on one node, and the scheduler "
                f"says: {scheduler}. Free capacity, lower spec.gpus, or fix spec.nodeSelector/tolerations"
            )
    status = container_status(pod)
    waiting = get(status, "state", "waiting", default={})
    reason, message = waiting.get("reason"), (waiting.get("message") or "").strip()
    if reason in IMAGE_PULL_REASONS:
        image = (status or {}).get("image") or "?"
        return Reason.IMAGE_PULL_FAILED, clip(
            f"pod {name} cannot pull image {image} ({reason}: {message or 'no details'}). "
            "Check spec.image (or the operator's default image) and spec.imagePullSecrets"
        )
    if reason == "CreateContainerConfigError":
        return Reason.CREATE_CONTAINER_CONFIG_ERROR, clip(
            f"the trainer container of pod {name} cannot be created: {message or reason}. "
            "Create the Secret and key that spec.secrets (or spec.env) names, in the job's namespace"
        )
    if reason in CONTAINER_START_REASONS:
        return Reason.CONTAINER_ERROR, clip(f"pod {name}: {reason}: {message or 'no details'}")
    return None


# ---------------------------------------------------------------- the job


def retry_note(observed: Observed, facts: JobFacts) -> str:
    """What a retrying job has been through, appended to its Pending/Running message."""
    if observed.last_stop:
        return f" ({stopped_note(*observed.last_stop)})"
    if not observed.failed:
        return ""
    _, why = pod_failure(observed.failed[-1])
    limit = f" of backoffLimit {facts.backoff_limit}" if facts.backoff_limit is not None else ""
    return (
        f" (retry after {len(observed.counted_failures)} failure(s){limit}; "
        f"resumes from the last checkpoint; last: {why})"
    )


def stopped_note(pod: str, step: int) -> str:
    at = f"step {step}" if step >= 0 else "its last step"
    return f"continuing from the checkpoint pod {pod} saved at {at} when it was stopped"


def success_message(summary: dict[str, Any] | None, facts: JobFacts) -> str:
    """ "training finished, 300/300 steps, final loss 0.89, 81 s; output in ..., pushed to ..."."""
    parts = ["training finished"]
    if summary:
        steps, total = summary.get("steps"), summary.get("totalSteps")
        if steps is not None:
            parts.append(f"{steps}/{total} steps" if total else f"{steps} steps")
        if isinstance(summary.get("finalLoss"), int | float):
            parts.append(f"final loss {summary['finalLoss']:.4g}")
        if isinstance(summary.get("runtimeSeconds"), int | float):
            parts.append(f"{summary['runtimeSeconds']:.0f} s")
    message = ", ".join(parts)
    out = clean_path((summary or {}).get("outputDir")) or facts.output_dir
    if out:
        message += f"; output in {out}"
    hub = clean_url((summary or {}).get("hubUrl"))
    if hub:
        message += f", pushed to {hub}"
    return message


def job_failure(observed: Observed, failure: Obj, facts: JobFacts) -> Observation:
    """Why the Job failed, from its Failed condition and its last counted pod failure."""
    job, summary = observed.job, observed.last_summary
    job_reason = failure.get("reason") or Reason.JOB_FAILED
    counted = observed.counted_failures
    last_reason, last = pod_failure(counted[-1]) if counted else (None, "")
    if job_reason == "DeadlineExceeded":
        limit = get(job, "spec", "activeDeadlineSeconds", default=facts.active_deadline_seconds)
        return Observation(
            Phase.FAILED,
            Reason.DEADLINE_EXCEEDED,
            f"the job ran longer than activeDeadlineSeconds ({limit} s) and was stopped. Raise "
            "spec.activeDeadlineSeconds; a new job with spec.storage.existingClaim set to this job's claim "
            "resumes from the last checkpoint",
            summary,
        )
    if last_reason == Reason.INVALID_CONFIG:
        return Observation(Phase.FAILED, Reason.INVALID_CONFIG, last, summary)
    if job_reason == "PodFailurePolicy":
        message = clip(str(failure.get("message") or job_reason))
        return Observation(Phase.FAILED, Reason.POD_FAILURE_POLICY, message, summary)
    if job_reason == "BackoffLimitExceeded":
        limit = get(job, "spec", "backoffLimit", default=facts.backoff_limit)
        head = f"the training failed {len(counted) or get(job, 'status', 'failed', default='?')} time(s), "
        head += f"using up backoffLimit {limit}"
        reason = Reason.OOM_KILLED if last_reason == Reason.OOM_KILLED else Reason.BACKOFF_LIMIT_EXCEEDED
        return Observation(
            Phase.FAILED, reason, clip(head + (f"; last attempt: {last}" if last else "")), summary
        )
    text = f"the Job failed ({job_reason}): {failure.get('message') or job_reason}"
    return Observation(
        Phase.FAILED, Reason.JOB_FAILED, clip(text + (f"; last attempt: {last}" if last else "")), summary
    )


def invalid_edit_note(errors: Sequence[str]) -> str:
    return clip("the last spec change is invalid and was not applied: " + "; ".join(errors), 1000)


def invalid_spec_message(errors: Sequence[str]) -> str:
    return clip(
        "the spec is invalid, nothing was created: "
        + "; ".join(errors)
        + ". Fix the manifest (`axolotl-operator validate FILE` shows the same) and re-create the job",
        3000,
    )
