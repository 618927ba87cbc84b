"""Names, labels and annotations the operator puts on (and finds) its children, defined once.

What the trainer container sees (paths, ports, environment, exit codes) is the trainer contract
(`trainer_contract`); the status vocabulary is API (`api.status`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .api.job import GROUP

COMPONENT = "axolotl-operator"  # Events' reporting component, app.kubernetes.io/managed-by
CONTAINER_NAME = "trainer"
RUNNER_COMMAND = ("axolotl-job-runner",)

JOB_LABEL = f"{GROUP}/job"  # on every child and training pod: which AxolotlJob it belongs to
RETAIN_ANNOTATION = f"{GROUP}/retain"  # on the claim: outlives the AxolotlJob
OWNER_UID_ANNOTATION = f"{GROUP}/owner-uid"  # on every child: the uid of the AxolotlJob that made it
CLAIM_UID_ANNOTATION = f"{GROUP}/claim-uid"  # on the AxolotlJob: the uid of the claim made for it
CLAIM_PENDING = "pending-since="  # its value just before the claim is created (then a timestamp)
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"  # Kueue's WorkloadPriorityClass of the Job
CONTROLLER_UID_LABEL = "batch.kubernetes.io/controller-uid"  # the Job controller's label on its pods
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
NOTEBOOK_SPEC_ANNOTATION = f"{GROUP}/notebook-spec"  # on the notebook's Deployment: a hash of its spec


@dataclass(frozen=True)
class Names:
    """Deterministic child names, so a restarted operator finds (never duplicates) what it made."""

    job: str
    config_map: str
    claim: str
    service: str
    notebook: str  # the notebook's Deployment and Service

    @classmethod
    def of(cls, job_name: str) -> Names:
        return cls(
            job=job_name,
            config_map=f"{job_name}-config",
            claim=f"{job_name}-data",
            service=job_name,
            notebook=f"{job_name}-notebook",
        )


def labels(name: str, component: str) -> dict[str, str]:
    """The labels of every child of AxolotlJob `name` (and of its pods)."""
    return {
        "app.kubernetes.io/name": "axolotl-job",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/managed-by": COMPONENT,
        JOB_LABEL: name,
    }
