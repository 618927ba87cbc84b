"""JupyterLab next to an AxolotlJob (spec.notebook), pure: its objects, where it may run, its status.

The notebook is a Deployment (one pod, Recreate: never two pods on one claim) and a ClusterIP Service,
both owned by the AxolotlJob. Its pod mounts the job's claim and config like the training pod, gets the
same HF_HOME and Secret-sourced tokens, and runs as restricted as training pods do.

Where it runs depends on the claim. A shared claim (ReadWriteMany, ReadOnlyMany) mounts anywhere. A
ReadWriteOnce claim mounts on one node at a time: while training runs the notebook must sit on the
training pod's node (required pod affinity), and once training ends (or is suspended) anywhere. A
ReadWriteOncePod claim admits one pod: the notebook waits (0 replicas) until training ends. The status
says which (`status.notebook.placement`), so a waiting notebook is never a mystery.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .api.job import NOTEBOOK_TOKEN_ENV
from .api.status import Condition, ConditionType, NotebookPlacement, NotebookStatus, Reason
from .api.validate import ParsedJob
from .constants import NOTEBOOK_SPEC_ANNOTATION, OWNER_UID_ANNOTATION, Names, labels
from .render import (
    Manifest,
    cache_claim,
    hf_home,
    mounted_claim,
    owner_reference,
    pod_security,
    resources,
    secret_env,
    workspace_mounts,
)
from .settings import OperatorSettings
from .status.children import Obj, get, true_condition
from .status.conditions import set_condition
from .status.diagnosis import clip, pod_problem
from .status.model import JobFacts
from .trainer_contract import Env, Paths

PORT = 8888
CONTAINER = "notebook"
COMPONENT = "notebook"
SHARED_MODES = frozenset({"ReadWriteMany", "ReadOnlyMany"})
UNKNOWN_MODES = ("ReadWriteOnce",)  # an existing claim not read (yet): assume the usual, exclusive kind
# JupyterLab serves the volume; as root (Axolotl's images run as root) it needs --allow-root, with every
# capability dropped and no privilege escalation, like the trainer.
COMMAND = (
    "jupyter",
    "lab",
    "--ip=0.0.0.0",
    f"--port={PORT}",
    "--no-browser",
    "--allow-root",
    f"--ServerApp.root_dir={Paths.DATA_MOUNT}",
)


@dataclass(frozen=True)
class NotebookPlan:
    """What the spec asks for, before the cluster is read: the objects (no namespace, no owner yet) and
    the claim's access modes (None for an existing claim: read from the API)."""

    job_name: str
    deployment: Manifest
    service: Manifest
    claim_name: str
    claim_modes: tuple[str, ...] | None
    gpus: int = 0


def plan(
    parsed: ParsedJob, settings: OperatorSettings, claim_modes: Sequence[str] | None
) -> NotebookPlan | None:
    """The notebook of a valid job; None when spec.notebook is absent or disabled."""
    spec = parsed.job.spec
    notebook = spec.notebook
    if notebook is None or not notebook.enabled or notebook.token_secret is None:
        return None
    names = Names.of(parsed.name)
    claim = mounted_claim(parsed)
    cache = cache_claim(spec, settings)
    token = notebook.token_secret
    env = [
        {"name": NOTEBOOK_TOKEN_ENV, "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}},
        {"name": "JUPYTER_ENABLE_LAB", "value": "yes"},
        {"name": Env.BASE_VOLUME, "value": Paths.DATA_MOUNT},
        {"name": Env.CONFIG_DIR, "value": Paths.CONFIG_DIR},
        {"name": Env.HF_HOME, "value": hf_home(cache)},
        {"name": Env.DO_NOT_TRACK, "value": "1"},
        {"name": Env.HF_UPDATE_DOWNLOAD_COUNTS, "value": "0"},
        *secret_env(spec),
        *(var.model_dump(by_alias=True, exclude_none=True) for var in spec.env or []),
    ]
    mounts, volumes = workspace_mounts(claim, names.config_map, cache)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": notebook.image or spec.image or settings.default_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": list(COMMAND),
        "env": env,
        "ports": [{"name": "http", "containerPort": PORT}],
        "resources": resources(notebook.resources, notebook.gpus, settings),
        "volumeMounts": mounts,
        "readinessProbe": {"tcpSocket": {"port": PORT}, "periodSeconds": 5},
        "securityContext": pod_security()["container"],
    }
    pod: dict[str, Any] = {
        **pod_security()["pod"],
        "containers": [container],
        "volumes": volumes,
    }
    # Tolerations only allow: the notebook may follow the training pod onto a tainted GPU node. The
    # training pods' nodeSelector is not copied: a CPU notebook need not take a GPU node.
    optional = {
        "serviceAccountName": spec.service_account_name,  # the job's identity (its token is not mounted)
        "nodeSelector": notebook.node_selector,
        "tolerations": spec.tolerations,
        "imagePullSecrets": [ref.model_dump() for ref in spec.image_pull_secrets or []] or None,
    }
    pod.update({key: value for key, value in optional.items() if value})
    selector = labels(parsed.name, COMPONENT)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": names.notebook, "labels": selector},
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": selector}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": names.notebook, "labels": selector},
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": PORT, "targetPort": PORT}],
        },
    }
    modes = tuple(claim_modes) if claim_modes is not None else None
    return NotebookPlan(parsed.name, deployment, service, claim, modes, notebook.gpus)


def training_active(job: Obj | None) -> bool:
    """Whether training pods may hold the claim now: the Job exists, is not suspended, has not finished."""
    if job is None or get(job, "spec", "suspend"):
        return False
    return not (true_condition(job, "Complete") or true_condition(job, "Failed"))


def placement_for(claim_modes: Sequence[str], training_runs: bool) -> NotebookPlacement:
    if SHARED_MODES & set(claim_modes) or not training_runs:
        return NotebookPlacement.ANYWHERE
    if "ReadWriteOncePod" in claim_modes:
        return NotebookPlacement.AFTER_TRAINING
    return NotebookPlacement.WITH_TRAINING_POD


def desired(
    plan: NotebookPlan, placement: NotebookPlacement, namespace: str, owner: Mapping[str, Any] | None
) -> tuple[Manifest, Manifest]:
    """The Deployment and Service to apply for `placement`, owned by the live AxolotlJob when given;
    the Deployment carries a hash of its spec, so a changed spec is seen without comparing defaults."""
    deployment = json.loads(json.dumps(plan.deployment))  # a deep copy: the plan is shared (cached)
    spec = deployment["spec"]
    if placement == NotebookPlacement.AFTER_TRAINING:
        spec["replicas"] = 0
    elif placement == NotebookPlacement.WITH_TRAINING_POD:
        training = labels(plan.job_name, "training")
        affinity = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": training}, "topologyKey": "kubernetes.io/hostname"}
            ]
        }
        spec["template"]["spec"]["affinity"] = {"podAffinity": affinity}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    service = json.loads(json.dumps(plan.service))
    for manifest in (deployment, service):
        manifest["metadata"]["namespace"] = namespace
        manifest["metadata"]["annotations"] = {}
        if owner is not None:
            manifest["metadata"]["ownerReferences"] = [owner_reference(owner)]
            manifest["metadata"]["annotations"][OWNER_UID_ANNOTATION] = owner["metadata"]["uid"]
    deployment["metadata"]["annotations"][NOTEBOOK_SPEC_ANNOTATION] = digest
    if not service["metadata"]["annotations"]:
        del service["metadata"]["annotations"]
    return deployment, service


def spec_hash(deployment: Obj) -> str | None:
    return ((deployment.get("metadata") or {}).get("annotations") or {}).get(NOTEBOOK_SPEC_ANNOTATION)


@dataclass(frozen=True)
class NotebookView:
    """What the status shows: the placement chosen, the live Deployment's pods, or why it is missing."""

    placement: NotebookPlacement
    pods: tuple[Obj, ...] = ()
    problem: tuple[Reason, str] | None = None  # a name conflict or a refused create
    gpus: int = 0


def port_forward(namespace: str, job_name: str) -> str:
    return f"kubectl port-forward -n {namespace} service/{Names.of(job_name).notebook} {PORT}:{PORT}"


def notebook_status(
    view: NotebookView, namespace: str, job_name: str, facts: JobFacts
) -> tuple[NotebookStatus, bool, Reason, str]:
    """status.notebook and the NotebookReady condition's (status, reason, message)."""
    ready, reason, message = _readiness(view, facts)
    status = NotebookStatus(
        service_name=Names.of(job_name).notebook,
        ready=ready,
        placement=view.placement,
        port_forward=port_forward(namespace, job_name),
        message=None if ready else message,
    )
    return status, ready, reason, message


def _readiness(view: NotebookView, facts: JobFacts) -> tuple[bool, Reason, str]:
    if view.problem is not None:
        return False, *view.problem
    if view.placement == NotebookPlacement.AFTER_TRAINING:
        return (
            False,
            Reason.WAITING_FOR_CLAIM,
            (
                "the claim is ReadWriteOncePod and the training pod holds it: the notebook starts when "
                "training ends (or is suspended)"
            ),
        )
    live = [pod for pod in view.pods if not get(pod, "metadata", "deletionTimestamp")]
    if any(true_condition(pod, "Ready") for pod in live):
        return True, Reason.NOTEBOOK_RUNNING, "JupyterLab is serving the job's volume"
    asks = replace(facts, gpus=view.gpus)  # the scheduler's diagnosis names what the notebook asks
    for pod in live:
        problem = pod_problem(pod, asks)
        if problem is None:
            continue
        reason, detail = problem
        if reason == Reason.UNSCHEDULABLE and view.placement == NotebookPlacement.WITH_TRAINING_POD:
            return (
                False,
                Reason.WAITING_FOR_TRAINING_POD,
                clip(
                    "the claim is ReadWriteOnce: the notebook runs on the training pod's node once that pod "
                    f"is scheduled; the scheduler says: {detail}"
                ),
            )
        return False, reason, clip(f"notebook: {detail}. Fix spec.notebook (image, resources, tokenSecret)")
    return False, Reason.NOTEBOOK_STARTING, "the notebook pod is starting"


def notebook_condition(
    previous: Sequence[Mapping[str, Any]],
    ready: bool,
    reason: Reason,
    message: str,
    generation: int | None,
    now: str,
) -> Condition:
    return set_condition(previous, ConditionType.NOTEBOOK_READY, ready, reason, message, generation, now)
