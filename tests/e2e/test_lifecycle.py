"""A training job's life beyond the happy path, with real pods and the in-cluster operator: a config
only Axolotl rejects, suspend and resume from a checkpoint, and the operator replaced mid-training."""

from __future__ import annotations

from typing import Any

import pytest
from axolotl_operator.trainer_contract import EXIT_INVALID_CONFIG
from e2e_support import (
    OPERATOR_SELECTOR,
    Release,
    Workspace,
    apply_yaml,
    cpu_job,
    kubectl,
    kubectl_json,
    termination_summary,
    training_pods,
    wait_for,
    wait_for_phase,
)

pytestmark = pytest.mark.e2e


def progress_step(name: str, namespace: str) -> int:
    status = kubectl_json("get", "axj", name, "-n", namespace).get("status") or {}
    return int((status.get("progress") or {}).get("step") or 0)


def is_ready(obj: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"].get("conditions", []))


def test_a_config_only_axolotl_rejects_fails_once_in_the_pod_naming_the_key(
    release: Release, workspace: Workspace
) -> None:
    namespace = workspace.namespace
    # The operator's API accepts this; Axolotl's validator refuses a save_steps that cannot apply.
    job = cpu_job("rejected", workspace.claim, spec={"backoffLimit": 3}, save_strategy="epoch", save_steps=10)
    apply_yaml(job, namespace)

    failed = wait_for_phase("rejected", namespace, "Failed", timeout=300)
    status = failed["status"]
    assert status["reason"] == "InvalidConfig", status
    assert "save_strategy" in status["message"], status["message"]
    # No retries although backoffLimit is 3: the Job's podFailurePolicy fails it on the runner's exit code.
    pods = training_pods("rejected", namespace)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    terminated = pods[0]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == EXIT_INVALID_CONFIG
    summary = termination_summary(pods[0])
    assert summary["outcome"] == "invalid_config" and summary["error"]["key"] == "save_strategy"
    batch_job = kubectl_json("get", "job", "rejected", "-n", namespace)
    assert any(c["type"] == "Failed" and c["reason"] == "PodFailurePolicy"
               for c in batch_job["status"]["conditions"])
    assert status["attempts"] == 1
    assert not workspace.host_path("outputs", "rejected").exists()  # it stopped at validation


def test_suspend_removes_the_pod_and_resume_continues_from_the_last_checkpoint(
    release: Release, workspace: Workspace
) -> None:
    namespace = workspace.namespace
    apply_yaml(cpu_job("pausable", workspace.claim, max_steps=400, save_steps=20), namespace)
    checkpoints = workspace.host_path("outputs", "pausable")

    def has_checkpoint() -> bool:
        return progress_step("pausable", namespace) >= 30 and any(checkpoints.glob("checkpoint-*"))

    wait_for(has_checkpoint, timeout=600, interval=1, what="a checkpoint of the running job")
    reported = progress_step("pausable", namespace)  # the trainer is at least this far
    kubectl("patch", "axj", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')

    def suspended() -> bool:
        phase = kubectl_json("get", "axj", "pausable", "-n", namespace)["status"]["phase"]
        return phase == "Suspended" and not training_pods("pausable", namespace)

    wait_for(suspended, timeout=300, interval=1, what="Suspended with no pod left")
    assert kubectl_json("get", "job", "pausable", "-n", namespace)["spec"]["suspend"] is True
    saved = sorted(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*"))
    assert saved and saved[-1] < 400, saved
    # SIGTERM saved a checkpoint where training stood (not only the last periodic one, every 20 steps),
    # and the status says which.
    assert saved[-1] >= reported, (saved, reported)

    def says_where() -> bool:
        message = kubectl_json("get", "axj", "pausable", "-n", namespace)["status"]["message"]
        return message.endswith(f"checkpoint saved at step {saved[-1]}")

    wait_for(says_where, timeout=60, interval=1, what="the Suspended message naming the checkpoint's step")

    kubectl("patch", "axj", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    done = wait_for_phase("pausable", namespace, "Succeeded", timeout=900)

    pods = training_pods("pausable", namespace)
    assert len(pods) == 1  # the suspended attempt's pod is gone; this one resumed
    summary = termination_summary(pods[0])
    resumed_from = summary.get("resumedFrom") or ""
    assert resumed_from.startswith("/workspace/data/outputs/pausable/checkpoint-"), summary
    assert int(resumed_from.rsplit("-", 1)[1]) == saved[-1]  # from the checkpoint saved on SIGTERM
    assert "resuming from the last complete checkpoint" in kubectl("logs", pods[0]["metadata"]["name"],
                                                                  "-n", namespace)
    assert done["status"]["progress"]["step"] == done["status"]["progress"]["totalSteps"] == 400


def test_a_replaced_operator_picks_the_training_job_up_without_a_duplicate(
    release: Release, workspace: Workspace
) -> None:
    namespace = workspace.namespace
    apply_yaml(cpu_job("survivor", workspace.claim, max_steps=300), namespace)
    wait_for(lambda: progress_step("survivor", namespace) > 0, timeout=600, interval=1,
             what="the job training with live progress")
    job_uid = kubectl_json("get", "job", "survivor", "-n", namespace)["metadata"]["uid"]
    old = kubectl_json("get", "pods", "-n", release.namespace, "-l", OPERATOR_SELECTOR)["items"]
    assert len(old) == 1
    kubectl("delete", "pod", old[0]["metadata"]["name"], "-n", release.namespace, "--wait=false")

    def replacement() -> dict[str, Any] | None:
        pods = kubectl_json("get", "pods", "-n", release.namespace, "-l", OPERATOR_SELECTOR)["items"]
        ready = [p for p in pods if p["metadata"]["uid"] != old[0]["metadata"]["uid"] and is_ready(p)]
        return ready[0] if ready and len(pods) == 1 else None

    wait_for(replacement, timeout=300, interval=1, what="the operator's replacement pod, ready")

    done = wait_for_phase("survivor", namespace, "Succeeded", timeout=900)
    jobs = kubectl_json("get", "jobs", "-n", namespace, "-l", "axolotl.ai/job=survivor")["items"]
    assert [j["metadata"]["uid"] for j in jobs] == [job_uid]  # picked up, not created again
    assert len(training_pods("survivor", namespace)) == 1
    status = done["status"]
    assert status["attempts"] == 1
    assert status["progress"]["step"] == status["progress"]["totalSteps"] == 300
    assert is_ready(done)
