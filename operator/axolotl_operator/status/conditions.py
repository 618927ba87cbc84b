"""metav1.Conditions: which are True for an observation, and `set_condition`, which keeps
lastTransitionTime unless the condition's status changes (the Kubernetes convention)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..api.status import Condition, ConditionType, Phase, Reason
from .model import Observation


def set_condition(
    previous: Sequence[Mapping[str, Any]],
    type_: ConditionType,
    true: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> Condition:
    """The condition `type_` as it should be now, given the stored conditions."""
    status = "True" if true else "False"
    old = next((c for c in previous if c.get("type") == type_), {})
    since = old.get("lastTransitionTime") if old.get("status") == status else None
    return Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since or now,
        observed_generation=generation,
    )


def conditions_for(
    previous: Sequence[Mapping[str, Any]],
    obs: Observation,
    created: tuple[bool, Reason, str],
    generation: int | None,
    now: str,
) -> list[Condition]:
    """Every condition type, in ConditionType order. A condition that mirrors the phase carries the
    phase's reason, and its message only while it is True."""

    def phase_is(*phases: Phase) -> tuple[bool, Reason, str]:
        true = obs.phase in phases
        return true, obs.reason, obs.message if true else ""

    truth = {
        ConditionType.CREATED: created,
        ConditionType.RUNNING: phase_is(Phase.RUNNING),
        ConditionType.SUCCEEDED: phase_is(Phase.SUCCEEDED),
        ConditionType.FAILED: phase_is(Phase.FAILED),
        ConditionType.SUSPENDED: phase_is(Phase.SUSPENDED),
        # Ready/Stalled are what Flux (kstatus) and Argo CD read: current only when succeeded.
        ConditionType.READY: (obs.phase == Phase.SUCCEEDED, obs.reason, obs.message),
        ConditionType.STALLED: phase_is(Phase.FAILED),
        # kstatus' InProgress signal.
        ConditionType.RECONCILING: (obs.phase in {Phase.PENDING, Phase.RUNNING}, obs.reason, ""),
    }
    return [
        set_condition(previous, type_, true, reason, message, generation, now)
        for type_, (true, reason, message) in truth.items()
    ]
