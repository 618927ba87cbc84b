"""What the validating webhook answers for an AxolotlJob, and the webhook configuration that routes to it.

The verdict comes from `parse_job`, the function behind `axolotl-operator validate` and the operator's own
reconcile, so `kubectl apply`, the CLI and the cluster can never disagree. Errors deny the request, each
naming its field and fix; translations and unknown keys come back as warnings (`kubectl apply` prints
them as `Warning: ...`). An update is judged only on what it changes: a spec stored before the webhook
existed (or while it was set to Ignore) still accepts a suspend, and metadata-only writes (labels, Kopf's
annotations) pass untouched. `spec.config` itself is immutable through the CRD's CEL rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .api.issues import FieldIssue, SpecError
from .api.job import GROUP, PLURAL, VERSION
from .api.validate import parse_job

LOCAL_CONFIGURATION = "axolotl-operator-local"  # local runs; never the chart's name, so never its object
WEBHOOK_NAME = f"validate.{PLURAL}.{GROUP}"  # the webhook entry's name: shown in the API server's errors
HANDLER_ID = "validate-axolotljob"  # Kopf serves each handler at /<id>
WEBHOOK_PATH = f"/{HANDLER_ID}"
OPERATIONS = ("CREATE", "UPDATE")
TIMEOUT_SECONDS = 10  # parse_job takes milliseconds; a stuck webhook must not hold kubectl for 30 s
FAILURE_POLICIES = ("Fail", "Ignore")
# The API server keeps warnings short (about 4 KiB in all): a few clear ones beat a truncated list.
MAX_WARNINGS = 10
MAX_WARNING_CHARS = 256
MAX_MESSAGE_CHARS = 4000


@dataclass(frozen=True)
class Verdict:
    errors: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def allowed(self) -> bool:
        return not self.errors

    @property
    def message(self) -> str:
        """The denial as one line per field; `kubectl apply` prints it after 'denied the request:'."""
        problems = f"{len(self.errors)} problem{'s' if len(self.errors) != 1 else ''}"
        head = f"the AxolotlJob spec is invalid ({problems}); fix and apply again:"
        text = "\n".join([head, *(f"  {error}" for error in self.errors)])
        return text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 4] + " ..."


def review(operation: str, new: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> Verdict:
    """The verdict on one admission request (operation CREATE or UPDATE; anything else passes)."""
    if operation not in OPERATIONS or new is None:
        return Verdict()
    if operation == "UPDATE" and old is not None and old.get("spec") == new.get("spec"):
        return Verdict()  # labels, annotations, finalizers: the spec was judged when it was written
    errors, warnings = _findings(new)
    if operation == "UPDATE" and old is not None:
        old_errors, old_warnings = _findings(old)
        errors = [e for e in errors if e not in old_errors]  # judge only what this update introduces
        warnings = [w for w in warnings if w not in old_warnings]
    return Verdict(tuple(map(str, errors)), _capped(warnings))


def _findings(manifest: Mapping[str, Any]) -> tuple[list[FieldIssue], list[FieldIssue]]:
    try:
        parsed = parse_job(manifest)
    except SpecError as exc:
        return list(exc.errors), list(exc.warnings)
    return [], list(parsed.warnings)


def _capped(warnings: list[FieldIssue]) -> tuple[str, ...]:
    shown = [_clip(str(w), MAX_WARNING_CHARS) for w in warnings[:MAX_WARNINGS]]
    if len(warnings) > MAX_WARNINGS:
        shown.append(
            f"... and {len(warnings) - MAX_WARNINGS} more: run `axolotl-operator validate` on the file"
        )
    return tuple(shown)


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())  # one line: the API server refuses control characters in warnings
    return text if len(text) <= limit else text[: limit - 3] + "..."


def webhook_configuration(
    name: str,
    client_config: Mapping[str, Any],
    failure_policy: str = "Fail",
    namespaces: tuple[str, ...] = (),
    labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The ValidatingWebhookConfiguration for AxolotlJobs (the chart templates the same entry, which
    tests/unit/test_chart.py compares with this)."""
    if failure_policy not in FAILURE_POLICIES:
        raise ValueError(
            f"failure policy must be one of {', '.join(FAILURE_POLICIES)}, got {failure_policy!r}"
        )
    webhook: dict[str, Any] = {
        "name": WEBHOOK_NAME,
        "admissionReviewVersions": ["v1"],
        "clientConfig": dict(client_config),
        "failurePolicy": failure_policy,
        "matchPolicy": "Equivalent",
        "rules": [
            {
                "apiGroups": [GROUP],
                "apiVersions": [VERSION],
                "operations": list(OPERATIONS),
                "resources": [PLURAL],  # not axolotljobs/status: the operator's own status writes
                "scope": "Namespaced",
            }
        ],
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
    }
    if namespaces:
        webhook["namespaceSelector"] = {
            "matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": sorted(namespaces)}
            ]
        }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": dict(labels or {})},
        "webhooks": [webhook],
    }
