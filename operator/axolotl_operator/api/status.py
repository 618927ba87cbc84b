"""The AxolotlJob's status: its vocabulary (phases, condition types, reasons) and its typed model.

Why here, next to the spec: the status is API. Every phase, condition type and reason a user, an
alert or a GitOps health check can match on is an enum member below, so the operator never compares
free strings and the CRD's schema is generated from the same definitions.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import Field

from .job import KubeModel, field


class Phase(StrEnum):
    """Where the job is in its life."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class ConditionType(StrEnum):
    """metav1.Condition types, in the order they are listed. Ready/Stalled/Reconciling are the kstatus
    conventions, so Flux and Argo CD read a job's health correctly."""

    CREATED = "Created"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"
    READY = "Ready"
    STALLED = "Stalled"
    RECONCILING = "Reconciling"
    NOTEBOOK_READY = "NotebookReady"  # only while spec.notebook.enabled
    GPU_MEMORY_FITS = "GPUMemoryFits"  # only when the GPUs' memory is known (spec.gpuMemory or a node label)


class Reason(StrEnum):
    """Machine-readable reasons of status.reason, conditions and Events."""

    # Pending
    CREATING = "Creating"
    WAITING_FOR_CLEANUP = "WaitingForCleanup"
    QUEUED = "Queued"
    STARTING = "Starting"
    PREEMPTED = "Preempted"  # a pod stopped by SIGTERM saved a checkpoint; a new pod resumes from it
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_PULL_FAILED = "ImagePullFailed"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CONTAINER_ERROR = "ContainerError"
    CHILD_NAME_CONFLICT = "ChildNameConflict"  # an object the operator did not make has a child's name
    # Running / Suspended / Succeeded
    TRAINING = "Training"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    # Failed
    INVALID_SPEC = "InvalidSpec"
    INVALID_CONFIG = "InvalidConfig"
    CREATE_REJECTED = "CreateRejected"  # the API server refused a child (its message says which field)
    OOM_KILLED = "OOMKilled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    POD_FAILURE_POLICY = "PodFailurePolicy"
    JOB_FAILED = "JobFailed"  # any other reason the Job controller gives (named in the message)
    # Pod diagnoses (inside messages and retry notes)
    EVICTED = "Evicted"
    ERROR = "Error"
    # The Created condition
    JOB_CREATED = "JobCreated"
    JOB_DELETED = "JobDeleted"
    # Events only
    SPEC_WARNING = "SpecWarning"
    # The NotebookReady condition (with the pod diagnoses above, ChildNameConflict and CreateRejected)
    NOTEBOOK_RUNNING = "NotebookRunning"
    NOTEBOOK_STARTING = "NotebookStarting"
    WAITING_FOR_TRAINING_POD = "WaitingForTrainingPod"  # a ReadWriteOnce claim: on the training pod's node
    WAITING_FOR_CLAIM = "WaitingForClaim"  # a ReadWriteOncePod claim: after the training pod
    # The GPUMemoryFits condition (a warning: the job runs either way)
    PLAN_FITS = "PlanFits"
    GPU_MEMORY_TOO_SMALL = "GPUMemoryTooSmall"


class NotebookPlacement(StrEnum):
    """Where the notebook may run, given the claim's access modes and whether training runs now."""

    ANYWHERE = "Anywhere"  # a shared claim (ReadWriteMany/ReadOnlyMany), or no training pod running
    WITH_TRAINING_POD = "WithTrainingPod"  # ReadWriteOnce while training: pod affinity to its node
    AFTER_TRAINING = "AfterTraining"  # ReadWriteOncePod while training: scaled to 0 until it ends


# Pending reasons that need the user's attention: their transitions are Warning Events.
PROBLEM_REASONS = frozenset(
    {
        Reason.UNSCHEDULABLE,
        Reason.IMAGE_PULL_FAILED,
        Reason.CREATE_CONTAINER_CONFIG_ERROR,
        Reason.CONTAINER_ERROR,
        Reason.CHILD_NAME_CONFLICT,
    }
)

# Server-side-apply field managers: the operator owns the status except `progress`, which belongs to
# the trainer's reports (and their final numbers); the API server enforces the split.
STATUS_FIELD_MANAGER = "axolotl-operator"
PROGRESS_FIELD_MANAGER = "axolotl-operator-progress"


class Condition(KubeModel):
    """A metav1.Condition."""

    type: str = Field(
        description="Created, Running, Succeeded, Failed, Suspended, Ready (succeeded), Stalled (failed) "
        "or Reconciling (pending or running)."
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(description="CamelCase reason for the last transition.")
    message: str = Field(description="What happened and what to do about it.")
    last_transition_time: str = Field(description="When the status last changed (RFC 3339).")
    observed_generation: int | None = field("The spec generation this condition was computed for.")


class Progress(KubeModel):
    """Live training progress reported by the trainer."""

    step: int | None = field("Optimizer steps done.")
    total_steps: int | None = field("Optimizer steps planned.")
    percent: int | None = field("Progress in percent.")
    epoch: float | None = field("Epochs done, fractional.")
    loss: float | None = field("Latest training loss.")
    loss_non_finite: bool | None = field(
        "True when the latest loss was NaN or infinite (the run diverged); loss is then absent."
    )
    learning_rate: float | None = field("Current learning rate.")
    grad_norm: float | None = field("Latest gradient norm.")
    tokens_per_second: float | None = field("Training throughput in tokens per second.")
    eta_seconds: int | None = field("Estimated seconds until training ends.")
    updated_at: str | None = field("When the trainer last reported (RFC 3339).")
    resumed_from_step: int | None = field("The step of the checkpoint this run started from.")
    checkpoint_step: int | None = field(
        "Stopped by SIGTERM (preemption, eviction, suspend): the step of the checkpoint saved first."
    )


class Outputs(KubeModel):
    """Where the result is (paths are on the job's volume, mounted at /workspace/data)."""

    result: str | None = field(
        "Where to fetch the trained model: the Hub page when pushed, else the full weights, else the adapter."
    )
    output_dir: str | None = field("Output directory on the job's volume.")
    adapter_path: str | None = field("Directory of the trained adapter (LoRA/QLoRA).")
    model_path: str | None = field("Directory of full weights: a full fine-tune or the merged model.")
    last_checkpoint: str | None = field("The newest checkpoint the trainer wrote.")
    hub_model_id: str | None = field("Hub repository the result is pushed to.")
    hub_url: str | None = field("The Hub repository's page; set once the final push went through.")
    wandb_url: str | None = field("The Weights & Biases run's page, when W&B is on.")


class NotebookStatus(KubeModel):
    """How to reach the job's JupyterLab."""

    service_name: str = Field(description="ClusterIP Service of the notebook (port 8888).")
    ready: bool = Field(description="Whether JupyterLab answers (its pod is ready).")
    placement: NotebookPlacement = Field(
        description="Anywhere, WithTrainingPod (a ReadWriteOnce claim while training runs) or "
        "AfterTraining (a ReadWriteOncePod claim: the notebook starts when training ends)."
    )
    port_forward: str = Field(description="The command that makes it reachable at http://127.0.0.1:8888/lab.")
    message: str | None = field("Why the notebook is not ready, and what to do.")


# A map list keyed by `type`: server-side apply merges conditions per type instead of replacing them.
CONDITIONS_LIST_MAP = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}


class AxolotlJobStatus(KubeModel):
    """The observed state of the job; never written by users."""

    phase: Phase | None = field("Pending, Running, Succeeded, Failed or Suspended.")
    observed_generation: int | None = field("The spec generation the status reflects.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Created, Running, Succeeded, Failed, Suspended, Ready, Stalled, Reconciling "
        "(and NotebookReady with spec.notebook).",
        json_schema_extra=CONDITIONS_LIST_MAP,
    )
    progress: Progress | None = field("Live training progress.")
    attempts: int | None = field("Pods started so far (1 + retries).")
    start_time: str | None = field("When the training Job started (RFC 3339).")
    completion_time: str | None = field("When the job finished (RFC 3339).")
    message: str | None = field("Human-readable summary of the current state.")
    # A string in the schema (a Reason member in the code): new reasons need no CRD change.
    reason: str | None = field("Machine-readable reason of the current phase.")
    job_name: str | None = field("Name of the batch/v1 Job.")
    config_map_name: str | None = field("Name of the ConfigMap holding the rendered config.")
    claim_name: str | None = field("Name of the PersistentVolumeClaim mounted at /workspace/data.")
    outputs: Outputs | None = field("Where the result is.")
    notebook: NotebookStatus | None = field("The job's JupyterLab (spec.notebook), and how to reach it.")

    def owned(self) -> dict[str, Any]:
        """The operator's part of the status as JSON (everything but `progress`), None fields absent."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"progress"})


# Status keys the operator's field manager owns (all but `progress`), in the model's order.
OWNED_STATUS_KEYS = tuple(
    info.alias or name for name, info in AxolotlJobStatus.model_fields.items() if name != "progress"
)
PROGRESS_KEYS = tuple(info.alias or name for name, info in Progress.model_fields.items())
