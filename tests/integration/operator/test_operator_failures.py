"""Truthful failures: each says what happened and what to do, in status, conditions and a Warning Event."""

from __future__ import annotations

import json

import pytest
from operator_support import (
    apply_yaml,
    children,
    condition,
    events_of,
    get_axj,
    kubectl_json,
    kubelet_reports_waiting,
    make_axj,
    pods_of,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration


def summary(**fields) -> str:
    return json.dumps({"outcome": "failed", "exitCode": 1, "runtimeSeconds": 12.5, **fields})


def assert_warning_event(namespace: str, name: str, reason: str, text: str) -> None:
    def found():
        return [
            e
            for e in events_of(namespace, name)
            if e["type"] == "Warning" and e["reason"] == reason and text in e["message"]
        ]

    wait_for(found, timeout=30, what=f"a Warning event {reason} on {name}")


def test_unschedulable_names_the_gpu_shortage(op, namespace):
    apply_yaml(make_axj("huge", gpus=12), namespace)
    obj = wait_phase(namespace, "huge", "Pending", "Unschedulable")
    message = obj["status"]["message"]
    assert "needs 12 nvidia.com/gpu on one node" in message
    assert "nodes are available" in message and "Insufficient nvidia.com/gpu" in message
    assert condition(obj, "Ready")["reason"] == "Unschedulable"
    assert_warning_event(namespace, "huge", "Unschedulable", "Insufficient nvidia.com/gpu")


def test_oom_killed(op, namespace):
    apply_yaml(
        make_axj(
            "oom",
            {"kwok.axolotl.ai/oom": "true", "kwok.axolotl.ai/run-seconds": "0"},
            backoffLimit=0,
            resources={"limits": {"memory": "48Gi"}},
        ),
        namespace,
    )
    obj = wait_phase(namespace, "oom", "Failed", "OOMKilled")
    assert "OOMKilled" in obj["status"]["message"] and "limit 48Gi" in obj["status"]["message"]
    assert "micro_batch_size" in obj["status"]["message"]
    assert condition(obj, "Failed")["reason"] == "OOMKilled"
    assert_warning_event(namespace, "oom", "OOMKilled", "OOMKilled")


def test_non_zero_exit_retries_then_reports_the_runner_message(op, namespace):
    knobs = {
        "kwok.axolotl.ai/exit-code": "1",
        "kwok.axolotl.ai/run-seconds": "0",
        "kwok.axolotl.ai/termination-message": summary(error={"message": "CUDA error: device-side assert"}),
    }
    apply_yaml(make_axj("crash", knobs, backoffLimit=1), namespace)
    obj = wait_phase(namespace, "crash", "Failed", "BackoffLimitExceeded")
    message = obj["status"]["message"]
    assert "failed 2 time(s), using up backoffLimit 1" in message
    assert "exited with code 1: CUDA error: device-side assert" in message
    assert obj["status"]["attempts"] == 2
    assert len(pods_of(namespace, "crash")) == 2
    assert_warning_event(namespace, "crash", "BackoffLimitExceeded", "CUDA error")


def test_plain_text_termination_message(op, namespace):
    knobs = {
        "kwok.axolotl.ai/exit-code": "1",
        "kwok.axolotl.ai/run-seconds": "0",
        "kwok.axolotl.ai/termination-message": "Traceback (most recent call last):\nKeyError: 'text'",
    }
    apply_yaml(make_axj("plain", knobs, backoffLimit=0), namespace)
    obj = wait_phase(namespace, "plain", "Failed", "BackoffLimitExceeded")
    assert "KeyError: 'text'" in obj["status"]["message"]


def test_invalid_config_exit_fails_at_once_without_retries(op, namespace):
    text = json.dumps(
        {
            "outcome": "invalid_config",
            "exitCode": 78,
            "runtimeSeconds": 4.2,
            "error": {"message": "value must be at least 1", "key": "micro_batch_size"},
        }
    )
    knobs = {
        "kwok.axolotl.ai/exit-code": "78",
        "kwok.axolotl.ai/run-seconds": "0",
        "kwok.axolotl.ai/termination-message": text,
    }
    apply_yaml(make_axj("badcfg", knobs, backoffLimit=5), namespace)
    obj = wait_phase(namespace, "badcfg", "Failed", "InvalidConfig")
    assert "spec.config.micro_batch_size: value must be at least 1" in obj["status"]["message"]
    assert "not retried" in obj["status"]["message"]
    assert obj["status"]["attempts"] == 1
    assert len(pods_of(namespace, "badcfg")) == 1  # backoffLimit 5, yet no retry
    assert_warning_event(namespace, "badcfg", "InvalidConfig", "micro_batch_size")


def test_missing_secret_names_it(op, namespace, fake_kubelet_node):
    apply_yaml(
        make_axj(
            "nosecret",
            secrets={"hfToken": {"name": "hf-missing", "key": "token"}},
            nodeSelector=fake_kubelet_node["nodeSelector"],
            tolerations=fake_kubelet_node["tolerations"],
        ),
        namespace,
    )
    pod = wait_for(
        lambda: next((p for p in pods_of(namespace, "nosecret") if p["spec"].get("nodeName")), None),
        timeout=60,
        what="the pod bound to the test node",
    )
    # What the kubelet writes when a secretKeyRef names a Secret that does not exist.
    kubelet_reports_waiting(namespace, pod, "CreateContainerConfigError", 'secret "hf-missing" not found')
    obj = wait_phase(namespace, "nosecret", "Pending", "CreateContainerConfigError")
    assert 'secret "hf-missing" not found' in obj["status"]["message"]
    assert "spec.secrets" in obj["status"]["message"]
    assert_warning_event(namespace, "nosecret", "CreateContainerConfigError", "hf-missing")


def test_image_pull_error(op, namespace, fake_kubelet_node):
    apply_yaml(
        make_axj(
            "noimage",
            image="registry.invalid/trainer:nope",
            nodeSelector=fake_kubelet_node["nodeSelector"],
            tolerations=fake_kubelet_node["tolerations"],
        ),
        namespace,
    )
    pod = wait_for(
        lambda: next((p for p in pods_of(namespace, "noimage") if p["spec"].get("nodeName")), None),
        timeout=60,
        what="the pod bound to the test node",
    )
    kubelet_reports_waiting(
        namespace, pod, "ImagePullBackOff", 'Back-off pulling image "registry.invalid/trainer:nope"'
    )
    obj = wait_phase(namespace, "noimage", "Pending", "ImagePullFailed")
    assert "registry.invalid/trainer:nope" in obj["status"]["message"]
    assert "imagePullSecrets" in obj["status"]["message"]
    assert_warning_event(namespace, "noimage", "ImagePullFailed", "registry.invalid/trainer:nope")


def test_invalid_spec_past_admission_fails_once_and_creates_nothing(op, namespace):
    # The CRD schema accepts this (no webhook); the operator's validation does not.
    bad = make_axj("invalid", config={"load_in_4bit": True, "adapter": None, "lora_r": None, "epochz": 3})
    apply_yaml(bad, namespace)
    obj = wait_phase(namespace, "invalid", "Failed", "InvalidSpec")
    message = obj["status"]["message"]
    assert "spec.config.load_in_4bit" in message and "set adapter" in message
    assert condition(obj, "Created")["status"] == "False"
    assert condition(obj, "Stalled")["status"] == "True"
    for kind in ("jobs", "configmaps", "pvc", "pods"):
        assert children(namespace, "invalid", kind) == []
    failure = f"{namespace}/invalid: not reconciled (until the spec changes): invalid spec, nothing created"
    wait_for(lambda: failure in op.log(), timeout=30, what="the reconcile stopped (no retry loop)")
    events = events_of(namespace, "invalid")
    assert [e["reason"] for e in events if e["reason"] == "InvalidSpec"] == ["InvalidSpec"]
    status_before = get_axj(namespace, "invalid")["status"]
    op.restart()  # resume re-validates: same status, no second event, still nothing created
    wait_for(lambda: op.log().count(failure) == 2, timeout=60, what="the resumed reconcile")
    assert get_axj(namespace, "invalid")["status"] == status_before
    assert [e["reason"] for e in events_of(namespace, "invalid") if e["reason"] == "InvalidSpec"] == [
        "InvalidSpec"
    ]
    assert kubectl_json("get", "jobs", "-n", namespace)["items"] == []
