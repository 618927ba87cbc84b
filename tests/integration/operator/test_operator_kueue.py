"""Kueue for real: Kueue v0.17 (built from its Go module, running against the test control plane with its
webhooks on loopback; see kueue_support.py) admits AxolotlJobs through the Jobs the operator creates.

A ClusterQueue of 8 GPUs takes two 4-GPU jobs; a third waits (phase Pending, reason Queued, its Job
suspended by Kueue) and runs when one finishes. The user's `spec.suspend` wins over an admission, and a
WorkloadPriorityClass moves a later job ahead of an earlier one.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kueue_support import KueueProcess
from operator_support import (
    HOLD,
    RELEASE,
    apply_yaml,
    get_axj,
    kubectl,
    kubectl_json,
    listening_sockets,
    make_axj,
    patch_spec,
    pods_of,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration

GPUS_PER_JOB = 4
QUOTA_GPUS = 8
LOCAL_QUEUE = "team"
API = "kueue.x-k8s.io/v1beta2"


@pytest.fixture(scope="module")
def kueue(kubeenv: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KueueProcess]:
    process = KueueProcess(Path(tmp_path_factory.mktemp("kueue")))
    try:
        process.install()
        yield process
    finally:
        process.uninstall()
    # Nothing of Kueue is left for the tests that follow on this control plane.
    left = kubectl("get", "crd,mutatingwebhookconfigurations,validatingwebhookconfigurations", "-o", "name")
    assert [line for line in left.splitlines() if "kueue" in line] == []


def test_kueue_serves_on_loopback_only(kueue):
    sockets = listening_sockets(kueue.pid)
    assert (ipaddress.ip_address("127.0.0.1"), kueue.webhook_port) in sockets
    assert sockets and all(address.is_loopback for address, _ in sockets), sockets


@pytest.fixture
def queue(kueue: KueueProcess, namespace: str) -> Iterator[str]:
    """A ResourceFlavor, a ClusterQueue of 8 GPUs for this test's namespace, and its LocalQueue."""
    cluster_queue = f"gpus-{namespace}"[:63]
    flavor = {"apiVersion": API, "kind": "ResourceFlavor", "metadata": {"name": namespace}}
    quotas = {"cpu": "1000", "memory": "10Ti", "nvidia.com/gpu": str(QUOTA_GPUS)}
    resources = [{"name": name, "nominalQuota": quota} for name, quota in quotas.items()]
    apply_yaml(flavor)
    apply_yaml(
        {
            "apiVersion": API,
            "kind": "ClusterQueue",
            "metadata": {"name": cluster_queue},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "queueingStrategy": "BestEffortFIFO",
                "resourceGroups": [
                    {
                        "coveredResources": list(quotas),
                        "flavors": [{"name": namespace, "resources": resources}],
                    }
                ],
            },
        }
    )
    local_queue = {
        "apiVersion": API,
        "kind": "LocalQueue",
        "metadata": {"name": LOCAL_QUEUE},
        "spec": {"clusterQueue": cluster_queue},
    }
    apply_yaml(local_queue, namespace)

    def active() -> bool:
        status = kubectl_json("get", "clusterqueue", cluster_queue).get("status") or {}
        return any(c["type"] == "Active" and c["status"] == "True" for c in status.get("conditions") or [])

    wait_for(active, timeout=60, interval=0.5, what=f"ClusterQueue {cluster_queue} active")
    yield cluster_queue
    kubectl("delete", "axolotljobs", "--all", "-n", namespace, "--wait=false", check=False)
    kubectl("delete", "localqueue", LOCAL_QUEUE, "-n", namespace, "--wait=false", check=False)
    kubectl("delete", "clusterqueue", cluster_queue, "--wait=false", check=False)
    kubectl("delete", "resourceflavor", namespace, "--wait=false", check=False)


def queued_job(name: str, **spec: Any) -> dict[str, Any]:
    return make_axj(name, annotations=HOLD, gpus=GPUS_PER_JOB, queueName=LOCAL_QUEUE, **spec)


def phase(namespace: str, name: str) -> tuple[str, str]:
    status = get_axj(namespace, name).get("status") or {}
    return status.get("phase", ""), status.get("reason", "")


def running_pod(namespace: str, name: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        live = [p for p in pods_of(namespace, name) if not p["metadata"].get("deletionTimestamp")]
        running = [p for p in live if p["status"].get("phase") == "Running"]
        return running[0] if running else None

    return wait_for(check, timeout=90, interval=0.5, what=f"a running training pod of {name}")


def admitted(namespace: str, name: str) -> bool:
    """Whether Kueue admitted the Workload of this AxolotlJob's Job (found through its owner)."""
    for workload in kubectl_json("get", "workloads", "-n", namespace)["items"]:
        owners = workload["metadata"].get("ownerReferences") or []
        if any(o["kind"] == "Job" and o["name"] == name for o in owners):
            conditions = (workload.get("status") or {}).get("conditions") or []
            return any(c["type"] == "Admitted" and c["status"] == "True" for c in conditions)
    return False


def test_two_of_three_four_gpu_jobs_run_the_third_waits_queued_then_runs(op, queue, namespace):
    for name in ("first", "second"):
        apply_yaml(queued_job(name), namespace)
        wait_phase(namespace, name, "Running", timeout=120)
    apply_yaml(queued_job("third"), namespace)

    # The third waits: Pending/Queued with the LocalQueue named, its Job still suspended, no pod.
    waiting = wait_phase(namespace, "third", "Pending", "Queued", timeout=60)
    assert f"LocalQueue {LOCAL_QUEUE}" in waiting["status"]["message"]

    def quota_counted() -> bool:  # Kueue has seen the Workload and found no room for it
        return any(
            (w.get("status") or {}).get("conditions")
            for w in kubectl_json("get", "workloads", "-n", namespace)["items"]
            if any(o["name"] == "third" for o in w["metadata"].get("ownerReferences") or [])
        )

    wait_for(quota_counted, timeout=60, interval=0.5, what="Kueue's verdict on the third job")
    assert not admitted(namespace, "third")
    assert kubectl_json("get", "job", "third", "-n", namespace)["spec"]["suspend"] is True
    assert pods_of(namespace, "third") == []
    assert admitted(namespace, "first") and admitted(namespace, "second")
    assert kubectl_json("get", "job", "first", "-n", namespace)["spec"]["suspend"] is False

    # One finishes: its quota is released and Kueue admits the third.
    kubectl("annotate", "pod", running_pod(namespace, "first")["metadata"]["name"], "-n", namespace, RELEASE)
    wait_phase(namespace, "first", "Succeeded", timeout=120)
    wait_phase(namespace, "third", "Running", timeout=120)
    assert admitted(namespace, "third")
    assert phase(namespace, "second")[0] == "Running"


def test_the_users_suspend_wins_over_an_admission(op, queue, namespace):
    apply_yaml(queued_job("paused"), namespace)
    wait_phase(namespace, "paused", "Running", timeout=120)
    assert admitted(namespace, "paused")

    patch_spec(namespace, "paused", {"suspend": True})
    wait_phase(namespace, "paused", "Suspended", "Suspended", timeout=120)

    def stopped() -> bool:
        live = [p for p in pods_of(namespace, "paused") if not p["metadata"].get("deletionTimestamp")]
        return not live and kubectl_json("get", "job", "paused", "-n", namespace)["spec"]["suspend"] is True

    wait_for(stopped, timeout=90, interval=0.5, what="the suspended job's pods gone")
    # Kueue gives the quota back and does not start it again while the user keeps it suspended.
    wait_for(lambda: not admitted(namespace, "paused"), timeout=60, interval=0.5, what="the quota released")
    assert phase(namespace, "paused") == ("Suspended", "Suspended")

    patch_spec(namespace, "paused", {"suspend": False})
    wait_phase(namespace, "paused", "Running", timeout=120)
    assert admitted(namespace, "paused")


def test_a_workload_priority_class_goes_first_in_the_queue(op, queue, namespace):
    high = f"urgent-{namespace}"[:63]
    apply_yaml(
        {
            "apiVersion": API,
            "kind": "WorkloadPriorityClass",
            "metadata": {"name": high},
            "value": 1000,
            "description": "ahead of the default",
        }
    )
    try:
        for name in ("busy-a", "busy-b"):
            apply_yaml(queued_job(name), namespace)
            wait_phase(namespace, name, "Running", timeout=120)
        apply_yaml(queued_job("early"), namespace)
        wait_phase(namespace, "early", "Pending", "Queued", timeout=60)
        apply_yaml(queued_job("late", workloadPriorityClassName=high), namespace)
        wait_phase(namespace, "late", "Pending", "Queued", timeout=60)
        job = kubectl_json("get", "job", "late", "-n", namespace)
        assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == high

        # Room for one: the later job with the higher priority is admitted, the earlier one waits.
        pod = running_pod(namespace, "busy-a")
        kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, RELEASE)
        wait_phase(namespace, "late", "Running", timeout=120)
        assert phase(namespace, "early") == ("Pending", "Queued")
        assert not admitted(namespace, "early")
    finally:
        kubectl("delete", "workloadpriorityclass", high, "--wait=false", check=False)
