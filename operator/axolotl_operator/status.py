"""The AxolotlJob's status from what its children show. Pure: (AxolotlJob, Job, pods, now) -> status.

Why pure: every message a user reads (why a job is pending, why it failed, what to do) is decided here
and unit-tested without a cluster; the Kopf shell only fetches the inputs and writes the result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .api.job import CONDITION_TYPES
from .api.secrets_guard import redact
from .render import COMPLETION_INDEX_ANNOTATION, CONTAINER_NAME, INVALID_CONFIG_EXIT_CODE, Names

Obj = Mapping[str, Any]

PENDING, RUNNING, SUCCEEDED, FAILED, SUSPENDED = "Pending", "Running", "Succeeded", "Failed", "Suspended"
TERMINAL = frozenset({SUCCEEDED, FAILED})
# Fields of .status this module owns; anything else there (e.g. progress from the trainer) is left alone.
OWNED_FIELDS = (
    "phase",
    "reason",
    "message",
    "observedGeneration",
    "conditions",
    "attempts",
    "startTime",
    "completionTime",
    "jobName",
    "configMapName",
    "claimName",
    "outputs",
)
IMAGE_PULL_REASONS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull", "RegistryUnavailable"}
)
# Pending reasons that need the user's attention: their transitions are Warning events.
PROBLEM_REASONS = frozenset(
    {"Unschedulable", "ImagePullFailed", "CreateContainerConfigError", "ContainerError"}
)
MAX_DETAIL = 1500  # characters of a runner's message kept in status.message


@dataclass(frozen=True)
class Transition:
    """One thing to tell the user as an Event on the AxolotlJob."""

    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class JobFacts:
    """What the status needs from the validated spec (or the validation errors)."""

    spec_errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    output_dir: str | None = None
    hub_model_id: str | None = None
    claim_name: str | None = None
    gpus: int = 0
    gpu_resource: str = "nvidia.com/gpu"
    queue_name: str | None = None
    suspend: bool = False
    backoff_limit: int | None = None
    active_deadline_seconds: int | None = None


@dataclass(frozen=True)
class StatusResult:
    status: dict[str, Any]
    transitions: tuple[Transition, ...] = field(default_factory=tuple)

    def changed(self, previous: Obj | None) -> bool:
        """Whether writing this status would change anything the operator owns."""
        previous = previous or {}
        extra = ("progress",) if "progress" in self.status else ()
        return any(previous.get(key) != self.status.get(key) for key in (*OWNED_FIELDS, *extra))

    def patch(self) -> dict[str, Any]:
        """A JSON merge patch body for .status: owned fields, None deletes. `progress` belongs to the
        trainer's live reports and is only written with the final numbers of a finished run."""
        patch = {key: self.status.get(key) for key in OWNED_FIELDS}
        if "progress" in self.status:
            patch["progress"] = self.status["progress"]
        return patch


@dataclass(frozen=True)
class Observation:
    phase: str
    reason: str
    message: str


# ---------------------------------------------------------------- small readers


def _get(obj: Obj | None, *path: str, default: Any = None) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return default
        cur = cur.get(key)
    return default if cur is None else cur


def _condition(obj: Obj | None, type_: str) -> Obj | None:
    for cond in _get(obj, "status", "conditions", default=[]):
        if cond.get("type") == type_ and cond.get("status") == "True":
            return cond
    return None


def _container_status(pod: Obj) -> Obj | None:
    statuses = _get(pod, "status", "containerStatuses", default=[])
    return next((s for s in statuses if s.get("name") == CONTAINER_NAME), statuses[0] if statuses else None)


def _terminated(pod: Obj) -> Obj | None:
    status = _container_status(pod)
    return _get(status, "state", "terminated") or _get(status, "lastState", "terminated")


def parse_summary(text: str | None) -> dict[str, Any] | None:
    """The trainer's JSON termination summary, or None (absent, truncated, or plain log text)."""
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return data if isinstance(data, dict) and isinstance(data.get("outcome"), str) else None


def _tail(text: str, limit: int = MAX_DETAIL) -> str:
    """The end of a log (where the error is), on one line."""
    lines = [line.strip() for line in redact(text).strip().splitlines() if line.strip()]
    joined = " | ".join(lines[-8:])
    return joined if len(joined) <= limit else "..." + joined[-limit:]


def _clip(text: str, limit: int = MAX_DETAIL) -> str:
    """One line, token-looking strings masked, at most `limit` characters: fit for status and Events."""
    text = " ".join(redact(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _completion_index(pod: Obj) -> str | None:
    return (_get(pod, "metadata", "annotations") or {}).get(COMPLETION_INDEX_ANNOTATION)


def _time_key(pod: Obj) -> str:
    term = _terminated(pod) or {}
    return str(term.get("finishedAt") or _get(pod, "metadata", "creationTimestamp", default=""))


def _evicted(pod: Obj) -> bool:
    return (
        _get(pod, "status", "reason") in {"Evicted", "Preempting"}
        or _condition(pod, "DisruptionTarget") is not None
    )


def pod_failure(pod: Obj) -> tuple[str, str]:
    """(reason, message) for a failed pod: OOM, eviction, invalid config or exit code + runner message."""
    name = _get(pod, "metadata", "name", default="?")
    if _evicted(pod):
        why = _get(pod, "status", "message") or _get(_condition(pod, "DisruptionTarget"), "message") or ""
        return "Evicted", _clip(
            f"pod {name} was evicted or preempted ({why.rstrip('.')}); "
            "this does not count against backoffLimit and the Job starts a new pod"
        )
    term = _terminated(pod) or {}
    code = term.get("exitCode")
    text = term.get("message") or ""
    summary = parse_summary(text)
    if term.get("reason") == "OOMKilled":
        limit = _memory_limit(pod)
        return "OOMKilled", (
            f"the trainer in pod {name} was OOMKilled (out of CPU memory"
            + (f", limit {limit}" if limit else "")
            + "): raise spec.resources.limits.memory, or lower micro_batch_size / sequence_len, "
            "or enable gradient_checkpointing"
        )
    if summary:
        error = summary.get("error") or {}
        detail = str(error.get("message") or summary.get("outcome"))
        if error.get("key"):
            detail = f"spec.config.{error['key']}: {detail}"
    else:
        detail = _tail(text) if text.strip() else "no message (see kubectl logs)"
    if code == INVALID_CONFIG_EXIT_CODE or (summary and summary.get("outcome") == "invalid_config"):
        return "InvalidConfig", _clip(
            f"Axolotl rejected the config (exit code {INVALID_CONFIG_EXIT_CODE}, not retried): {detail}. "
            "spec.config is immutable: fix it in a new AxolotlJob"
        )
    return "Error", _clip(f"the trainer in pod {name} exited with code {code}: {detail}")


def _memory_limit(pod: Obj) -> str | None:
    for container in _get(pod, "spec", "containers", default=[]):
        if container.get("name") == CONTAINER_NAME:
            return _get(container, "resources", "limits", "memory")
    return None


def pod_problem(pod: Obj, facts: JobFacts) -> tuple[str, str] | None:
    """Why a not-yet-running pod is stuck, in words a user can act on; None when it is just starting."""
    name = _get(pod, "metadata", "name", default="?")
    for cond in _get(pod, "status", "conditions", default=[]):
        if (cond.get("type"), cond.get("status"), cond.get("reason")) == (
            "PodScheduled",
            "False",
            "Unschedulable",
        ):
            asks = f"{facts.gpus} {facts.gpu_resource}" if facts.gpus else "its CPU/memory requests"
            scheduler = (cond.get("message") or "no node fits").rstrip(".")
            return "Unschedulable", _clip(
                f"pod {name} cannot be scheduled: it needs {asks} on one node, and the scheduler "
                f"says: {scheduler}. Free capacity, lower spec.gpus, or fix spec.nodeSelector/tolerations"
            )
    status = _container_status(pod)
    waiting = _get(status, "state", "waiting") or {}
    reason, message = waiting.get("reason"), (waiting.get("message") or "").strip()
    if reason in IMAGE_PULL_REASONS:
        image = (status or {}).get("image") or "?"
        return "ImagePullFailed", _clip(
            f"pod {name} cannot pull image {image} ({reason}: {message or 'no details'}). "
            "Check spec.image (or the operator's default image) and spec.imagePullSecrets"
        )
    if reason == "CreateContainerConfigError":
        return "CreateContainerConfigError", _clip(
            f"the trainer container of pod {name} cannot be created: {message or reason}. "
            "Create the Secret and key that spec.secrets (or spec.env) names, in the job's namespace"
        )
    if reason in {"RunContainerError", "CreateContainerError", "CrashLoopBackOff"}:
        return "ContainerError", _clip(f"pod {name}: {reason}: {message or 'no details'}")
    return None


# ---------------------------------------------------------------- the observation


def observe(
    previous: Obj, job: Obj | None, pods: Sequence[Obj], facts: JobFacts, foreign_job: Obj | None = None
) -> tuple[Observation, dict[str, Any] | None]:
    """The phase, reason and message, plus the runner's summary of the deciding pod (if any)."""
    if facts.spec_errors:
        return Observation(
            FAILED,
            "InvalidSpec",
            _clip(
                "the spec is invalid, nothing was created: "
                + "; ".join(facts.spec_errors)
                + ". Fix the manifest (`axolotl-operator validate FILE` shows the same)"
                " and re-create the job",
                3000,
            ),
        ), None
    if job is None:
        if previous.get("phase") in TERMINAL:  # the Job was deleted after finishing (TTL): keep the result
            return Observation(
                previous["phase"], previous.get("reason") or "", previous.get("message") or ""
            ), None
        if foreign_job is not None:
            refs = _get(foreign_job, "metadata", "ownerReferences", default=[])
            owner = next((r for r in refs if r.get("controller")), {})
            return Observation(
                PENDING,
                "WaitingForCleanup",
                f"Job {_get(foreign_job, 'metadata', 'name')} still belongs to {owner.get('kind', '?')} "
                f"uid {owner.get('uid', '?')} (a deleted job of the same name); the new Job is created once "
                "the garbage collector has removed it",
            ), None
        return Observation(PENDING, "Creating", "creating the training Job"), None

    finished = sorted(
        (p for p in pods if _get(p, "status", "phase") in {"Succeeded", "Failed"}), key=_time_key
    )
    failed = [p for p in finished if _get(p, "status", "phase") == "Failed"]
    last_summary = next(
        (s for s in (parse_summary(_get(_terminated(p), "message")) for p in reversed(finished)) if s), None
    )

    if _condition(job, "Complete") or _condition(job, "SuccessCriteriaMet"):
        succeeded = [p for p in finished if _get(p, "status", "phase") == "Succeeded"]
        # Rank 0 (completion index 0 of a multi-node job) holds the run's numbers; the others only
        # report their own outcome.
        ok = next((p for p in reversed(succeeded) if _completion_index(p) in (None, "0")), None)
        ok = ok or (succeeded[-1] if succeeded else None)
        summary = parse_summary(_get(_terminated(ok), "message")) if ok else None
        return Observation(SUCCEEDED, "Succeeded", _success_message(summary, facts)), summary or last_summary

    failure = _condition(job, "Failed") or _condition(job, "FailureTarget")
    if failure:
        return _failure(job, failure, failed, facts), last_summary

    if _get(job, "spec", "suspend"):
        if facts.queue_name and not facts.suspend:
            return Observation(
                PENDING,
                "Queued",
                f"waiting for Kueue to admit the job from LocalQueue {facts.queue_name} "
                "(the Job stays suspended until then)",
            ), last_summary
        return Observation(
            SUSPENDED,
            "Suspended",
            "suspended by spec.suspend: the training pods are stopped; set spec.suspend: false to resume "
            "(from the last checkpoint)",
        ), last_summary

    active = [
        p
        for p in pods
        if _get(p, "status", "phase", default="Pending") in {"Pending", "Running"}
        and not _get(p, "metadata", "deletionTimestamp")
    ]
    retry = _retry_note(failed, facts)
    for pod in active:
        problem = pod_problem(pod, facts)
        if problem:
            return Observation(PENDING, problem[0], problem[1] + retry), last_summary
    # A trainer that has just exited still sits in a Running pod until the kubelet records the pod's
    # phase: it has started, so the job is not back to Pending.
    running = [
        p
        for p in active
        if _get(p, "status", "phase") == "Running"
        and {"running", "terminated"} & set(_get(_container_status(p), "state") or {})
    ]
    if running:
        nodes = sorted({_get(p, "spec", "nodeName", default="?") for p in running})
        return Observation(
            RUNNING, "Training", f"training in {len(running)} pod(s) on {', '.join(nodes)}" + retry
        ), last_summary
    if active:
        return Observation(PENDING, "Starting", "the training pod is starting" + retry), last_summary
    if any(_get(p, "status", "phase") == "Succeeded" for p in finished):
        # The trainer exited 0; the Job controller marks the Job Complete a moment later.
        return Observation(RUNNING, "Training", "the trainer finished; the Job is recording completion"), None
    return Observation(
        PENDING, "Starting", "waiting for the Job controller to create the pod" + retry
    ), last_summary


def _retry_note(failed: Sequence[Obj], facts: JobFacts) -> str:
    if not failed:
        return ""
    counted = [p for p in failed if not _evicted(p)]
    _, why = pod_failure(failed[-1])
    limit = f" of backoffLimit {facts.backoff_limit}" if facts.backoff_limit is not None else ""
    return f" (retry after {len(counted)} failure(s){limit}; resumes from the last checkpoint; last: {why})"


def _success_message(summary: dict[str, Any] | None, facts: JobFacts) -> str:
    out = (summary or {}).get("outputDir") or facts.output_dir
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
    if out:
        message += f"; output in {out}"
    hub = (summary or {}).get("hubModelId")
    if hub:
        message += f", pushed to {hub}"
    return message


def _failure(job: Obj, failure: Obj, failed: Sequence[Obj], facts: JobFacts) -> Observation:
    job_reason = failure.get("reason") or "JobFailed"
    counted = [p for p in failed if not _evicted(p)]
    last_reason, last = pod_failure(counted[-1]) if counted else ("", "")
    if job_reason == "DeadlineExceeded":
        limit = _get(job, "spec", "activeDeadlineSeconds", default=facts.active_deadline_seconds)
        return Observation(
            FAILED,
            "DeadlineExceeded",
            f"the job ran longer than activeDeadlineSeconds ({limit} s) and was stopped. Raise "
            "spec.activeDeadlineSeconds; a new job with the same name and volume resumes from the last "
            "checkpoint",
        )
    if job_reason == "PodFailurePolicy" or last_reason == "InvalidConfig":
        if last_reason == "InvalidConfig":
            return Observation(FAILED, "InvalidConfig", last)
        return Observation(FAILED, "PodFailurePolicy", _clip(str(failure.get("message") or job_reason)))
    if job_reason == "BackoffLimitExceeded":
        limit = _get(job, "spec", "backoffLimit", default=facts.backoff_limit)
        head = f"the training failed {len(counted) or _get(job, 'status', 'failed', default='?')} time(s), "
        head += f"using up backoffLimit {limit}"
        reason = "OOMKilled" if last_reason == "OOMKilled" else "BackoffLimitExceeded"
        return Observation(FAILED, reason, _clip(head + (f"; last attempt: {last}" if last else "")))
    return Observation(
        FAILED,
        job_reason,
        _clip(f"{failure.get('message') or job_reason}" + (f"; last attempt: {last}" if last else "")),
    )


# ---------------------------------------------------------------- conditions and the status


def _conditions(
    previous: Sequence[Obj],
    obs: Observation,
    created: tuple[bool, str, str],
    generation: int | None,
    now: str,
) -> list[dict[str, Any]]:
    """metav1.Conditions; lastTransitionTime changes only when a condition's status changes."""
    before = {c.get("type"): c for c in previous or []}
    truth = {
        "Created": created,
        "Running": (obs.phase == RUNNING, obs.reason, obs.message if obs.phase == RUNNING else ""),
        "Succeeded": (obs.phase == SUCCEEDED, obs.reason, obs.message if obs.phase == SUCCEEDED else ""),
        "Failed": (obs.phase == FAILED, obs.reason, obs.message if obs.phase == FAILED else ""),
        "Suspended": (obs.phase == SUSPENDED, obs.reason, obs.message if obs.phase == SUSPENDED else ""),
        # Ready/Stalled are what Flux (kstatus) and Argo CD read: current only when succeeded.
        "Ready": (obs.phase == SUCCEEDED, obs.reason, obs.message),
        "Stalled": (obs.phase == FAILED, obs.reason, obs.message if obs.phase == FAILED else ""),
        # kstatus' InProgress signal; written only if the API lists it in CONDITION_TYPES.
        "Reconciling": (obs.phase in {PENDING, RUNNING}, obs.reason, ""),
    }
    result = []
    for type_ in CONDITION_TYPES:
        if type_ not in truth:
            continue
        value, reason, message = truth[type_]
        status = "True" if value else "False"
        old = before.get(type_) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        cond: dict[str, Any] = {
            "type": type_,
            "status": status,
            "reason": reason or obs.phase,
            "message": message,
            "lastTransitionTime": since or now,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        result.append(cond)
    return result


def _attempts(previous: Obj, job: Obj | None, pods: Sequence[Obj]) -> int | None:
    """Training attempts (1 + retries, evictions included); never decreases when pods are cleaned up."""
    if job is None:
        return previous.get("attempts")
    per_attempt = max(1, int(_get(job, "spec", "parallelism", default=1)))
    counters = sum(int(_get(job, "status", key, default=0)) for key in ("active", "succeeded", "failed"))
    started = max(len(pods), counters)
    return max(int(previous.get("attempts") or 0), math.ceil(started / per_attempt))


def compute_status(
    axj: Obj, job: Obj | None, pods: Sequence[Obj], facts: JobFacts, now: str, foreign_job: Obj | None = None
) -> StatusResult:
    """The new status of the AxolotlJob and the transitions to announce as Events.

    `foreign_job`: a Job with the job's name that another (deleted) AxolotlJob still controls.
    """
    previous: Obj = axj.get("status") or {}
    meta = axj.get("metadata") or {}
    generation = meta.get("generation")
    names = Names.of(meta.get("name", ""))
    obs, summary = observe(previous, job, pods, facts, foreign_job)

    if facts.spec_errors:
        created = (False, "InvalidSpec", "nothing was created: the spec is invalid")
    elif job is not None:
        created = (True, "JobCreated", f"created Job {names.job} and ConfigMap {names.config_map}")
    elif previous.get("phase") in TERMINAL:
        created = (
            True,
            "JobDeleted",
            f"Job {names.job} was deleted after it finished (ttlSecondsAfterFinished)",
        )
    else:
        created = (False, "Creating", "creating the training Job")

    status: dict[str, Any] = {
        "phase": obs.phase,
        "reason": obs.reason,
        "message": obs.message,
        "observedGeneration": generation,
        "conditions": _conditions(previous.get("conditions") or [], obs, created, generation, now),
    }
    if not facts.spec_errors:
        status["jobName"] = names.job
        status["configMapName"] = names.config_map
        status["claimName"] = facts.claim_name
        status["attempts"] = _attempts(previous, job, pods)
        status["startTime"] = _get(job, "status", "startTime") or previous.get("startTime")
        status["outputs"] = _outputs(previous, summary, facts)
    if obs.phase in TERMINAL:
        status["completionTime"] = (
            previous.get("completionTime") if previous.get("phase") == obs.phase else None
        ) or _completion_time(job, now)
        status["progress"] = _final_progress(previous, summary, obs.phase, status["completionTime"])
    status = {key: value for key, value in status.items() if value is not None}
    return StatusResult(status=status, transitions=tuple(_transitions(previous, obs, facts)))


def _final_progress(
    previous: Obj, summary: dict[str, Any] | None, phase: str, finished: str
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
    if phase == SUCCEEDED:
        progress["etaSeconds"] = 0
    progress["updatedAt"] = finished
    return progress


def _completion_time(job: Obj | None, now: str) -> str:
    for type_ in ("Complete", "Failed"):
        cond = _condition(job, type_)
        if cond:
            return _get(job, "status", "completionTime") or cond.get("lastTransitionTime") or now
    return now


def _outputs(previous: Obj, summary: dict[str, Any] | None, facts: JobFacts) -> dict[str, Any] | None:
    outputs = dict(previous.get("outputs") or {})
    summary = summary or {}
    candidates = {
        "outputDir": summary.get("outputDir") or facts.output_dir,
        "hubModelId": summary.get("hubModelId") or facts.hub_model_id,
        "lastCheckpoint": summary.get("lastCheckpoint"),
    }
    outputs.update({key: value for key, value in candidates.items() if value})
    return outputs or None


def _transitions(previous: Obj, obs: Observation, facts: JobFacts) -> Iterable[Transition]:
    if previous.get("phase") is None:
        for warning in facts.warnings:
            yield Transition("Warning", "SpecWarning", warning)
    if (previous.get("phase"), previous.get("reason")) == (obs.phase, obs.reason):
        return
    warn = obs.phase == FAILED or obs.reason in PROBLEM_REASONS
    yield Transition("Warning" if warn else "Normal", obs.reason, f"{obs.phase}: {obs.message}")


def facts_of(parsed: Any, settings: Any) -> JobFacts:
    """JobFacts of a valid job (a ParsedJob and the OperatorSettings)."""
    from .render import training_config  # pure; imported here to keep the module's surface small

    spec = parsed.job.spec
    config, _ = training_config(parsed)
    storage = spec.storage
    claim = storage.existing_claim if storage and storage.existing_claim else Names.of(parsed.name).claim
    return JobFacts(
        warnings=tuple(str(w) for w in parsed.warnings),
        output_dir=config.get("output_dir"),
        hub_model_id=config.get("hub_model_id"),
        claim_name=claim,
        gpus=spec.gpus,
        gpu_resource=settings.gpu_resource_name,
        queue_name=spec.queue_name or None,
        suspend=spec.suspend,
        backoff_limit=spec.backoff_limit,
        active_deadline_seconds=spec.active_deadline_seconds,
    )


def facts_of_error(error: Any) -> JobFacts:
    """JobFacts of an invalid job (a SpecError): its errors and warnings."""
    return JobFacts(
        spec_errors=tuple(str(e) for e in error.errors) or (str(error),),
        warnings=tuple(str(w) for w in error.warnings),
    )
