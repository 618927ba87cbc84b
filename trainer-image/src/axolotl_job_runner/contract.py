"""The wire contracts between the trainer pod and the operator, defined once.

Why: the operator reads the termination summary from the container's terminated state and
receives progress POSTs; both sides must agree on field names (camelCase) and limits. This
module is stdlib-only so the operator (or anyone) can import or vendor it without Axolotl.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

# ---- exit codes of `axolotl-job-runner` (documented in trainer-image/README.md) ----
EXIT_SUCCEEDED = 0
EXIT_TRAINING_FAILED = 1  # Axolotl exited non-zero: retriable (Job backoffLimit applies)
EXIT_INTERNAL_ERROR = 70  # EX_SOFTWARE: the runner or the validator itself broke
EXIT_INVALID_CONFIG = 78  # EX_CONFIG: the config failed Axolotl's validator; never retry
EXIT_SIGNAL_BASE = 128  # 128 + N: stopped by signal N (143 = SIGTERM, e.g. preemption)

# ---- termination summary ----
TERMINATION_MESSAGE_MAX_BYTES = 4096  # Kubernetes truncates terminated.message at 4 KiB
OUTCOME_SUCCEEDED = "succeeded"
OUTCOME_FAILED = "failed"
OUTCOME_INVALID_CONFIG = "invalid_config"
OUTCOMES = (OUTCOME_SUCCEEDED, OUTCOME_FAILED, OUTCOME_INVALID_CONFIG)

# ---- progress reports ----
PROGRESS_MIN_INTERVAL_SECONDS = 5.0


def utc_now() -> str:
    """RFC 3339 UTC timestamp with second precision, as Kubernetes writes them."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _finite(value: Any) -> float | None:
    """A JSON-safe float (NaN/inf are not valid JSON), or None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ProgressReport:
    """One progress sample from rank 0, POSTed as camelCase JSON to `$AXOLOTL_PROGRESS_URL`."""

    step: int
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    job_name: str = ""
    job_namespace: str = ""
    timestamp: str = ""
    final: bool = False

    def to_payload(self) -> dict[str, Any]:
        """The JSON body; keys are camelCase, numbers finite or null."""
        return {
            "jobName": self.job_name,
            "jobNamespace": self.job_namespace,
            "timestamp": self.timestamp or utc_now(),
            "step": int(self.step),
            "totalSteps": _int_or_none(self.total_steps),
            "epoch": _finite(self.epoch),
            "loss": _finite(self.loss),
            "learningRate": _finite(self.learning_rate),
            "gradNorm": _finite(self.grad_norm),
            "tokensPerSecond": _finite(self.tokens_per_second),
            "etaSeconds": _finite(self.eta_seconds),
            "final": bool(self.final),
        }

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> ProgressReport:
        """Tolerant parse of a payload (unknown keys ignored, bad numbers become None)."""
        return cls(
            step=_int_or_none(data.get("step")) or 0,
            total_steps=_int_or_none(data.get("totalSteps")),
            epoch=_finite(data.get("epoch")),
            loss=_finite(data.get("loss")),
            learning_rate=_finite(data.get("learningRate")),
            grad_norm=_finite(data.get("gradNorm")),
            tokens_per_second=_finite(data.get("tokensPerSecond")),
            eta_seconds=_finite(data.get("etaSeconds")),
            job_name=str(data.get("jobName") or ""),
            job_namespace=str(data.get("jobNamespace") or ""),
            timestamp=str(data.get("timestamp") or ""),
            final=bool(data.get("final", False)),
        )


@dataclass(frozen=True)
class SummaryError:
    """Why a run did not succeed; `key` names the offending config key when known."""

    message: str
    key: str | None = None


@dataclass(frozen=True)
class TerminationSummary:
    """The result written to `$AXOLOTL_TERMINATION_LOG` (<= 4 KiB JSON, camelCase)."""

    outcome: str
    exit_code: int
    runtime_seconds: float
    final_loss: float | None = None
    steps: int | None = None
    total_steps: int | None = None
    output_dir: str | None = None
    last_checkpoint: str | None = None
    resumed_from: str | None = None
    hub_model_id: str | None = None
    error: SummaryError | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """camelCase dict; None fields are omitted to save bytes."""
        raw = {
            "outcome": self.outcome,
            "exitCode": self.exit_code,
            "runtimeSeconds": round(self.runtime_seconds, 1),
            "finalLoss": _finite(self.final_loss),
            "steps": self.steps,
            "totalSteps": self.total_steps,
            "outputDir": self.output_dir,
            "lastCheckpoint": self.last_checkpoint,
            "resumedFrom": self.resumed_from,
            "hubModelId": self.hub_model_id,
            "error": {k: v for k, v in asdict(self.error).items() if v is not None} if self.error else None,
            **self.extra,
        }
        return {k: v for k, v in raw.items() if v is not None}

    def encode(self, limit: int = TERMINATION_MESSAGE_MAX_BYTES) -> bytes:
        """Compact JSON of at most `limit` bytes: the error message is cut first, then paths."""
        data = self.to_dict()
        text = _dumps(data)
        if len(text) <= limit:
            return text
        error = dict(data.get("error") or {})
        if error.get("message"):
            overflow = len(text) - limit
            message = error["message"].encode()
            keep = max(0, len(message) - overflow - 16)
            error["message"] = message[:keep].decode(errors="ignore") + "...[truncated]"
            data["error"] = error
            text = _dumps(data)
        for name in ("resumedFrom", "lastCheckpoint", "outputDir", "hubModelId"):
            if len(text) <= limit:
                break
            data.pop(name, None)
            text = _dumps(data)
        if len(text) > limit:  # only the extras can still be that large
            data = {k: data[k] for k in ("outcome", "exitCode", "runtimeSeconds") if k in data}
            text = _dumps(data)
        return text


def _dumps(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def parse_summary(text: str | bytes | None) -> dict[str, Any] | None:
    """Tolerant reader for the operator: a dict with a known `outcome`, or None."""
    if not text:
        return None
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("outcome") not in OUTCOMES:
        return None
    return data
