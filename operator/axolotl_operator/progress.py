"""Live progress reports from trainer pods: parse, authorize, decide, and shape `status.progress`. Pure.

Why pure: what the operator accepts from a pod (and from whom) is a security decision; it is unit-tested
here without a cluster, and the HTTP shell (`progress_server`) only fetches the inputs (TokenReview, pod,
Job, AxolotlJob) and hands on the result. The payload is the trainer contract's `ProgressReport`
(camelCase); parsing is tolerant (a bad optional number is dropped) but bounded (size, names, numbers,
and any input the JSON decoder chokes on, e.g. nesting too deep, is a `PayloadError`, never a crash).

Who may report (`authorize`): a ServiceAccount token for the operator's audience, bound to a pod
(TokenReview's pod-name and pod-uid), whose pod has every mark the Job controller gives the pods it
makes for this AxolotlJob's Job: same namespace and uid, not finished, the ServiceAccount of the Job's
pod template, every label of that template (the API server adds `batch.kubernetes.io/controller-uid=
<Job uid>` to it, and that label is required by itself too), the `batch.kubernetes.io/job-tracking`
finalizer (unless the pod is terminating: the Job controller removes it from the pods it deletes, e.g.
on suspend, and such a pod reports the checkpoint it saves on SIGTERM), a controller reference to the
Job, and the Job controlled by the AxolotlJob.

What that cannot prove, and why it is accepted: nothing on a pod says who created it, so none of these
marks is unforgeable. Whoever creates a pod writes its labels, finalizers (any name) and ownerReferences
(`controller` and `blockOwnerDeletion` included; only the OwnerReferencesPermissionEnforcement admission
plugin, off by default, asks for update on `jobs/finalizers` for the latter), and the Job's uid is
readable. Simpler still, the Job controller adopts an ownerless pod that carries the Job's selector
(`batch.kubernetes.io/controller-uid`) and adds the controller reference (with blockOwnerDeletion) and the
tracking finalizer itself. Without any pod, a user with the built-in `edit` role can `kubectl exec` into
the trainer and read its token, or mint one bound to the trainer pod (`create serviceaccounts/token`).
So a namespace user who can create pods can post reports for the AxolotlJobs of that namespace. That is
the namespace's trust boundary: such a user already runs any code as any ServiceAccount of the namespace
with its Secrets, and can edit or delete the AxolotlJob itself; a forged report changes only the numbers
in `status.progress` (never phase, conditions or outputs, and nothing once the job finished). Nobody
outside the namespace, and no other pod of it, gets through.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .api.status import TERMINAL_PHASES
from .constants import CONTROLLER_UID_LABEL, JOB_LABEL
from .ownership import controlled_by
from .trainer_contract import PROGRESS_MAX_BODY_BYTES as MAX_BODY_BYTES

PROGRESS_PATH = "/progress"  # our runner's protocol; transformers' KubeflowCallback: `kubeflow_path`
MAX_INT = 10**15  # steps beyond this are a broken sender, not a training run
SA_USER_PREFIX = "system:serviceaccount:"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
JOB_TRACKING_FINALIZER = "batch.kubernetes.io/job-tracking"  # the Job controller puts it on its pods
FINISHED_POD_PHASES = frozenset({"Succeeded", "Failed"})
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class PayloadError(ValueError):
    """The body is not a progress report (HTTP 400)."""


class Denied(Exception):
    """The sender may not report for this job: 401 (who are you?) or 403 (not yours)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Report:
    """One validated progress report; `timestamp` is when the trainer took the sample (UTC)."""

    job_name: str
    job_namespace: str
    timestamp: datetime
    step: int | None  # always set by our runner; a Kubeflow report may leave it out
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    final: bool = False
    loss_non_finite: bool = False  # the trainer's loss was NaN or infinite (sent as null)
    resumed_from_step: int | None = None  # this run started from a checkpoint at this step
    checkpoint_step: int | None = None  # stopped by SIGTERM after saving a checkpoint at this step
    job_uid: str | None = None  # the AxolotlJob the sender was authorized for (set by the endpoint)
    # A Kubeflow report says only what it knows (the first one the total, the last one the final loss but
    # no step): what it leaves out keeps the value shown. Ours are whole: what they leave out is unknown.
    partial: bool = False


@dataclass(frozen=True)
class Identity:
    """Who sent a report, as the API server's TokenReview says."""

    namespace: str
    service_account: str
    pod_name: str | None
    pod_uid: str | None


# ---------------------------------------------------------------- parsing


def _int(value: Any) -> int | None:
    """An int in [0, MAX_INT]; integral floats are tolerated (JSON encoders write 10.0), bools are not."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and 0 <= value <= MAX_INT:
        return value
    return None


def _float(value: Any, minimum: float | None = None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    if not math.isfinite(number) or (minimum is not None and number < minimum):
        return None
    return number


def parse_time(text: Any) -> datetime | None:
    """RFC 3339 (as Kubernetes and the trainer write it) to an aware UTC datetime, else None."""
    if not isinstance(text, str) or not 0 < len(text) <= 64:
        return None
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        return None
    return stamp.astimezone(UTC)


def format_time(stamp: datetime) -> str:
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json_object(body: bytes | str) -> dict[str, Any]:
    """The body as a JSON object, bounded; whatever hostile input does to the decoder is a PayloadError."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadError(f"body over {MAX_BODY_BYTES} bytes")
    try:
        data = json.loads(body)
    except RecursionError:  # [[[[...: the decoder recurses per level; 16 KiB is deep enough
        raise PayloadError("not JSON: nested too deeply") from None
    except Exception as exc:  # whatever the decoder raises on hostile input is a bad body, not a 500
        why = str(exc).partition("\n")[0][:200]
        raise PayloadError(f"not JSON: {why}") from None
    if not isinstance(data, dict):
        raise PayloadError("not a JSON object")
    return data


def _job_names(name: Any, namespace: Any, where: str) -> tuple[str, str]:
    if not isinstance(name, str) or not _DNS_SUBDOMAIN.match(name):
        raise PayloadError(f"{where[0]}: not an AxolotlJob name")
    if not isinstance(namespace, str) or not _DNS_LABEL.match(namespace):
        raise PayloadError(f"{where[1]}: not a namespace name")
    return name, namespace


def parse_report(body: bytes | str, now: datetime) -> Report:
    """Validate a POSTed body. Names and `step` are required; other numbers are kept only if finite and
    sane; a missing or unparsable timestamp, or one in the future, becomes `now` (the trainer's clock
    may be off, ours decides)."""
    data = _json_object(body)
    name, namespace = _job_names(data.get("jobName"), data.get("jobNamespace"), ("jobName", "jobNamespace"))
    step = _int(data.get("step"))
    if step is None:
        raise PayloadError(f"step: not an integer in [0, {MAX_INT}]")
    stamp = parse_time(data.get("timestamp"))
    if stamp is None or stamp > now:
        stamp = now
    total = _int(data.get("totalSteps"))
    return Report(
        job_name=name,
        job_namespace=namespace,
        timestamp=stamp,
        step=step,
        total_steps=total if total else None,  # 0 means unknown: no percent from it
        epoch=_float(data.get("epoch"), minimum=0),
        loss=_float(data.get("loss")),
        learning_rate=_float(data.get("learningRate"), minimum=0),
        grad_norm=_float(data.get("gradNorm"), minimum=0),
        tokens_per_second=_float(data.get("tokensPerSecond"), minimum=0),
        eta_seconds=_float(data.get("etaSeconds"), minimum=0),
        final=data.get("final") is True,
        loss_non_finite=data.get("lossNonFinite") is True,
        resumed_from_step=_int(data.get("resumedFromStep")) or None,
        checkpoint_step=_int(data.get("checkpointStep")),
    )


# ---------------------------------------------------------------- the Kubeflow protocol

KUBEFLOW_PREFIX = "/kubeflow/namespaces"
KUBEFLOW_ROUTE = KUBEFLOW_PREFIX + "/{namespace}/axolotljobs/{name}"  # aiohttp's pattern
MAX_METRICS = 256  # the callback sends a dozen; 16 KiB would allow some 600 tiny ones
MAX_METRIC_NAME = 128
MAX_NUMBER_TEXT = 64  # "0.00019999999999999998" fits; a 60,000-digit integer would cost seconds to parse


def kubeflow_path(namespace: str, name: str) -> str:
    return f"{KUBEFLOW_PREFIX}/{namespace}/axolotljobs/{name}"


def kubeflow_url(progress_url: str, namespace: str, name: str) -> str:
    """The job's URL for transformers' KubeflowCallback, whose report names no job: the scheme, host and
    port of `progress_url` (and any path before `/progress`, for a proxy), then `kubeflow_path`."""
    parts = urlsplit(progress_url)
    path = parts.path.rstrip("/")
    prefix = path[: -len(PROGRESS_PATH)] if path.endswith(PROGRESS_PATH) else path
    return urlunsplit((parts.scheme, parts.netloc, prefix + kubeflow_path(namespace, name), "", ""))


def _number(value: Any) -> float | None:
    """A metric's value: the callback sends `str(value)` ("0.25", "nan", "inf"); a JSON number is taken
    too. NaN and infinities are returned (the loss rule needs them); anything else is None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if abs(value) <= 1e308 else math.inf  # huge JSON ints would not fit a float
    if not isinstance(value, str) or len(value) > MAX_NUMBER_TEXT:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _metrics(value: Any) -> dict[str, Any]:
    """`[{"name": str, "value": ...}, ...]` as a dict (the last of a repeated name wins)."""
    if value is None:
        return {}
    if not isinstance(value, list):
        raise PayloadError("trainerStatus.metrics: not a list")
    if len(value) > MAX_METRICS:
        raise PayloadError(f"trainerStatus.metrics: more than {MAX_METRICS} entries")
    metrics: dict[str, Any] = {}
    for index, entry in enumerate(value):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not 0 < len(name) <= MAX_METRIC_NAME:
            raise PayloadError(f"trainerStatus.metrics[{index}]: not a {{name, value}} object")
        metrics[name] = entry.get("value")
    return metrics


def parse_kubeflow(body: bytes | str, namespace: str, name: str, now: datetime) -> Report:
    """A report of transformers' `KubeflowCallback`, for the job its URL names (`namespace`, `name`
    from the path, validated like jobName/jobNamespace): `{"trainerStatus": {"lastUpdatedTime",
    "progressPercentage", "estimatedRemainingSeconds", "metrics": [{"name", "value"}]}}`. The step is
    `current_step`, the total `total_steps`, the epoch `current_epoch` (else `epoch`); loss, learning
    rate and grad norm follow our rules (a NaN or infinite loss is `loss_non_finite`). Progress 100 with
    0 s remaining is the final report (on_train_end). It is `partial`: see `fill`."""
    name, namespace = _job_names(name, namespace, ("the URL's job name", "the URL's namespace"))
    data = _json_object(body)
    status = data.get("trainerStatus")
    if not isinstance(status, dict):
        raise PayloadError("trainerStatus: not an object")
    metrics = _metrics(status.get("metrics"))
    stamp = parse_time(status.get("lastUpdatedTime"))
    if stamp is None or stamp > now:
        stamp = now
    loss = _number(metrics.get("loss"))
    total = _int(_number(metrics.get("total_steps")))
    epoch = _number(metrics.get("current_epoch"))
    eta = _float(status.get("estimatedRemainingSeconds"), minimum=0)
    return Report(
        job_name=name,
        job_namespace=namespace,
        timestamp=stamp,
        step=_int(_number(metrics.get("current_step"))),
        total_steps=total if total else None,
        epoch=_float(_number(metrics.get("epoch")) if epoch is None else epoch, minimum=0),
        loss=_float(loss),
        learning_rate=_float(_number(metrics.get("learning_rate")), minimum=0),
        grad_norm=_float(_number(metrics.get("grad_norm")), minimum=0),
        eta_seconds=eta,
        final=_int(status.get("progressPercentage")) == 100 and eta == 0,
        loss_non_finite=loss is not None and not math.isfinite(loss),
        partial=True,
    )


# The numbers a partial report may leave out, and their keys in status.progress.
_FILLED = (
    ("step", "step"),
    ("total_steps", "totalSteps"),
    ("epoch", "epoch"),
    ("learning_rate", "learningRate"),
    ("grad_norm", "gradNorm"),
    ("tokens_per_second", "tokensPerSecond"),
    ("eta_seconds", "etaSeconds"),
)


def fill(report: Report, shown: Mapping[str, Any] | None) -> Report:
    """A partial report completed from `shown` (a status.progress) for what it leaves out; a final one
    without a step ended at its last step. Idempotent; a whole report (ours) is returned as it is."""
    if not report.partial:
        return report
    shown = shown if isinstance(shown, Mapping) else {}
    values: dict[str, Any] = {}
    for attr, key in _FILLED:
        if getattr(report, attr) is None:
            kept = _int(shown.get(key)) if attr in ("step", "total_steps") else _float(shown.get(key), 0)
            if kept is not None:
                values[attr] = kept
    if report.final and report.step is None and values.get("total_steps", report.total_steps):
        values["step"] = values.get("total_steps", report.total_steps)  # it ended: all steps are done
    if report.loss is None and not report.loss_non_finite:
        values["loss"] = _float(shown.get("loss"))
        values["loss_non_finite"] = shown.get("lossNonFinite") is True
    return dataclasses.replace(report, **values)


# ---------------------------------------------------------------- status.progress


def to_progress(report: Report, shown: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The `status.progress` object of the API model; unknown values are absent. `shown` (the current
    status.progress) completes a partial report (`fill`)."""
    report = fill(report, shown)
    eta = report.eta_seconds
    if report.final:
        eta = 0
    percent = None
    if report.total_steps and report.step is not None:
        percent = min(100, report.step * 100 // report.total_steps)
    values: dict[str, Any] = {
        "step": report.step,
        "totalSteps": report.total_steps,
        "percent": percent,
        "epoch": report.epoch,
        "loss": report.loss,
        "lossNonFinite": True if report.loss_non_finite else None,
        "learningRate": report.learning_rate,
        "gradNorm": report.grad_norm,
        "tokensPerSecond": report.tokens_per_second,
        "etaSeconds": None if eta is None else min(MAX_INT, round(eta)),
        "updatedAt": format_time(report.timestamp),
        "resumedFromStep": report.resumed_from_step,
        "checkpointStep": report.checkpoint_step,
    }
    return {key: value for key, value in values.items() if value is not None}


def is_newer(report: Report, status: Mapping[str, Any] | None) -> bool:
    """Whether the report should replace what the status shows. A finished job keeps the numbers of its
    termination summary; otherwise the later sample wins, and within one second the higher step (a
    resumed attempt may restart from an earlier checkpoint, so steps alone do not order reports)."""
    status = status or {}
    if status.get("phase") in TERMINAL_PHASES:
        return False
    current = status.get("progress")
    if not isinstance(current, Mapping):
        return True
    shown = parse_time(current.get("updatedAt"))
    if shown is None:
        return True
    if report.timestamp != shown:
        return report.timestamp > shown
    step = current.get("step")
    return report.final or not isinstance(step, int) or report.step is None or report.step >= step


def newest(a: Report | None, b: Report) -> Report:
    """Of two reports for one job, the one to keep while a write is due: ordered as `is_newer` orders
    them (the later sample; within one second the final report, else the higher step). A partial one
    that wins keeps what it leaves out from the other (`fill`)."""
    if a is None:
        return b
    later = b.timestamp > a.timestamp or (
        b.timestamp == a.timestamp
        and (b.final or (not a.final and (b.step is None or a.step is None or b.step >= a.step)))
    )
    if not later:
        return a
    return fill(b, to_progress(a)) if b.partial else b


# ---------------------------------------------------------------- authorization


def identity_of(review: Mapping[str, Any], audience: str) -> Identity:
    """The sender from a TokenReview's status: an authenticated ServiceAccount token for `audience`.
    Anything else is 401 (an unknown, expired or foreign-audience token is no identity)."""
    if review.get("authenticated") is not True:
        raise Denied(401, "token not authenticated")
    audiences = review.get("audiences")
    if not isinstance(audiences, list) or audience not in audiences:
        raise Denied(401, f"token is not for audience {audience!r}")
    user = review.get("user") or {}
    username = user.get("username") if isinstance(user, Mapping) else None
    if not isinstance(username, str) or not username.startswith(SA_USER_PREFIX):
        raise Denied(401, "not a ServiceAccount token")
    parts = username[len(SA_USER_PREFIX) :].split(":")
    if len(parts) != 2 or not all(parts):
        raise Denied(401, "malformed ServiceAccount user name")
    extra = user.get("extra") or {}

    def one(key: str) -> str | None:
        values = extra.get(key) if isinstance(extra, Mapping) else None
        return values[0] if isinstance(values, list) and len(values) == 1 and values[0] else None

    return Identity(parts[0], parts[1], one(POD_NAME_EXTRA), one(POD_UID_EXTRA))


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def check_identity(identity: Identity, report: Report) -> None:
    """What can be refused (403) before reading any object: a token not bound to a pod, or from a
    ServiceAccount of another namespace."""
    if identity.pod_name is None:
        raise Denied(403, "token is not bound to a pod")
    if identity.namespace != report.job_namespace:
        raise Denied(403, "token is from another namespace")


def authorize(
    identity: Identity,
    report: Report,
    pod: Mapping[str, Any] | None,
    job: Mapping[str, Any] | None,
    axj: Mapping[str, Any] | None,
) -> None:
    """Raise Denied(403) unless the token is bound to a live pod with every mark of this AxolotlJob's
    Job's pods (see the module docstring for the marks, and for what a namespace user can still forge).
    A token of any other pod (another job's, or any pod of the namespace) cannot move this job's status."""
    check_identity(identity, report)
    if pod is None:
        raise Denied(403, "the token's pod does not exist")
    meta = _meta(pod)
    if meta.get("namespace") != report.job_namespace or meta.get("name") != identity.pod_name:
        raise Denied(403, "the token's pod is not in the job's namespace")
    if identity.pod_uid is not None and meta.get("uid") != identity.pod_uid:
        raise Denied(403, "the token's pod was replaced")
    if (pod.get("status") or {}).get("phase") in FINISHED_POD_PHASES:
        raise Denied(403, "the token's pod has finished")
    account = (pod.get("spec") or {}).get("serviceAccountName") or "default"
    if account != identity.service_account:
        raise Denied(403, "the pod runs as another ServiceAccount")
    labels = meta.get("labels") or {}
    if labels.get(JOB_LABEL) != report.job_name:
        raise Denied(403, f"the pod is not labelled {JOB_LABEL}={report.job_name}")
    if axj is None or _meta(axj).get("name") != report.job_name:
        raise Denied(403, "no such AxolotlJob")
    if job is None or not controlled_by(job, str(_meta(axj).get("uid") or "")):
        raise Denied(403, "the AxolotlJob has no training Job")
    job_uid = str(_meta(job).get("uid") or "")
    if not controlled_by(pod, job_uid):
        raise Denied(403, "the pod is not controlled by the AxolotlJob's Job")
    if not job_uid or labels.get(CONTROLLER_UID_LABEL) != job_uid:
        raise Denied(403, f"the pod is not labelled {CONTROLLER_UID_LABEL}=<the Job's uid>")
    template = (job.get("spec") or {}).get("template") or {}
    missing = sorted(k for k, v in (_meta(template).get("labels") or {}).items() if labels.get(k) != v)
    if missing:
        raise Denied(403, f"the pod lacks the Job's pod template label {missing[0]}")
    if account != ((template.get("spec") or {}).get("serviceAccountName") or "default"):
        raise Denied(403, "the pod runs as another ServiceAccount than the Job's pod template")
    terminating = bool(meta.get("deletionTimestamp"))  # deleted by the Job controller, finalizer removed
    if JOB_TRACKING_FINALIZER not in (meta.get("finalizers") or []) and not terminating:
        raise Denied(403, f"the pod lacks the Job controller's finalizer {JOB_TRACKING_FINALIZER}")


# ---------------------------------------------------------------- rate limit


@dataclass(frozen=True)
class Bucket:
    """A token bucket's state: `tokens` left at (monotonic) time `at`."""

    tokens: float
    at: float


def take(bucket: Bucket | None, now: float, rate: float, burst: float) -> tuple[Bucket, float]:
    """One request against a token bucket refilled at `rate` per second up to `burst` (a new sender
    starts full): the bucket after it, and 0 if the request may pass, else the seconds until one may
    (the Retry-After). A refused request takes nothing, so waiting that long is enough."""
    tokens = burst if bucket is None else min(burst, bucket.tokens + max(0.0, now - bucket.at) * rate)
    if tokens >= 1:
        return Bucket(tokens - 1, now), 0.0
    return Bucket(tokens, now), (1 - tokens) / rate


def bearer_token(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header (bounded: a JWT, not a novel)."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 8192 or any(c.isspace() for c in token):
        return None
    return token
