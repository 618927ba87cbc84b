"""AxolotlJob -> the Kubernetes objects that run it. Pure: same input, same bytes.

The operator applies exactly what this returns and `axolotl-operator render` prints it, so a user can see
offline what the cluster will get.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .api.job import API_VERSION, KIND, AxolotlJob, AxolotlJobSpec, ResourceRequirements
from .api.validate import ParsedJob
from .constants import (
    COMPLETION_INDEX_ANNOTATION,
    CONTAINER_NAME,
    JOB_LABEL,
    OWNER_UID_ANNOTATION,
    PRIORITY_CLASS_LABEL,
    QUEUE_LABEL,
    RETAIN_ANNOTATION,
    RUNNER_COMMAND,
    Names,
    labels,
)
from .progress import kubeflow_url
from .settings import OperatorSettings
from .trainer_contract import (
    EXIT_INVALID_CONFIG,
    EXIT_PREEMPTED,
    METRICS_PORT,
    RENDEZVOUS_PORT,
    Env,
    Paths,
)
from .yamlio import dump

Manifest = dict[str, Any]

PROGRESS_TOKEN_SECONDS = 3600  # the projected token's lifetime; the kubelet rotates it before then


@dataclass(frozen=True)
class Children:
    """What one AxolotlJob needs. The claim is not owned: training output outlives the job."""

    config_map: Manifest
    job: Manifest
    claim: Manifest | None = None
    service: Manifest | None = None

    def manifests(self) -> list[Manifest]:
        """In apply order: config and volume before the pods that mount them."""
        return [m for m in (self.config_map, self.claim, self.service, self.job) if m is not None]


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Makes the AxolotlJob the controller of a child: deleting the job deletes the child."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def output_dir(job_name: str) -> str:
    return f"{Paths.DATA_MOUNT}/outputs/{job_name}"


def training_config(parsed: ParsedJob, settings: OperatorSettings) -> tuple[dict[str, Any], dict[str, str]]:
    """The config file Axolotl reads, plus extra files for the ConfigMap (an inline DeepSpeed config)."""
    config = dict(parsed.config)
    config.setdefault("output_dir", output_dir(parsed.name))
    prepared = (
        Paths.CACHE_PREPARED if cache_claim(parsed.job.spec, settings) else f"{Paths.DATA_MOUNT}/prepared"
    )
    config.setdefault("dataset_prepared_path", prepared)
    config.setdefault("auto_resume_from_checkpoints", True)
    files: dict[str, str] = {}
    if isinstance(config.get("deepspeed"), Mapping):
        files[Paths.DEEPSPEED_FILE] = json.dumps(config["deepspeed"], indent=2, sort_keys=True) + "\n"
        config["deepspeed"] = f"{Paths.CONFIG_DIR}/{Paths.DEEPSPEED_FILE}"
    return config, files


def render(
    parsed: ParsedJob,
    settings: OperatorSettings,
    namespace: str,
    owner: Mapping[str, Any] | None = None,
) -> Children:
    """Every child object of the job, with owner references when the live AxolotlJob is given."""
    job = parsed.job
    names = Names.of(parsed.name)
    owners = [owner_reference(owner)] if owner is not None else None
    config, extra_files = training_config(parsed, settings)

    def metadata(name: str, component: str, owned: bool = True) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": namespace,
            "labels": labels(parsed.name, component),
        }
        if owner is not None:  # which AxolotlJob made it: only such an object is ever adopted
            meta["annotations"] = {OWNER_UID_ANNOTATION: owner["metadata"]["uid"]}
        if owned and owners:
            meta["ownerReferences"] = owners
        return meta

    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(names.config_map, "config"),
        "data": {Paths.CONFIG_FILE: dump(config), **extra_files, **progress_ca_data(settings)},
    }
    claim = None if existing_claim(job) else _claim(job, settings, metadata(names.claim, "data", owned=False))
    service = _service(names, metadata(names.service, "rendezvous")) if job.spec.nodes > 1 else None
    batch_job = _job(parsed, settings, names, namespace, metadata(names.job, "training"))
    return Children(config_map=config_map, job=batch_job, claim=claim, service=service)


def existing_claim(job: AxolotlJob) -> str | None:
    """spec.storage.existingClaim: the user's claim, used as is and never deleted."""
    return job.spec.storage.existing_claim if job.spec.storage and job.spec.storage.existing_claim else None


def claim_access_modes(spec: AxolotlJobSpec) -> list[str]:
    """The access modes of the claim the operator creates: spec.storage's, else ReadWriteOnce
    (ReadWriteMany for a multi-node job, whose pods share it)."""
    if spec.storage and spec.storage.access_modes:
        return list(spec.storage.access_modes)
    return ["ReadWriteMany"] if spec.nodes > 1 else ["ReadWriteOnce"]


def cache_claim(spec: AxolotlJobSpec, settings: OperatorSettings) -> str | None:
    """The shared cache claim the job mounts at /workspace/cache: spec.cache's, else the operator's
    default, unless spec.cache.enabled is false."""
    if spec.cache and spec.cache.enabled is False:
        return None
    return (spec.cache.claim_name if spec.cache else None) or settings.cache_claim or None


def hf_home(cache: str | None) -> str:
    """Where Hugging Face caches models and datasets: the shared cache, else the job's own volume."""
    return Paths.CACHE_HF_HOME if cache else Paths.HF_HOME


def mounted_claim(parsed: ParsedJob) -> str:
    """The claim the job's pods mount at /workspace/data: the existing one, or `<name>-data`."""
    return existing_claim(parsed.job) or Names.of(parsed.name).claim


def _claim(job: AxolotlJob, settings: OperatorSettings, metadata: dict[str, Any]) -> Manifest:
    storage = job.spec.storage
    spec: dict[str, Any] = {
        "accessModes": claim_access_modes(job.spec),
        "resources": {
            "requests": {
                "storage": str(storage.size if storage and storage.size else settings.default_storage_size)
            }
        },
    }
    storage_class = (storage.storage_class_name if storage else None) or settings.default_storage_class
    if storage_class:
        spec["storageClassName"] = storage_class
    metadata["annotations"] = {**metadata.get("annotations", {}), RETAIN_ANNOTATION: "true"}
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


def _service(names: Names, metadata: dict[str, Any]) -> Manifest:
    """Headless: gives each indexed pod a stable DNS name (<job>-<index>.<service>) for the rendezvous."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_LABEL: names.job},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def _env(parsed: ParsedJob, settings: OperatorSettings, names: Names, namespace: str) -> list[dict[str, Any]]:
    spec = parsed.job.spec
    env: list[dict[str, Any]] = [
        {"name": Env.BASE_VOLUME, "value": Paths.DATA_MOUNT},
        {"name": Env.CONFIG_DIR, "value": Paths.CONFIG_DIR},
        {"name": Env.HF_HOME, "value": hf_home(cache_claim(spec, settings))},
        {"name": Env.DO_NOT_TRACK, "value": "1"},
        {"name": Env.HF_UPDATE_DOWNLOAD_COUNTS, "value": "0"},
        {"name": Env.JOB_NAME, "value": parsed.name},
        {"name": Env.JOB_NAMESPACE, "value": namespace},
        {"name": Env.TERMINATION_LOG, "value": Paths.TERMINATION_LOG},
        {"name": Env.METRICS_PORT, "value": str(METRICS_PORT)},
        {"name": Env.NPROC_PER_NODE, "value": str(spec.gpus)},
    ]
    if spec.nodes > 1:
        env += [
            {"name": Env.NNODES, "value": str(spec.nodes)},
            {
                "name": Env.NODE_RANK,
                "valueFrom": {
                    "fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}
                },
            },
            {"name": Env.MASTER_ADDR, "value": f"{names.job}-0.{names.service}.{namespace}.svc"},
            {"name": Env.MASTER_PORT, "value": str(RENDEZVOUS_PORT)},
        ]
    if settings.progress_url:
        env += [
            {"name": Env.PROGRESS_URL, "value": settings.progress_url},
            {"name": Env.PROGRESS_TOKEN_FILE, "value": Paths.PROGRESS_TOKEN_FILE},
            # transformers' KubeflowCallback (images without our runner): the URL names the job
            {
                "name": Env.KUBEFLOW_SERVER_URL,
                "value": kubeflow_url(settings.progress_url, namespace, parsed.name),
            },
            {"name": Env.KUBEFLOW_SERVER_TOKEN, "value": Paths.PROGRESS_TOKEN_FILE},
        ]
        if progress_ca_data(settings):
            env += [
                {"name": Env.PROGRESS_CA_FILE, "value": Paths.PROGRESS_CA_FILE},
                {"name": Env.KUBEFLOW_SERVER_CA_CERT, "value": Paths.PROGRESS_CA_FILE},
            ]
    env += secret_env(spec)
    # The user's variables come last; validation refuses any name the operator sets (RESERVED_ENV).
    return env + [var.model_dump(by_alias=True, exclude_none=True) for var in spec.env or []]


def progress_ca_data(settings: OperatorSettings) -> dict[str, str]:
    """The progress endpoint's CA certificate (public, never its key) for the job's ConfigMap, when the
    progress URL is https and the operator has one: trainer pods verify the endpoint with it."""
    if settings.progress_ca and settings.progress_url.startswith("https://"):
        return {Paths.PROGRESS_CA_NAME: settings.progress_ca}
    return {}


def secret_env(spec: AxolotlJobSpec) -> list[dict[str, Any]]:
    """HF_TOKEN and WANDB_API_KEY from the Secrets spec.secrets names (references, never values)."""
    secrets = spec.secrets
    return [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        for var, ref in (
            (Env.HF_TOKEN, secrets and secrets.hf_token),
            (Env.WANDB_API_KEY, secrets and secrets.wandb_api_key),
        )
        if ref
    ]


def resources(
    requirements: ResourceRequirements | None, gpus: int, settings: OperatorSettings
) -> dict[str, Any]:
    """A container's requests and limits, GPUs as a limit of the operator's GPU resource."""
    result: dict[str, Any] = {}
    if requirements:
        for kind in ("requests", "limits"):
            values = getattr(requirements, kind)
            if values:
                result[kind] = {key: str(value) for key, value in values.items()}
    if gpus > 0:
        result.setdefault("limits", {})[settings.gpu_resource_name] = str(gpus)
    return result


def workspace_mounts(
    claim_name: str, config_map: str, cache: str | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(volumeMounts, volumes) of the job's workspace: the claim at /workspace/data, the config
    read-only at /src/config, a memory /dev/shm (PyTorch's data loaders need more than 64 MiB), and the
    shared cache claim at /workspace/cache when there is one."""
    mounts = [
        {"name": "data", "mountPath": Paths.DATA_MOUNT},
        {"name": "config", "mountPath": Paths.CONFIG_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": claim_name}},
        {"name": "config", "configMap": {"name": config_map}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    if cache:
        mounts.append({"name": "cache", "mountPath": Paths.CACHE_MOUNT})
        volumes.append({"name": "cache", "persistentVolumeClaim": {"claimName": cache}})
    return mounts, volumes


def pod_security() -> dict[str, dict[str, Any]]:
    """The pod- and container-level settings every pod of a job gets (training and notebook)."""
    return {
        "pod": {
            "enableServiceLinks": False,
            # The trainer never calls the API; its only token is the projected, audience-bound progress one.
            "automountServiceAccountToken": False,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
        },
        # As restricted as Axolotl allows: its images run as root, so runAsNonRoot is left to the image.
        "container": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def _pod_spec(parsed: ParsedJob, settings: OperatorSettings, names: Names, namespace: str) -> dict[str, Any]:
    spec = parsed.job.spec
    claim_name = mounted_claim(parsed)
    ports = [{"name": "metrics", "containerPort": METRICS_PORT}]
    if spec.nodes > 1:
        ports.append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT})
    mounts, volumes = workspace_mounts(claim_name, names.config_map, cache_claim(spec, settings))
    if settings.progress_url:
        mounts.append({"name": "progress-token", "mountPath": Paths.PROGRESS_TOKEN_DIR, "readOnly": True})
        token = {
            "audience": settings.progress_audience,
            "expirationSeconds": PROGRESS_TOKEN_SECONDS,
            "path": Paths.PROGRESS_TOKEN_NAME,
        }
        sources: list[dict[str, Any]] = [{"serviceAccountToken": token}]
        if progress_ca_data(settings):  # the operator's CA next to the token (optional: never blocks a start)
            ca = {"key": Paths.PROGRESS_CA_NAME, "path": Paths.PROGRESS_CA_NAME}
            sources.append({"configMap": {"name": names.config_map, "items": [ca], "optional": True}})
        volumes.append({"name": "progress-token", "projected": {"sources": sources}})
    container: dict[str, Any] = {
        "name": CONTAINER_NAME,
        "image": spec.image or settings.default_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(spec.command or RUNNER_COMMAND),
        "env": _env(parsed, settings, names, namespace),
        "ports": ports,
        "resources": resources(spec.resources, spec.gpus, settings),
        "volumeMounts": mounts,
        "terminationMessagePath": Paths.TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": pod_security()["container"],
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        # SIGTERM saves a checkpoint at the next step boundary first (the runner's EXIT_PREEMPTED).
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        **pod_security()["pod"],
        "containers": [container],
        "volumes": volumes,
    }
    if spec.args:
        container["args"] = list(spec.args)
    if spec.nodes > 1:
        pod["subdomain"] = names.service
    optional = {
        "serviceAccountName": spec.service_account_name,
        "priorityClassName": spec.priority_class_name,
        "nodeSelector": spec.node_selector,
        "tolerations": spec.tolerations,
        "affinity": spec.affinity,
        "imagePullSecrets": [ref.model_dump() for ref in spec.image_pull_secrets or []] or None,
    }
    pod.update({key: value for key, value in optional.items() if value})
    return pod


def _job(
    parsed: ParsedJob, settings: OperatorSettings, names: Names, namespace: str, metadata: dict[str, Any]
) -> Manifest:
    spec = parsed.job.spec
    pod_labels = labels(parsed.name, "training")
    pod_meta: dict[str, Any] = {"labels": pod_labels}
    if spec.pod_metadata:
        pod_meta["labels"] = {**(spec.pod_metadata.labels or {}), **pod_labels}
        if spec.pod_metadata.annotations:
            pod_meta["annotations"] = dict(spec.pod_metadata.annotations)
    if spec.queue_name:
        metadata["labels"][QUEUE_LABEL] = spec.queue_name
        if spec.workload_priority_class_name:
            metadata["labels"][PRIORITY_CLASS_LABEL] = spec.workload_priority_class_name
    job_spec: dict[str, Any] = {
        # Kueue admits a queued job by unsuspending it, so it is created suspended.
        "suspend": spec.suspend or bool(spec.queue_name),
        "backoffLimit": spec.backoff_limit,
        "completions": spec.nodes,
        "parallelism": spec.nodes,
        "completionMode": "Indexed" if spec.nodes > 1 else "NonIndexed",
        "podFailurePolicy": {"rules": _failure_rules(custom_command=bool(spec.command))},
        "template": {"metadata": pod_meta, "spec": _pod_spec(parsed, settings, names, namespace)},
    }
    if spec.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": job_spec}


def _failure_rules(custom_command: bool) -> list[dict[str, Any]]:
    """The Job's podFailurePolicy. The exit-code rules are the runner's contract: a custom command's exit
    codes mean nothing to us, so it gets only the disruption rule."""
    # Eviction and preemption are not the training's fault: retry without using up backoffLimit.
    disruption = {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    if custom_command:
        return [disruption]
    return [
        {"action": "FailJob", "onExitCodes": _exit_codes(EXIT_INVALID_CONFIG)},
        disruption,
        # Stopped by SIGTERM after saving a checkpoint (a drain, a delete, a suspend): the same.
        {"action": "Ignore", "onExitCodes": _exit_codes(EXIT_PREEMPTED)},
    ]


def _exit_codes(*codes: int) -> dict[str, Any]:
    return {"containerName": CONTAINER_NAME, "operator": "In", "values": list(codes)}


# --- keeping an existing Job in line with the AxolotlJob (pure, used by the operator) ---


def job_updates(
    existing: Mapping[str, Any], desired: Mapping[str, Any], *, queue_name: str | None, suspend: bool
) -> dict[str, Any]:
    """The Job spec fields to change so it follows the AxolotlJob's mutable fields (pure).

    With a queueName, Kueue owns Job.spec.suspend (it unsuspends on admission); the operator only
    suspends on the user's request. A finished Job only gets its TTL changed.
    """
    have = existing.get("spec") or {}
    want = desired.get("spec") or {}
    conditions = (existing.get("status") or {}).get("conditions") or []
    finished = any(c.get("type") in {"Complete", "Failed"} and c.get("status") == "True" for c in conditions)
    fields = (
        ("ttlSecondsAfterFinished",) if finished else ("activeDeadlineSeconds", "ttlSecondsAfterFinished")
    )
    updates = {key: want.get(key) for key in fields if have.get(key) != want.get(key)}
    if not finished:
        if queue_name:
            if suspend and not have.get("suspend"):
                updates["suspend"] = True
        elif bool(have.get("suspend")) != suspend:
            updates["suspend"] = suspend
    return updates
