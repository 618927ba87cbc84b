"""Reconcile and lifecycle on the real control plane: children, status, retries, suspend, Kueue, deadlines."""

from __future__ import annotations

import json

import pytest
import yaml
from operator_support import (
    HOLD,
    ROOT,
    OperatorProcess,
    apply_yaml,
    children,
    condition,
    get_axj,
    kubectl,
    kubectl_json,
    make_axj,
    patch_spec,
    pods_of,
    wait_events,
    wait_for,
    wait_phase,
)
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.integration

CONDITIONS = ["Created", "Running", "Succeeded", "Failed", "Suspended", "Ready", "Stalled", "Reconciling"]


def metric(text: str, sample: str, **labels: str) -> float:
    """The value of the series `sample{labels}` (exactly these labels) in Prometheus text; 0 if absent
    (a labelled counter has no series before its first increment)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == sample and s.labels == labels:
                return s.value
    return 0.0


def running_pod(namespace: str, name: str, exclude: set[str] = frozenset()) -> dict:
    def find():
        return next(
            (
                p
                for p in pods_of(namespace, name)
                if p["status"].get("phase") == "Running" and p["metadata"]["name"] not in exclude
            ),
            None,
        )

    return wait_for(find, timeout=60, interval=0.2, what=f"a running pod of {name}")


def test_quickstart_creates_owned_children_and_succeeds(op, namespace):
    transitions = "axolotl_operator_transitions_total"
    training = {"phase": "Running", "reason": "Training"}
    succeeded = {"phase": "Succeeded", "reason": "Succeeded"}
    before = op.metrics()
    apply_yaml((ROOT / "examples" / "quickstart.yaml").read_text(), namespace)
    obj = wait_phase(namespace, "quickstart", "Succeeded")
    uid = obj["metadata"]["uid"]
    status = obj["status"]

    assert [c["type"] for c in status["conditions"]] == CONDITIONS
    assert condition(obj, "Ready")["status"] == "True" and condition(obj, "Stalled")["status"] == "False"
    assert condition(obj, "Created")["status"] == "True"
    assert all(c["observedGeneration"] == 1 for c in status["conditions"])
    assert status["observedGeneration"] == 1
    assert status["attempts"] == 1
    assert status["startTime"] and status["completionTime"]
    assert (status["jobName"], status["configMapName"], status["claimName"]) == (
        "quickstart",
        "quickstart-config",
        "quickstart-data",
    )
    assert status["outputs"]["outputDir"] == "/workspace/data/outputs/quickstart"
    assert "kopf" not in status  # Kopf keeps its state in annotations, not in our status

    job = kubectl_json("get", "job", "quickstart", "-n", namespace)
    config_map = kubectl_json("get", "configmap", "quickstart-config", "-n", namespace)
    for child in (job, config_map):
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["uid"], ref["controller"]) == ("AxolotlJob", uid, True)
    claim = kubectl_json("get", "pvc", "quickstart-data", "-n", namespace)
    assert "ownerReferences" not in claim["metadata"]
    assert claim["metadata"]["annotations"]["axolotl.ai/retain"] == "true"
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["auto_resume_from_checkpoints"] is True  # a retried pod resumes from its checkpoint

    meta = obj["metadata"]
    assert not meta.get("finalizers")  # deletion never waits for the operator
    # Kopf keeps nothing on the object: no diff base (the operator reconciles by generation), no
    # handler progress (no change handlers).
    assert all(not key.startswith("kopf.zalando.org") for key in meta.get("annotations", {}))
    assert "axolotl.ai/last-handled-configuration" not in meta.get("annotations", {})

    wait_events(namespace, "quickstart", "Training", "Succeeded")
    # The operator counts a transition before it posts its Event, so both are counted by now; other
    # jobs of this module's operator only add to the counters, hence the difference to `before`.
    after = op.metrics()
    for labels in (training, succeeded):
        assert metric(after, transitions, **labels) - metric(before, transitions, **labels) >= 1, labels
    # The phase gauge follows the watch stream, which may lag the status we read.
    wait_for(
        lambda: metric(op.metrics(), "axolotl_operator_jobs", phase="Succeeded") >= 1,
        timeout=30,
        what="axolotl_operator_jobs{phase=Succeeded} >= 1",
    )


def test_running_then_succeeded(op, namespace):
    apply_yaml(make_axj("held", HOLD), namespace)
    obj = wait_phase(namespace, "held", "Running")
    assert condition(obj, "Running")["status"] == "True"
    assert obj["status"]["startTime"]
    assert "kwok-gpu-" in obj["status"]["message"]
    pod = running_pod(namespace, "held")
    kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, "kwok.axolotl.ai/hold-")
    obj = wait_phase(namespace, "held", "Succeeded")
    assert condition(obj, "Running")["status"] == "False"


def test_retry_after_failure_counts_attempts_and_says_why(op, namespace):
    apply_yaml(make_axj("retry", HOLD, backoffLimit=2), namespace)
    first = running_pod(namespace, "retry")["metadata"]["name"]
    kubectl(
        "annotate",
        "pod",
        first,
        "-n",
        namespace,
        "--overwrite",
        "kwok.axolotl.ai/hold-",
        "kwok.axolotl.ai/exit-code=1",
        'kwok.axolotl.ai/termination-message={"outcome":"failed","exitCode":1,"runtimeSeconds":9,'
        '"error":{"message":"NCCL watchdog timeout"}}',
    )
    second = running_pod(namespace, "retry", exclude={first})["metadata"]["name"]

    def retried():
        status = get_axj(namespace, "retry").get("status") or {}
        return status if status.get("phase") == "Running" and status.get("attempts") == 2 else None

    status = wait_for(retried, timeout=60, what="Running on attempt 2")
    assert "NCCL watchdog timeout" in status["message"]
    assert "1 failure(s) of backoffLimit 2" in status["message"]
    kubectl("annotate", "pod", second, "-n", namespace, "kwok.axolotl.ai/hold-")
    obj = wait_phase(namespace, "retry", "Succeeded")
    assert obj["status"]["attempts"] == 2


def test_eviction_does_not_count_against_backoff_limit(op, namespace):
    apply_yaml(
        make_axj(
            "evicted", {"kwok.axolotl.ai/evict": "true", "kwok.axolotl.ai/run-seconds": "0"}, backoffLimit=0
        ),
        namespace,
    )

    def evicted_twice():
        pods = pods_of(namespace, "evicted")
        gone = [p for p in pods if p["status"].get("reason") == "Evicted"]
        return pods if len(gone) >= 2 else None

    wait_for(evicted_twice, timeout=60, what="two evicted pods")
    # backoffLimit 0 and two failed pods, yet neither the Job nor the AxolotlJob failed.
    job = kubectl_json("get", "job", "evicted", "-n", namespace)
    assert not any(
        c["type"] == "Failed" and c["status"] == "True" for c in job["status"].get("conditions", [])
    )
    assert job["status"].get("failed", 0) == 0

    def says_evicted():
        status = get_axj(namespace, "evicted").get("status") or {}
        return status if "evicted" in status.get("message", "") and status.get("attempts", 0) >= 2 else None

    status = wait_for(says_evicted, timeout=30, what="status naming the eviction")
    assert status["phase"] in {"Pending", "Running"}
    assert "does not count against backoffLimit" in status["message"]
    kubectl("delete", "axolotljob", "evicted", "-n", namespace, "--wait=false")


def test_suspend_and_resume(op, namespace):
    apply_yaml(make_axj("pausable", HOLD), namespace)
    wait_phase(namespace, "pausable", "Running")
    patch_spec(namespace, "pausable", {"suspend": True})
    obj = wait_phase(namespace, "pausable", "Suspended")
    assert condition(obj, "Suspended")["status"] == "True"
    assert kubectl_json("get", "job", "pausable", "-n", namespace)["spec"]["suspend"] is True
    wait_for(
        lambda: not [p for p in pods_of(namespace, "pausable") if p["status"].get("phase") == "Running"],
        timeout=60,
        what="running pods stopped",
    )

    patch_spec(namespace, "pausable", {"suspend": False})
    wait_phase(namespace, "pausable", "Running")
    assert kubectl_json("get", "job", "pausable", "-n", namespace)["spec"]["suspend"] is False
    kubectl(
        "annotate",
        "pod",
        running_pod(namespace, "pausable")["metadata"]["name"],
        "-n",
        namespace,
        "kwok.axolotl.ai/hold-",
    )
    obj = wait_phase(namespace, "pausable", "Succeeded")
    reasons = wait_events(namespace, "pausable", "Suspended", "Succeeded")
    assert reasons.count("Suspended") == 1 and reasons.count("Succeeded") == 1


def test_queue_name_creates_a_suspended_job_for_kueue(op, namespace):
    apply_yaml(make_axj("queued", queueName="team-a"), namespace)
    obj = wait_phase(namespace, "queued", "Pending", "Queued")
    assert "team-a" in obj["status"]["message"]
    job = kubectl_json("get", "job", "queued", "-n", namespace)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    # Kueue admits the workload by unsuspending the Job; the operator must not suspend it again.
    kubectl("patch", "job", "queued", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}')
    wait_phase(namespace, "queued", "Succeeded")


def test_deadline_and_ttl_changes_apply_but_config_is_immutable(op, namespace):
    apply_yaml(make_axj("limits", HOLD), namespace)
    wait_phase(namespace, "limits", "Running")

    with pytest.raises(Exception, match="immutable"):
        patch_spec(namespace, "limits", {"config": {"learning_rate": 0.1}})

    patch_spec(namespace, "limits", {"activeDeadlineSeconds": 1, "ttlSecondsAfterFinished": 3600})
    obj = wait_phase(namespace, "limits", "Failed", "DeadlineExceeded")
    assert "activeDeadlineSeconds (1 s)" in obj["status"]["message"]
    assert condition(obj, "Stalled")["status"] == "True"
    job = kubectl_json("get", "job", "limits", "-n", namespace)
    assert job["spec"]["activeDeadlineSeconds"] == 1
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"] == 2

    # TTL 0: the Job controller's TTL reaper deletes the finished Job; the result stays, nothing re-runs.
    patch_spec(namespace, "limits", {"ttlSecondsAfterFinished": 0})
    wait_for(lambda: not children(namespace, "limits", "jobs"), timeout=60, what="the Job deleted by its TTL")
    op.restart()  # resume must not train again
    wait_for(
        lambda: f"{namespace}/limits: reconciled: Failed and its Job is gone" in op.log(),
        timeout=60,
        what="the resumed reconcile",
    )
    obj = get_axj(namespace, "limits")
    assert (obj["status"]["phase"], obj["status"]["reason"]) == ("Failed", "DeadlineExceeded")
    assert condition(obj, "Created")["reason"] == "JobDeleted"
    assert not children(namespace, "limits", "jobs")


def test_namespaced_operator_leaves_other_namespaces_alone(op, namespace, tmp_path):
    other = f"{namespace[:50]}-other"
    kubectl("create", "namespace", other)
    try:
        op.stop()
        scoped = OperatorProcess(tmp_path / "scoped.log", scope=("--namespace", namespace))
        scoped.start()
        try:
            wait_for(
                lambda: kubectl("get", "serviceaccount", "default", "-n", other, "-o", "name"), timeout=60
            )
            apply_yaml(make_axj("outside"), other)  # first, so it would be handled first if watched
            apply_yaml(make_axj("inside"), namespace)
            wait_phase(namespace, "inside", "Succeeded")
            assert "status" not in kubectl_json("get", "axolotljob", "outside", "-n", other)
            assert kubectl_json("get", "jobs", "-n", other)["items"] == []
        finally:
            assert scoped.stop() == 0
    finally:
        kubectl("delete", "namespace", other, "--wait=false", check=False)


def test_runner_summary_fills_outputs_and_final_progress(op, namespace):
    summary = {
        "outcome": "succeeded",
        "exitCode": 0,
        "runtimeSeconds": 812.4,
        "finalLoss": 0.8731,
        "steps": 500,
        "totalSteps": 500,
        "outputDir": "/workspace/data/outputs/summarised",
        "lastCheckpoint": "/workspace/data/outputs/summarised/checkpoint-500",
        "hubModelId": "me/tuned",
        "adapterPath": "/workspace/data/outputs/summarised",
        "hubUrl": "https://huggingface.co/me/tuned",
        # The container's word: a URL with a query (which may carry a token) never reaches the status.
        "wandbUrl": "https://wandb.ai/me/p/runs/1?s3cret=1",
    }
    knobs = {"kwok.axolotl.ai/termination-message": json.dumps(summary), "kwok.axolotl.ai/run-seconds": "0"}
    apply_yaml(make_axj("summarised", knobs), namespace)
    status = wait_phase(namespace, "summarised", "Succeeded")["status"]
    assert "500/500 steps" in status["message"] and "final loss 0.8731" in status["message"]
    assert "pushed to https://huggingface.co/me/tuned" in status["message"]
    assert status["outputs"] == {
        "result": "https://huggingface.co/me/tuned",
        "outputDir": summary["outputDir"],
        "adapterPath": summary["adapterPath"],
        "lastCheckpoint": summary["lastCheckpoint"],
        "hubModelId": "me/tuned",
        "hubUrl": "https://huggingface.co/me/tuned",
    }
    wide = kubectl("get", "axolotljob", "summarised", "-n", namespace, "-o", "wide", "--no-headers").split()
    assert "https://huggingface.co/me/tuned" in wide  # the RESULT column
    described = kubectl("describe", "axolotljob", "summarised", "-n", namespace)
    shown = described[described.index("\nStatus:") :]  # the spec holds the fake kubelet's summary knob
    assert "https://huggingface.co/me/tuned" in shown and "s3cret" not in shown
    # The final progress is written right after the phase, by its own field manager (a second apply).
    final = wait_for(
        lambda: get_axj(namespace, "summarised")["status"].get("progress"), what="the final progress"
    )
    assert (final["percent"], final["loss"]) == (100, 0.8731)
    row = kubectl("get", "axolotljob", "summarised", "-n", namespace, "--no-headers").split()
    assert "100" in row and "0.8731" in row  # the printer columns PROGRESS and LOSS
