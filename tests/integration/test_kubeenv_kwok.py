"""The fake kubelet's per-pod knobs (annotations kwok.axolotl.ai/*) do what they say, in a
way a Job's podFailurePolicy can see."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

pytestmark = pytest.mark.integration


def job(name: str, annotations: dict[str, str], rules: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A one-pod, no-retry GPU Job whose pod carries ``annotations``."""
    spec: dict[str, Any] = {
        "backoffLimit": 0,
        "template": {
            "metadata": {"annotations": annotations},
            "spec": {"restartPolicy": "Never",
                     "containers": [{"name": "main", "image": "busybox",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        },
    }
    if rules:
        spec["podFailurePolicy"] = {"rules": rules}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in obj.get("status", {}).get("conditions") or [] if c["type"] == type_), None)


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture
def pod_in_phase(kubectl_json, wait_for):
    """``pod_in_phase(namespace, job_name, *phases)``: wait for a pod of the Job in one of the phases."""

    def wait(namespace: str, job_name: str, *phases: str) -> dict[str, Any]:
        def find() -> dict[str, Any] | None:
            pods = kubectl_json("get", "pods", "-n", namespace, "-l", f"job-name={job_name}")["items"]
            return next((p for p in pods if p["status"].get("phase") in phases), None)

        return wait_for(find, timeout=60, what=f"a pod of job {job_name} in {phases}")

    return wait


@pytest.fixture
def finished_pod(pod_in_phase):
    return lambda namespace, job_name: pod_in_phase(namespace, job_name, "Succeeded", "Failed")


@pytest.fixture
def job_condition(kubectl_json, wait_for):
    """``job_condition(namespace, name, type)``: wait for the Job condition to be True; return it."""

    def wait(namespace: str, name: str, type_: str) -> dict[str, Any]:
        def get() -> dict[str, Any] | None:
            c = condition(kubectl_json("get", f"job/{name}", "-n", namespace), type_)
            return c if c and c["status"] == "True" else None

        return wait_for(get, timeout=60, what=f"job {name} {type_}")

    return wait


def test_default_job_pod_succeeds_with_exit_code_zero(namespace, apply_yaml, finished_pod, job_condition):
    apply_yaml(job("plain", {}), namespace)
    pod = finished_pod(namespace, "plain")
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["exitCode"] == 0
    assert terminated(pod)["reason"] == "Completed"
    job_condition(namespace, "plain", "Complete")


def test_hold_keeps_pod_running_until_released(namespace, apply_yaml, kubectl, kubectl_json, pod_in_phase,
                                                finished_pod, job_condition):
    fast = {"kwok.axolotl.ai/run-seconds": "0"}
    apply_yaml([job("held", {"kwok.axolotl.ai/hold": "true", **fast}), job("free", fast)], namespace)
    held = pod_in_phase(namespace, "held", "Running")
    # Its twin without hold has run and finished meanwhile; the held pod has not.
    finished_pod(namespace, "free")
    held = kubectl_json("get", "pod", held["metadata"]["name"], "-n", namespace)
    assert held["status"]["phase"] == "Running"
    assert "running" in held["status"]["containerStatuses"][0]["state"]

    kubectl("annotate", "pod", held["metadata"]["name"], "-n", namespace, "kwok.axolotl.ai/hold-")
    assert finished_pod(namespace, "held")["status"]["phase"] == "Succeeded"
    job_condition(namespace, "held", "Complete")


def test_exit_code_fails_pod_and_matches_pod_failure_policy(namespace, apply_yaml, finished_pod,
                                                            job_condition):
    rules = [{"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [3]}}]
    apply_yaml(job("exit3", {"kwok.axolotl.ai/exit-code": "3",
                             "kwok.axolotl.ai/termination-message": "bad config: epochs"}, rules), namespace)
    pod = finished_pod(namespace, "exit3")
    assert pod["status"]["phase"] == "Failed"
    assert terminated(pod)["exitCode"] == 3
    assert terminated(pod)["reason"] == "Error"
    assert terminated(pod)["message"] == "bad config: epochs"
    failed = job_condition(namespace, "exit3", "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert "exit code 3" in failed["message"]


def test_exit_code_zero_succeeds(namespace, apply_yaml, finished_pod):
    apply_yaml(job("exit0", {"kwok.axolotl.ai/exit-code": "0"}), namespace)
    pod = finished_pod(namespace, "exit0")
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["exitCode"] == 0


def test_oom_killed(namespace, apply_yaml, finished_pod, job_condition):
    apply_yaml(job("oom", {"kwok.axolotl.ai/oom": "true"}), namespace)
    pod = finished_pod(namespace, "oom")
    assert pod["status"]["phase"] == "Failed"
    assert terminated(pod)["reason"] == "OOMKilled"
    assert terminated(pod)["exitCode"] == 137
    assert job_condition(namespace, "oom", "Failed")["reason"] == "BackoffLimitExceeded"


def test_evicted_with_disruption_target(namespace, apply_yaml, finished_pod, job_condition):
    rules = [{"action": "FailJob", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]
    apply_yaml(job("evicted", {"kwok.axolotl.ai/evict": "true"}, rules), namespace)
    pod = finished_pod(namespace, "evicted")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["reason"] == "Evicted"
    assert condition(pod, "DisruptionTarget")["status"] == "True"
    failed = job_condition(namespace, "evicted", "Failed")
    assert failed["reason"] == "PodFailurePolicy"
    assert "DisruptionTarget" in failed["message"]


def test_termination_message_on_success(namespace, apply_yaml, finished_pod):
    message = '{"final_loss": 1.23, "steps": 10}'
    apply_yaml(job("summary", {"kwok.axolotl.ai/termination-message": message}), namespace)
    pod = finished_pod(namespace, "summary")
    assert pod["status"]["phase"] == "Succeeded"
    assert terminated(pod)["message"] == message


def test_run_seconds_sets_how_long_the_pod_runs(namespace, apply_yaml, finished_pod):
    apply_yaml(job("slow", {"kwok.axolotl.ai/run-seconds": "4"}), namespace)
    pod = finished_pod(namespace, "slow")
    state = terminated(pod)
    assert pod["status"]["phase"] == "Succeeded"
    # API timestamps have one-second resolution; a 4 s delay always shows as >= 4 s.
    assert (ts(state["finishedAt"]) - ts(state["startedAt"])).total_seconds() >= 4


def test_plain_pod_without_job_stays_running_and_deletes(namespace, apply_yaml, kubectl, kubectl_json,
                                                         wait_for):
    apply_yaml([{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "server"},
                 "spec": {"containers": [{"name": "main", "image": "busybox"}]}},
                job("witness", {"kwok.axolotl.ai/run-seconds": "0"})], namespace)

    def witness_done() -> bool:
        pods = kubectl_json("get", "pods", "-n", namespace, "-l", "job-name=witness")["items"]
        return any(p["status"].get("phase") == "Succeeded" for p in pods)

    wait_for(witness_done, what="witness job pod Succeeded")
    pod = kubectl_json("get", "pod/server", "-n", namespace)
    assert pod["status"]["phase"] == "Running"
    assert condition(pod, "Ready")["status"] == "True"
    kubectl("delete", "pod", "server", "-n", namespace, "--wait=true", "--timeout=60s")
    assert not kubectl("get", "pod", "server", "-n", namespace, "--ignore-not-found")
