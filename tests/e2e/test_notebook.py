"""spec.notebook on the real node: JupyterLab from the trainer image (built from its Dockerfile) next to
a training job on its ReadWriteOnce claim, reached by the exact `kubectl port-forward` command the status
gives, serving the files the training wrote, refusing requests without the token, and removed (the
claim kept) when turned off."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from e2e_support import (
    NODE_SELECTOR,
    Release,
    Workspace,
    apply_yaml,
    cpu_job,
    kubectl,
    kubectl_json,
    wait_for,
    wait_for_phase,
)

pytestmark = pytest.mark.e2e

NAME = "lab"
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def port_forward(command: str) -> Iterator[int]:
    """Run the status' port-forward command with a free local port instead of 8888 (others may use it)."""
    argv = command.split()
    assert argv[:2] == ["kubectl", "port-forward"] and argv[-1] == "8888:8888", command
    port = free_port()
    argv[-1] = f"{port}:8888"
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "Forwarding from 127.0.0.1" in first, first + proc.stdout.read()
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def get(port: int, path: str, token: str | None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"token {token}")
    try:
        with DIRECT.open(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def notebook_status(namespace: str) -> dict[str, Any]:
    return (kubectl_json("get", "axj", NAME, "-n", namespace).get("status") or {}).get("notebook") or {}


def test_notebook_serves_the_jobs_volume_through_port_forward_with_its_token(
    release: Release, workspace: Workspace
) -> None:
    namespace = workspace.namespace
    token = secrets.token_hex(24)
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "lab-token"}}
    apply_yaml([{**secret, "stringData": {"token": token}}], namespace)
    notebook = {
        "enabled": True,
        "tokenSecret": {"name": "lab-token", "key": "token"},
        "nodeSelector": NODE_SELECTOR,
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
    }
    job = cpu_job(NAME, workspace.claim, spec={"notebook": notebook}, max_steps=20, save_steps=10)
    apply_yaml(job, namespace)

    job = wait_for_phase(NAME, namespace, "Succeeded", timeout=900)
    # The claim is ReadWriteOnce: while training ran, the notebook was pinned to the training pod's node
    # (a ReplicaSet of that spec remains in the Deployment's history); now it may run anywhere.
    sets = kubectl_json("get", "replicasets", "-n", namespace, "-l", f"axolotl.ai/job={NAME}")["items"]
    affinities = [rs["spec"]["template"]["spec"].get("affinity") for rs in sets]
    assert any(a and "podAffinity" in a for a in affinities), affinities

    def ready() -> dict[str, Any] | None:
        shown = notebook_status(namespace)
        return shown if shown.get("ready") and shown.get("placement") == "Anywhere" else None

    shown = wait_for(ready, timeout=300, interval=2, what="the notebook ready after training")
    conditions = kubectl_json("get", "axj", NAME, "-n", namespace)["status"]["conditions"]
    assert {c["type"]: c["status"] for c in conditions}["NotebookReady"] == "True"
    assert shown["serviceName"] == f"{NAME}-notebook"
    service = kubectl_json("get", "service", shown["serviceName"], "-n", namespace)
    assert service["spec"]["type"] == "ClusterIP"

    with port_forward(shown["portForward"]) as port:
        status, answer = get(port, "/api/status", token)
        assert status == 200 and "started" in answer, answer
        assert get(port, "/api/status", None)[0] == 403
        assert get(port, "/api/status", "not-the-token")[0] == 403
        # The files the training wrote, as JupyterLab lists them from the claim.
        output = job["status"]["outputs"]["outputDir"].removeprefix("/workspace/data/")
        status, listing = get(port, f"/api/contents/{output}", token)
        assert status == 200, listing
        names = {item["name"] for item in listing["content"]}
        assert {"adapter_model.safetensors", "adapter_config.json"} <= names, names
        outside = get(port, "/api/contents/..%2F..%2Fsrc%2Fconfig", token)[0]
        assert outside in (400, 403, 404)  # JupyterLab serves the volume, nothing above it

    # The token is in its Secret only.
    places = {
        "axolotljob": kubectl("get", "axj", NAME, "-n", namespace, "-o", "yaml"),
        "deployment": kubectl("get", "deployment", shown["serviceName"], "-n", namespace, "-o", "yaml"),
        "events": kubectl("get", "events", "-n", namespace, "-o", "yaml"),
        "notebook log": kubectl("logs", f"deployment/{shown['serviceName']}", "-n", namespace),
    }
    assert [where for where, text in places.items() if token in text] == []

    # Turned off: the Deployment and Service go, the status forgets it, the claim stays.
    off = '{"spec":{"notebook":{"enabled":false}}}'
    kubectl("patch", "axj", NAME, "-n", namespace, "--type", "merge", "-p", off)

    def removed() -> bool:
        gone = not kubectl("get", "deployment,service", "-n", namespace, "-l",
                           "app.kubernetes.io/component=notebook", "-o", "name")
        return gone and not notebook_status(namespace)

    wait_for(removed, timeout=120, interval=2, what="the notebook removed")
    assert kubectl_json("get", "pvc", workspace.claim, "-n", namespace)["metadata"]["name"] == workspace.claim
