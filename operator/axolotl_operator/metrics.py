"""Prometheus metrics of the operator: jobs by phase, each job's phase, transitions, errors, progress.

Phases and progress are set from the AxolotlJobs' own status as the watch stream delivers it, so the
numbers agree with `kubectl get axj` and survive an operator restart without bookkeeping.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections import Counter as Tally
from collections.abc import Mapping
from typing import Any

from prometheus_client import Counter, Gauge, start_http_server

from .api.status import Phase

JOBS = Gauge("axolotl_operator_jobs", "AxolotlJobs by phase (Unknown: no status yet).", ["phase"])
JOB_PHASE = Gauge(
    "axolotl_operator_job_phase",
    "Each AxolotlJob's phase and reason: 1, one series per job (its current phase and reason only).",
    ["namespace", "name", "phase", "reason"],
)
TRANSITIONS = Counter(
    "axolotl_operator_transitions_total",
    "Status transitions written, by new phase and reason.",
    ["phase", "reason"],
)
RECONCILE_ERRORS = Counter(
    "axolotl_operator_reconcile_errors_total", "Failed reconciles or status refreshes, by step.", ["step"]
)
PROGRESS = {
    "percent": Gauge(
        "axolotl_operator_job_progress_percent", "Training progress in percent.", ["namespace", "name"]
    ),
    "step": Gauge("axolotl_operator_job_step", "Optimizer steps done.", ["namespace", "name"]),
    "totalSteps": Gauge(
        "axolotl_operator_job_total_steps", "Optimizer steps planned.", ["namespace", "name"]
    ),
    "loss": Gauge(
        "axolotl_operator_job_loss", "Latest training loss (NaN when it diverged).", ["namespace", "name"]
    ),
    "etaSeconds": Gauge("axolotl_operator_job_eta_seconds", "Estimated seconds left.", ["namespace", "name"]),
}
PROGRESS_REPORTS = Counter(
    "axolotl_operator_progress_reports_total",
    "Progress reports received from trainer pods, by HTTP status answered.",
    ["code"],
)

_lock = threading.Lock()
_phases: dict[tuple[str, str], str] = {}
_tally: Tally[str] = Tally()  # jobs per phase, kept in step with _phases (an event costs O(1), not O(jobs))
_job_phase: dict[tuple[str, str], tuple[str, str]] = {}  # the (phase, reason) of each job's JOB_PHASE series


def serve(port: int) -> None:
    """Expose /metrics on all interfaces (a Pod's port); 0 disables."""
    if port:
        start_http_server(port)


def _count(key: tuple[str, str], phase: str | None) -> None:
    """Move the job to `phase` (None: gone) in the per-phase gauge; under `_lock`."""
    previous = _phases.pop(key, None) if phase is None else _phases.get(key)
    if previous == phase:
        return
    if phase is not None:
        _phases[key] = phase
        _tally[phase] += 1
        JOBS.labels(phase).set(_tally[phase])
    if previous is not None:
        _tally[previous] -= 1
        JOBS.labels(previous).set(_tally[previous])


def _publish_zeros() -> None:
    for phase in (*Phase, "Unknown"):
        JOBS.labels(phase).set(_tally.get(phase, 0))


_publish_zeros()  # every phase has a series from the start, 0 until a job is in it


def observe_job(namespace: str, name: str, status: Mapping[str, Any] | None) -> None:
    """Record the phase and progress of one AxolotlJob as last seen."""
    status = status or {}
    key = (namespace, name)
    phase = status.get("phase") or "Unknown"
    current = (phase, status.get("reason") or "")
    with _lock:
        _count(key, phase)
        previous = _job_phase.get(key)
        if previous != current:
            if previous is not None:
                JOB_PHASE.remove(namespace, name, *previous)
            JOB_PHASE.labels(namespace, name, *current).set(1)
            _job_phase[key] = current
    observe_progress(namespace, name, status.get("progress") or {})


def observe_progress(namespace: str, name: str, progress: Mapping[str, Any]) -> None:
    """Record a live progress report just written to the AxolotlJob's status."""
    for key, gauge in PROGRESS.items():
        value = progress.get(key)
        if key == "loss" and progress.get("lossNonFinite") is True:
            value = math.nan  # a diverged run: the AxolotlJobLossNaN alert's `loss != loss`
        if isinstance(value, int | float):
            gauge.labels(namespace, name).set(value)


def progress_report(code: int) -> None:
    PROGRESS_REPORTS.labels(str(code)).inc()


def forget_job(namespace: str, name: str) -> None:
    """The AxolotlJob is gone: drop its series."""
    with _lock:
        _count((namespace, name), None)
        previous = _job_phase.pop((namespace, name), None)
        if previous is not None:
            JOB_PHASE.remove(namespace, name, *previous)
    for gauge in PROGRESS.values():
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, name)


def transition(phase: str, reason: str) -> None:
    TRANSITIONS.labels(phase, reason).inc()


def reconcile_error(step: str) -> None:
    RECONCILE_ERRORS.labels(step).inc()
