"""Multi-node on CPU: `nodes: 2, gpus: 0` becomes an Indexed Job whose two pods find each other through
the headless Service (rank 1 dials pod 0's DNS name) and train one model together with torchrun over
gloo. Both pods run on the one real node; the rendezvous, DNS and pod network are real."""

from __future__ import annotations

import pytest
from e2e_support import (
    Release,
    Workspace,
    apply_yaml,
    cpu_job,
    kubectl,
    kubectl_json,
    termination_summary,
    training_pods,
    wait_for_phase,
)

pytestmark = pytest.mark.e2e


def test_two_pods_rendezvous_through_the_headless_service_and_train_one_model(
    release: Release, workspace: Workspace
) -> None:
    namespace = workspace.namespace
    apply_yaml(cpu_job("pair", workspace.claim, spec={"nodes": 2}, max_steps=40, save_steps=20), namespace)

    done = wait_for_phase("pair", namespace, "Succeeded", timeout=900)

    job = kubectl_json("get", "job", "pair", "-n", namespace)["spec"]
    assert (job["completionMode"], job["completions"], job["parallelism"]) == ("Indexed", 2, 2)
    service = kubectl_json("get", "service", "pair", "-n", namespace)["spec"]
    assert service["clusterIP"] == "None"
    pods = sorted(training_pods("pair", namespace),
                  key=lambda p: p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])
    assert [p["status"]["phase"] for p in pods] == ["Succeeded", "Succeeded"]
    master = f"pair-0.pair.{namespace}.svc"
    for rank, pod in enumerate(pods):
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["MASTER_ADDR"] == master and env["NNODES"] == "2"
        assert pod["spec"]["hostname"] == f"pair-{rank}" and pod["spec"]["subdomain"] == "pair"
        log = kubectl("logs", pod["metadata"]["name"], "-n", namespace)
        assert f"--node_rank={rank}" in log and f"--master_addr={master}" in log, log[-3000:]
        # One data-parallel run, not two trainings side by side (transformers warns about the latter).
        assert "parallel_mode != ParallelMode.DISTRIBUTED" not in log
        assert termination_summary(pod)["outcome"] == "succeeded"
    progress = done["status"]["progress"]
    assert progress["step"] == progress["totalSteps"] == 40  # rank 0's numbers
    assert (workspace.host_path("outputs", "pair") / "adapter_model.safetensors").stat().st_size > 0
