"""spec.notebook on the real control plane (kwok pods): the Deployment and Service the API server accepts,
pod affinity to the training pod while it runs on a ReadWriteOnce claim, a move once training ends, the
status and condition, removal when turned off, and no takeover of a namesake."""

from __future__ import annotations

from typing import Any

import pytest
from operator_support import (
    HOLD,
    RELEASE,
    apply_yaml,
    children,
    condition,
    get_axj,
    kubectl,
    kubectl_json,
    make_axj,
    patch_spec,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration

NOTEBOOK = {"enabled": True, "tokenSecret": {"name": "nb-token", "key": "token"}}
COMPONENT = "app.kubernetes.io/component"


def shown(namespace: str, name: str) -> dict[str, Any]:
    return (get_axj(namespace, name).get("status") or {}).get("notebook") or {}


def notebook_ready(namespace: str, name: str, placement: str):
    def check() -> dict[str, Any] | None:
        notebook = shown(namespace, name)
        return notebook if notebook.get("ready") and notebook.get("placement") == placement else None

    return wait_for(check, timeout=90, interval=0.5, what=f"the notebook of {name} ready, {placement}")


def pods(namespace: str, name: str, component: str) -> list[dict[str, Any]]:
    selector = f"axolotl.ai/job={name},{COMPONENT}={component}"
    return kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]


def test_the_notebook_follows_the_training_pod_then_runs_anywhere_and_goes_when_turned_off(op, namespace):
    kubectl("create", "secret", "generic", "nb-token", "-n", namespace, "--from-literal=token=t0k3n-for-test")
    apply_yaml(make_axj("nb", annotations=HOLD, notebook=NOTEBOOK), namespace)

    notebook = notebook_ready(namespace, "nb", "WithTrainingPod")
    assert notebook["serviceName"] == "nb-notebook"
    assert notebook["portForward"] == f"kubectl port-forward -n {namespace} service/nb-notebook 8888:8888"
    axj = get_axj(namespace, "nb")
    assert (condition(axj, "NotebookReady")["status"], condition(axj, "NotebookReady")["reason"]) == (
        "True",
        "NotebookRunning",
    )
    # The scheduler placed it with the training pod (required pod affinity: one node mounts the claim).
    # The scheduler may place the notebook while the training pod is still binding (it waits for its
    # claim), so wait for the training pod's node.
    def training_scheduled() -> dict[str, Any] | None:
        found = pods(namespace, "nb", "training")
        return found[0] if len(found) == 1 and found[0]["spec"].get("nodeName") else None

    training = wait_for(training_scheduled, timeout=60, interval=0.5, what="the training pod bound to a node")
    (lab,) = [p for p in pods(namespace, "nb", "notebook") if not p["metadata"].get("deletionTimestamp")]
    assert lab["spec"]["nodeName"] == training["spec"]["nodeName"]
    deployment = kubectl_json("get", "deployment", "nb-notebook", "-n", namespace)
    assert deployment["metadata"]["ownerReferences"][0]["uid"] == axj["metadata"]["uid"]
    assert "podAffinity" in deployment["spec"]["template"]["spec"]["affinity"]
    service = kubectl_json("get", "service", "nb-notebook", "-n", namespace)
    assert service["spec"]["type"] == "ClusterIP" and service["spec"]["ports"][0]["port"] == 8888

    # Training ends: the notebook is moved (a new template without the affinity) and ready again.
    kubectl("annotate", "pod", training["metadata"]["name"], "-n", namespace, RELEASE)
    wait_phase(namespace, "nb", "Succeeded")
    notebook_ready(namespace, "nb", "Anywhere")
    moved = kubectl_json("get", "deployment", "nb-notebook", "-n", namespace)
    assert "affinity" not in moved["spec"]["template"]["spec"]
    assert moved["metadata"]["uid"] == deployment["metadata"]["uid"]

    # Turned off: the Deployment and Service go, the status and condition forget it, the claim stays.
    patch_spec(namespace, "nb", {"notebook": {"enabled": False}})

    def removed() -> bool:
        selector = f"{COMPONENT}=notebook"
        left = kubectl("get", "deployment,service", "-n", namespace, "-l", selector, "-o", "name")
        status = get_axj(namespace, "nb")["status"]
        types = {c["type"] for c in status["conditions"]}
        return not left.strip() and "notebook" not in status and "NotebookReady" not in types

    wait_for(removed, timeout=60, interval=0.5, what="the notebook removed")
    assert len(children(namespace, "nb", "pvc")) == 1


def test_a_namesake_service_is_left_untouched_and_named_in_the_condition(op, namespace):
    kubectl("create", "secret", "generic", "nb-token", "-n", namespace, "--from-literal=token=t0k3n-for-test")
    planted = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "clash-notebook", "labels": {"planted": "yes"}},
        "spec": {"selector": {"app": "other"}, "ports": [{"port": 80}]},
    }
    apply_yaml(planted, namespace)
    apply_yaml(make_axj("clash", notebook=NOTEBOOK), namespace)

    def conflict() -> dict[str, Any] | None:
        conditions = (get_axj(namespace, "clash").get("status") or {}).get("conditions") or []
        ready = next((c for c in conditions if c["type"] == "NotebookReady"), None)
        return ready if ready and ready["reason"] == "ChildNameConflict" else None

    ready = wait_for(conflict, timeout=60, interval=0.5, what="the notebook's name conflict in the status")
    assert ready["status"] == "False" and "Service" in ready["message"]
    assert "left untouched" in ready["message"]
    service = kubectl_json("get", "service", "clash-notebook", "-n", namespace)
    assert "ownerReferences" not in service["metadata"] and service["spec"]["selector"] == {"app": "other"}
    # Nothing half-made: no Deployment either (the Service is made first).
    assert kubectl("get", "deployment", "clash-notebook", "-n", namespace, check=False) == ""
