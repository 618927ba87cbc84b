"""The Kopf handlers, all in one place and thin: each hands its object to the Operator in Kopf's memo.

- create, resume and update of an AxolotlJob reconcile its children (`Operator.reconcile`).
- Job and pod events (filtered by the `axolotl.ai/job` label) and AxolotlJob events only enqueue the
  job's key: the status queue does the work and retries it, so a failed write is never lost (Kopf does
  not retry event handlers).
- The validating admission handler (`admit`) is registered only when the webhook is on (`--webhook-port`):
  Kopf refuses to start with admission handlers but no webhook server.
- No timers, daemons or deletion handlers, so Kopf puts no finalizer on AxolotlJobs and deletion never
  waits for the operator. Handlers return None: Kopf writes nothing into .status (whose schema is ours).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf

from . import admission, metrics
from .api.job import GROUP, PLURAL, VERSION
from .constants import JOB_LABEL
from .controller import RETRY_DELAY, Operator
from .kube import ApiError

log = logging.getLogger("axolotl_operator")


def _operator(memo: kopf.Memo) -> Operator:
    operator = getattr(memo, "operator", None)
    if not isinstance(operator, Operator):
        raise kopf.PermanentError("the operator is not configured (kopf.run without memo.operator)")
    return operator


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=RETRY_DELAY)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=RETRY_DELAY)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec", backoff=RETRY_DELAY)
def reconcile(body: kopf.Body, namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    try:
        _operator(memo).reconcile(body, namespace, name)
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
def job_changed(namespace: str, labels: Mapping[str, str], memo: kopf.Memo, **_: Any) -> None:
    _operator(memo).enqueue(namespace, labels[JOB_LABEL])


@kopf.on.event("v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
def pod_changed(namespace: str, labels: Mapping[str, str], memo: kopf.Memo, **_: Any) -> None:
    _operator(memo).enqueue(namespace, labels[JOB_LABEL])


@kopf.on.event(GROUP, VERSION, PLURAL)
def axolotljob_seen(event: Mapping[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    operator = _operator(memo)
    obj = event.get("object") or {}
    uid = (obj.get("metadata") or {}).get("uid")
    if event.get("type") == "DELETED":
        metrics.forget_job(namespace, name)
        operator.forget(namespace, name, uid)
        return
    status = obj.get("status") or {}
    metrics.observe_job(namespace, name, status)
    operator.seen(namespace, name, status.get("phase"), uid)
    if not status.get("phase"):
        operator.enqueue(namespace, name)  # never written yet (e.g. created while the operator was down)


def admit(body: kopf.Body, old: kopf.Body | None, operation: str, warnings: list[str], **_: Any) -> None:
    """Deny an invalid AxolotlJob at `kubectl apply` time; warn about translations and unknown keys."""
    verdict = admission.review(operation, body, old)
    warnings.extend(verdict.warnings)
    if not verdict.allowed:
        raise kopf.AdmissionError(verdict.message, code=422)


def register_admission(registry: kopf.OperatorRegistry | None = None) -> None:
    kopf.on.validate(
        GROUP,
        VERSION,
        PLURAL,
        id=admission.HANDLER_ID,
        operations=list(admission.OPERATIONS),
        registry=registry,
    )(admit)
