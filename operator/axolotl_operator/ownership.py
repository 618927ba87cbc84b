"""Whose is an object that already has a child's name? Pure: decides before the operator touches it.

Why: a name is not proof. Anyone who can create ConfigMaps, Jobs or claims in the namespace could plant
`<job>-config` or `<job>-data` before the job exists; adopting it would let the victim's pod train on the
planted config with the victim's tokens, and deleting the job would delete the planted object. Labels and
annotations prove nothing either (anyone who can read the AxolotlJob's uid can write them). So the
operator uses only what it provably made for this AxolotlJob: an object it controls (the owner reference
is set at creation), or the claim whose uid it recorded on the AxolotlJob when it created it (see
`controller`). It waits for what a deleted AxolotlJob of the same name still controls (the garbage
collector removes it) and leaves everything else alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

from .api.job import API_VERSION, KIND
from .constants import COMPONENT, JOB_LABEL, OWNER_UID_ANNOTATION


class Ownership(Enum):
    OURS = "ours"  # controlled by this AxolotlJob
    NAMESAKE = "namesake"  # controlled by a deleted AxolotlJob of the same name: wait for the GC
    FOREIGN = "foreign"  # anything else: never touched


def controller_of(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return next((ref for ref in refs if ref.get("controller")), None)


def controlled_by(obj: Mapping[str, Any], uid: str) -> bool:
    controller = controller_of(obj)
    return controller is not None and controller.get("uid") == uid


TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # how Kubernetes writes creationTimestamp
# A claim the operator is about to create counts as its own if made no earlier than this before the
# moment it recorded the intent (clocks of the operator's node and the API server differ a little).
CLOCK_SKEW_SECONDS = 60


def made_for(obj: Mapping[str, Any], job_name: str, uid: str) -> bool:
    """Carries the labels and the owner-uid annotation the operator puts on this AxolotlJob's children
    (a hint, not a proof: anyone who can read the AxolotlJob's uid can write them)."""
    meta = obj.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    return (
        labels.get(JOB_LABEL) == job_name
        and labels.get("app.kubernetes.io/managed-by") == COMPONENT
        and annotations.get(OWNER_UID_ANNOTATION) == uid
    )


def ownership(existing: Mapping[str, Any], job_name: str, uid: str) -> Ownership:
    """How the operator may treat `existing`, found where AxolotlJob `job_name` (uid) wants a child."""
    controller = controller_of(existing)
    if controller is None:  # labels and annotations are anyone's to write (the uid is readable): no proof
        return Ownership.FOREIGN
    if controller.get("uid") == uid:
        return Ownership.OURS
    if (controller.get("apiVersion"), controller.get("kind"), controller.get("name")) == (
        API_VERSION,
        KIND,
        job_name,
    ):
        return Ownership.NAMESAKE
    return Ownership.FOREIGN


def describe(obj: Mapping[str, Any]) -> str:
    """`ConfigMap demo-config (controlled by Deployment web)` for a conflict message."""
    meta = obj.get("metadata") or {}
    controller = controller_of(obj)
    by = f"controlled by {controller.get('kind')} {controller.get('name')}" if controller else "not made by"
    by += "" if controller else " this AxolotlJob"
    return f"{obj.get('kind')} {meta.get('name')} ({by})"


def made_since(obj: Mapping[str, Any], moment: str) -> bool:
    """Created at or after `moment` (RFC 3339, second precision), allowing CLOCK_SKEW_SECONDS between
    the operator's clock and the API server's."""
    created = (obj.get("metadata") or {}).get("creationTimestamp")
    try:
        start = datetime.strptime(moment, TIME_FORMAT).replace(tzinfo=UTC)
        made = datetime.strptime(str(created), TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return False
    return made >= start - timedelta(seconds=CLOCK_SKEW_SECONDS)
