"""Fixtures for the operator's integration tests: the real operator process on the real control plane.

- ``op``: the operator as users run it (``axolotl-operator run --all-namespaces``), one process per test
  module with the control plane's KUBECONFIG and its log in a file, restarted when a test stopped it;
  ``op.restart()``, ``op.stop()`` (SIGTERM), ``op.kill()`` (SIGKILL), ``op.log()``, ``op.metrics()``.
- ``fake_kubelet_node``: a Node that kwok does not manage; the test itself plays its kubelet (writes pod
  status exactly as a kubelet does) for states kwok cannot produce (image pull errors, a missing Secret).
Helpers (manifest builder, waits) are in operator_support.py.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from operator_support import TEST_NODE_LABEL, OperatorProcess, kubectl, kubectl_json, wait_for


@pytest.fixture(scope="module")
def operator_process(
    kubeenv: Any, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[OperatorProcess]:
    """One operator per test module: it must not outlive these tests (other suites assume no operator)."""
    log_dir = Path(os.environ.get("AXOLOTL_OPERATOR_TEST_LOG_DIR") or tmp_path_factory.mktemp("operator"))
    log_dir.mkdir(parents=True, exist_ok=True)
    process = OperatorProcess(log_dir / f"{request.module.__name__}.log")
    process.start()
    yield process
    if process.running():
        code = process.stop()
        assert code == 0, f"the operator did not shut down cleanly ({code}); log: {process.log_path}"


@pytest.fixture
def op(operator_process: OperatorProcess) -> OperatorProcess:
    """The running operator (restarted if an earlier test stopped it)."""
    operator_process.ensure()
    return operator_process


@pytest.fixture
def fake_kubelet_node() -> Iterator[dict[str, Any]]:
    """A Ready GPU node kwok leaves alone, tainted so only pods that ask for it land there.

    Yields ``{"name", "nodeSelector", "tolerations"}`` to put into a job's spec.
    """
    name = f"test-kubelet-{uuid.uuid4().hex[:6]}"
    node = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {TEST_NODE_LABEL: name, "kubernetes.io/hostname": name}},
        "spec": {"taints": [{"key": TEST_NODE_LABEL, "value": name, "effect": "NoSchedule"}]},
    }
    kubectl("create", "-f", "-", input=json.dumps(node))
    resources = {"cpu": "32", "memory": "256Gi", "pods": "110", "nvidia.com/gpu": "8"}
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "KubeletReady",
        "message": "the test is the kubelet",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
    }
    status = {
        "status": {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [ready],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.42"}],
        }
    }
    kubectl("patch", "node", name, "--subresource=status", "--type=merge", "-p", json.dumps(status))
    # A kubelet's heartbeat: without a fresh Lease the node controller would soon mark the node NotReady.
    lease = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {
            "holderIdentity": name,
            "leaseDurationSeconds": 600,
            "renewTime": stamp.replace("Z", ".000000Z"),
        },
    }
    kubectl("apply", "-f", "-", input=json.dumps(lease))

    def schedulable() -> bool:
        taints = kubectl_json("get", "node", name).get("spec", {}).get("taints") or []
        return all(t["key"] == TEST_NODE_LABEL for t in taints)

    wait_for(schedulable, timeout=30, what=f"node {name} without not-ready taints")
    yield {
        "name": name,
        "nodeSelector": {TEST_NODE_LABEL: name},
        "tolerations": [{"key": TEST_NODE_LABEL, "operator": "Equal", "value": name, "effect": "NoSchedule"}],
    }
    kubectl("delete", "node", name, "--wait=false", "--ignore-not-found", check=False)
    kubectl("delete", "lease", name, "-n", "kube-node-lease", "--ignore-not-found", check=False)
