"""The Kopf handlers, all in one place and thin: each hands its object to the Operator in Kopf's memo.

- Every AxolotlJob event hands the job to the reconcile queue (`Operator.changed`), which reconciles each
  generation once (new, edited, or seen at start) and retries with backoff. No Kopf change handlers: they
  would keep a diff base per object, a deep copy per event and a PATCH per change (`NoDiffBase`).
- Index handlers keep the watch cache (`watch_cache`) current: Kopf runs them for each object before
  any other handler, and runs no other handler before every indexed kind is listed. They index nothing
  in Kopf (they return None); the cache is the operator's own, read by the status workers.
- Job and pod events (filtered by the `axolotl.ai/job` label) and AxolotlJob events only drop deleted
  objects from the cache and enqueue the job's key: the status queue does the work and retries it, so
  a failed write is never lost (Kopf does not retry event handlers). They are coroutines: a dict update
  and a queue push need no thread of Kopf's pool.
- The validating admission handler (`admit`) is registered only when the webhook is on (`--webhook-port`):
  Kopf refuses to start with admission handlers but no webhook server.
- No timers, daemons or deletion handlers, so Kopf puts no finalizer on AxolotlJobs and deletion never
  waits for the operator. Handlers return None: Kopf writes nothing into .status (whose schema is ours).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf

from . import admission, metrics
from .api.job import GROUP, PLURAL, VERSION
from .constants import JOB_LABEL
from .controller import Operator


def _operator(memo: kopf.Memo) -> Operator:
    operator = getattr(memo, "operator", None)
    if not isinstance(operator, Operator):
        raise kopf.PermanentError("the operator is not configured (kopf.run without memo.operator)")
    return operator


@kopf.index("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
async def job_index(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _operator(memo).cache.put_job(_plain(body))


@kopf.index("v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
async def pod_index(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _operator(memo).cache.put_pod(_plain(body))


@kopf.index(GROUP, VERSION, PLURAL)
async def axolotljob_index(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _operator(memo).cache.put_axolotljob(_plain(body))


@kopf.on.event("batch", "v1", "jobs", labels={JOB_LABEL: kopf.PRESENT})
@kopf.on.event("v1", "pods", labels={JOB_LABEL: kopf.PRESENT})
async def child_changed(
    event: Mapping[str, Any],
    resource: kopf.Resource,
    namespace: str,
    labels: Mapping[str, str],
    memo: kopf.Memo,
    **_: Any,
) -> None:
    operator = _operator(memo)
    operator.cache.mark_ready()
    if event.get("type") == "DELETED":
        drop = operator.cache.drop_job if resource.plural == "jobs" else operator.cache.drop_pod
        drop(event.get("object") or {})
    operator.enqueue(namespace, labels[JOB_LABEL])


@kopf.on.event(GROUP, VERSION, PLURAL)
async def axolotljob_seen(
    event: Mapping[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any
) -> None:
    operator = _operator(memo)
    operator.cache.mark_ready()
    obj = event.get("object") or {}
    uid = (obj.get("metadata") or {}).get("uid")
    if event.get("type") == "DELETED":
        operator.cache.drop_axolotljob(obj)
        metrics.forget_job(namespace, name)
        operator.forget(namespace, name, uid)
        return
    status = obj.get("status") or {}
    metrics.observe_job(namespace, name, status)
    operator.seen(namespace, name, status.get("phase"), uid)
    operator.changed(namespace, name, str(uid), int((obj.get("metadata") or {}).get("generation") or 0))
    if not status.get("phase"):
        operator.enqueue(namespace, name)  # never written yet (e.g. created while the operator was down)


def _plain(body: kopf.Body) -> dict[str, Any]:
    """Kopf's Body as the plain dict the watch delivered (top level copied, values shared)."""
    return {key: body[key] for key in body}


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
