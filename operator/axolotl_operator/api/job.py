"""The AxolotlJob resource: Kubernetes-side fields (camelCase) around the Axolotl config (snake_case)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from .config import AxolotlConfig
from .kube_values import Argument, DnsSubdomain, EnvName, Image, LabelKey, LabelValue, Quantity, SecretKey

GROUP = "axolotl.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "AxolotlJob"
PLURAL = "axolotljobs"
SINGULAR = "axolotljob"
SHORT_NAMES = ("axj",)
CATEGORIES = ("axolotl",)
# Leaves room for the suffixes of child names and for the Job's pod names (<name>-<index>-xxxxx <= 63).
MAX_NAME_LENGTH = 50
INT32_MAX = 2**31 - 1  # the Job's counters and durations are int32 in the API
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

# JupyterLab reads its token from this variable; the notebook's tokenSecret becomes it.
NOTEBOOK_TOKEN_ENV = "JUPYTER_TOKEN"

AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]


class KubeModel(BaseModel):
    """camelCase on the wire, strict about unknown Kubernetes fields (typos are errors, not no-ops)."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", allow_inf_nan=False
    )


def field(description: str, default: Any = None, **constraints: Any) -> Any:
    return Field(default=default, description=description, **constraints)


class SecretKeyRef(KubeModel):
    """A key of a Secret in the job's namespace."""

    name: DnsSubdomain = Field(description="Secret name.")
    key: SecretKey = Field(description="Key within the Secret.")


class JobSecrets(KubeModel):
    """References to Secrets; their values never enter the spec, the config or the status."""

    hf_token: SecretKeyRef | None = field(
        "Hugging Face token, injected as HF_TOKEN (gated models, Hub push)."
    )
    wandb_api_key: SecretKeyRef | None = field("Weights & Biases API key, injected as WANDB_API_KEY.")


class Storage(KubeModel):
    """The volume mounted at /workspace/data: datasets, caches, checkpoints and outputs."""

    size: Quantity | None = field("Size of the claim the operator creates; default from operator settings.")
    existing_claim: DnsSubdomain | None = field(
        "Use this existing PersistentVolumeClaim instead of creating one; never deleted by the operator."
    )
    storage_class_name: DnsSubdomain | None = field(
        "StorageClass of the created claim; default: the cluster default."
    )
    access_modes: list[AccessMode] | None = field(
        "Access modes of the created claim; default ReadWriteOnce (ReadWriteMany for multi-node jobs).",
        min_length=1,
    )


class Cache(KubeModel):
    """A claim shared by many jobs at /workspace/cache: Hugging Face's cache (HF_HOME) and Axolotl's
    prepared datasets, so a base model is downloaded and a dataset tokenized once. Never deleted by the
    operator; concurrent jobs share it safely through Hugging Face's and Axolotl's file locks."""

    enabled: bool | None = field(
        "false: no shared cache for this job (HF_HOME on the job's own volume), even if the operator has "
        "a default cache claim."
    )
    claim_name: DnsSubdomain | None = field(
        "An existing PersistentVolumeClaim in the job's namespace (ReadWriteMany, so pods on any node "
        "share it); default the operator's cache claim (chart value cache.claimName)."
    )

    @model_validator(mode="after")
    def _claim_or_off(self) -> Cache:
        if self.enabled is False and self.claim_name is not None:
            raise ValueError("set claimName or enabled: false, not both")
        return self


class ResourceRequirements(KubeModel):
    """Extra CPU/memory for the trainer container; GPUs come from spec.gpus."""

    requests: dict[str, Quantity] | None = field("Minimum resources, e.g. {cpu: 8, memory: 64Gi}.")
    limits: dict[str, Quantity] | None = field("Maximum resources, e.g. {memory: 128Gi}.")


class EnvVar(KubeModel):
    """An extra environment variable for the trainer container (WANDB_PROJECT, NCCL_DEBUG, ...)."""

    name: EnvName = Field(description="Variable name.")
    value: str | None = field("Literal value. Use valueFrom.secretKeyRef (or spec.secrets) for secrets.")
    value_from: dict[str, Any] | None = field("Source of the value, as in a Pod's env[].valueFrom.")

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("set value or valueFrom, not both")
        return self


class LocalObjectReference(KubeModel):
    name: DnsSubdomain = Field(description="Name of the referenced object.")


class PodMetadata(KubeModel):
    """Labels and annotations added to the training pods."""

    labels: dict[LabelKey, LabelValue] | None = field("Labels added to the training pods.")
    annotations: dict[LabelKey, str] | None = field("Annotations added to the training pods.")


class Notebook(KubeModel):
    """JupyterLab next to the job, on its volume: look at the data, the checkpoints and the adapter."""

    enabled: bool = field("Run the notebook; false deletes it (never the claim).", False)
    token_secret: SecretKeyRef | None = field(
        "Secret key holding JupyterLab's token (JUPYTER_TOKEN); required when enabled, never inline."
    )
    image: Image | None = field("Notebook image; default the job's trainer image (it has JupyterLab).")
    gpus: int = field("GPUs for the notebook; default 0 (CPU only).", default=0, ge=0, le=64)
    resources: ResourceRequirements | None = field("CPU and memory requests and limits of the notebook.")
    node_selector: dict[LabelKey, LabelValue] | None = field(
        "Node labels the notebook pod must match (the training pods' are not copied: a CPU notebook "
        "need not take a GPU node). With a ReadWriteOnce claim it follows the training pod while that runs."
    )


class AxolotlJobSpec(KubeModel):
    """What to train and where: the Axolotl config plus the Kubernetes settings of its pods."""

    image: Image | None = field("Trainer image; default from operator settings.")
    command: list[Argument] | None = field(
        "Run this instead of axolotl-job-runner, e.g. a script of a custom image built on the Hugging Face "
        "Trainer: it reports live progress through transformers' KubeflowCallback (the operator sets its "
        "environment). Without the runner there is no Axolotl validation, termination summary or "
        "checkpoint on SIGTERM; the config is still at /src/config/config.yaml.",
        min_length=1,
        max_length=64,
    )
    args: list[Argument] | None = field("Arguments to spec.command.", max_length=256)
    gpus: int = field("GPUs per node; 0 runs on CPU only.", default=1, ge=0, le=64)
    gpu_memory: Quantity | None = field(
        "Memory of one GPU (e.g. 80Gi): the operator warns (GPUMemoryFits False) when its plan clearly "
        "exceeds it. Unset: the nodeSelector's nvidia.com/gpu.memory label (MiB), if any."
    )
    nodes: int = field("Nodes (pods) to train on; above 1 runs multi-node torchrun.", default=1, ge=1, le=256)
    resources: ResourceRequirements | None = field("Extra CPU and memory requests and limits.")
    storage: Storage | None = field("The persistent volume mounted at /workspace/data.")
    cache: Cache | None = field("The model and dataset cache shared across jobs, at /workspace/cache.")
    secrets: JobSecrets | None = field("Secrets injected as HF_TOKEN and WANDB_API_KEY.")
    env: list[EnvVar] | None = field("Extra environment variables for the trainer.")
    suspend: bool = field("Suspend the job: running pods stop; false resumes it.", default=False)
    queue_name: LabelValue | None = field("Kueue LocalQueue; the job waits suspended until Kueue admits it.")
    workload_priority_class_name: LabelValue | None = field(
        "Kueue WorkloadPriorityClass: the job's place in its queue (needs queueName)."
    )
    backoff_limit: int = field(
        "Pod retries before the job fails; retries resume from a checkpoint.", 3, ge=0, le=INT32_MAX
    )
    termination_grace_period_seconds: int = field(
        "Seconds a stopped training pod gets to save a checkpoint at its next step (preemption, "
        "eviction, suspend, drain) before it is killed.",
        300,
        ge=1,
        le=86400,
    )
    active_deadline_seconds: int | None = field(
        "Fail the job after this many seconds of running.", ge=1, le=INT32_MAX
    )
    ttl_seconds_after_finished: int | None = field(
        "Delete the finished Job (not the data) after N seconds.", ge=0, le=INT32_MAX
    )
    node_selector: dict[LabelKey, LabelValue] | None = field("Node labels the training pods must match.")
    tolerations: list[dict[str, Any]] | None = field("Tolerations of the training pods.")
    affinity: dict[str, Any] | None = field("Affinity of the training pods.")
    priority_class_name: DnsSubdomain | None = field("PriorityClass of the training pods.")
    service_account_name: DnsSubdomain | None = field("ServiceAccount of the training pods.")
    image_pull_secrets: list[LocalObjectReference] | None = field("Secrets to pull the trainer image.")
    pod_metadata: PodMetadata | None = field("Labels and annotations for the training pods.")
    notebook: Notebook | None = field("JupyterLab on the job's volume, reached by kubectl port-forward.")
    config: AxolotlConfig = Field(
        description="The Axolotl training config (snake_case, as in Axolotl's YAML); immutable."
    )


class ObjectMeta(BaseModel):
    """The part of metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_LABEL)
    namespace: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class AxolotlJob(BaseModel):
    """An AxolotlJob manifest."""

    model_config = ConfigDict(extra="allow")

    api_version: Literal["axolotl.ai/v1alpha1"] = Field(alias="apiVersion")
    kind: Literal["AxolotlJob"]
    metadata: ObjectMeta
    spec: AxolotlJobSpec
