"""The product's chain, end to end on the real node: `kubectl apply` an AxolotlJob -> the in-cluster
operator creates the Job -> a pod from the trainer image runs real Axolotl on a CPU, with the claim
at /workspace/data, the config at /src/config and HF_TOKEN from a Secret -> live step/loss reach
`kubectl get axj` through the progress Service -> Succeeded, the adapter on the claim, the job's step
and loss on the operator's /metrics, and the token's value nowhere but in its Secret."""

from __future__ import annotations

import json
import re

import pytest
from e2e_support import (
    OPERATOR_SELECTOR,
    Release,
    Workspace,
    apply_yaml,
    cpu_job,
    from_a_pod,
    get_axj,
    http_get,
    kubectl,
    kubectl_json,
    training_pods,
    wait_for,
    wait_for_phase,
)

pytestmark = pytest.mark.e2e

def test_cpu_job_trains_for_real_with_live_progress_and_metrics(
    release: Release, workspace: Workspace
) -> None:
    namespace = workspace.namespace
    apply_yaml(cpu_job("tiny", workspace.claim), namespace)

    # While it runs, `kubectl get axj` shows progress and loss from the live reports.
    def live() -> dict[str, str] | None:
        row = get_axj("tiny", namespace)
        assert row["PHASE"] not in ("Failed", "Succeeded"), f"finished before live progress was seen: {row}"
        mid_run = row["PHASE"] == "Running" and row["LOSS"] and 0 < int(row["PROGRESS"] or 0) < 100
        return row if mid_run else None

    running = wait_for(live, timeout=600, interval=1, what="live progress in kubectl get axj")
    assert float(running["LOSS"]) > 0 and running["ETA"]

    job = wait_for_phase("tiny", namespace, "Succeeded", timeout=600)
    progress = job["status"]["progress"]
    assert progress["step"] == progress["totalSteps"] == 300
    assert progress["loss"] < float(running["LOSS"])  # it learned: the final loss is below a live one

    # The adapter is on the claim, under the job's output directory.
    output = workspace.host_path("outputs", "tiny")
    assert (output / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((output / "adapter_config.json").read_text())["r"] == 4
    # ... and the status says so, from the runner's summary.
    outputs = job["status"]["outputs"]
    assert outputs["adapterPath"] == outputs["result"] == "/workspace/data/outputs/tiny", outputs
    assert outputs["lastCheckpoint"].startswith("/workspace/data/outputs/tiny/checkpoint-"), outputs
    assert "hubUrl" not in outputs and "modelPath" not in outputs

    # The operator's /metrics, scraped through its Service from inside the cluster.
    host = f"{release.fullname}-metrics.{release.namespace}.svc.cluster.local"
    metrics = from_a_pod(namespace, http_get(host, 9400, "/metrics"))
    labels = f'{{name="tiny",namespace="{namespace}"}}'
    step = re.search(rf"^axolotl_operator_job_step{re.escape(labels)} (\S+)$", metrics, re.M)
    loss = re.search(rf"^axolotl_operator_job_loss{re.escape(labels)} (\S+)$", metrics, re.M)
    assert step and float(step.group(1)) == 300, metrics[-2000:]
    assert loss and float(loss.group(1)) > 0

    # `kubectl logs` of the training pod shows Axolotl's own output.
    train_log = kubectl("logs", training_pods("tiny", namespace)[0]["metadata"]["name"], "-n", namespace)
    assert "axolotl" in train_log.lower() and "'loss':" in train_log, train_log[-3000:]

    # The token's value is in its Secret only.
    operator_pods = kubectl_json("get", "pods", "-n", release.namespace, "-l", OPERATOR_SELECTOR)["items"]
    places = {
        "training log": train_log,
        "operator log": kubectl("logs", operator_pods[0]["metadata"]["name"], "-n", release.namespace),
        "configmaps": kubectl("get", "configmaps", "-n", namespace, "-o", "yaml"),
        "axolotljob": kubectl("get", "axj", "tiny", "-n", namespace, "-o", "yaml"),
        "events": kubectl("get", "events", "-n", namespace, "-o", "yaml"),
        "pods": kubectl("get", "pods", "-n", namespace, "-o", "yaml"),
    }
    assert [where for where, text in places.items() if workspace.token in text] == []
