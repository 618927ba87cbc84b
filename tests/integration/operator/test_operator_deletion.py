"""Deletion: children go by owner references, the data volume stays, an existing claim is never touched,
and deleting never waits for the operator."""

from __future__ import annotations

import json

import pytest
from operator_support import (
    apply_yaml,
    children,
    kubectl,
    kubectl_json,
    make_axj,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration
HOLD_FINALIZER = "test.axolotl.ai/hold"


def gone(namespace: str, name: str, *kinds: str):
    return lambda: all(not children(namespace, name, kind) for kind in kinds)


def test_children_are_garbage_collected_and_the_claim_is_kept(op, namespace):
    apply_yaml(make_axj("doomed"), namespace)
    wait_phase(namespace, "doomed", "Succeeded")
    kubectl("delete", "axolotljob", "doomed", "-n", namespace, "--timeout=30s")
    wait_for(gone(namespace, "doomed", "jobs", "configmaps", "pods"), timeout=60, what="children collected")
    claim = kubectl_json("get", "pvc", "doomed-data", "-n", namespace)
    assert claim["metadata"]["annotations"]["axolotl.ai/retain"] == "true"
    assert claim["metadata"].get("deletionTimestamp") is None


def test_existing_claim_is_used_and_never_touched(op, namespace):
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "team-data", "labels": {"owner": "team"}},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply_yaml(claim, namespace)
    apply_yaml(make_axj("shared", storage={"existingClaim": "team-data"}), namespace)
    obj = wait_phase(namespace, "shared", "Succeeded")
    assert obj["status"]["claimName"] == "team-data"
    job = kubectl_json("get", "job", "shared", "-n", namespace)
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "team-data"
    assert kubectl("get", "pvc", "-n", namespace, "-o", "name").split() == ["persistentvolumeclaim/team-data"]
    kubectl("delete", "axolotljob", "shared", "-n", namespace, "--timeout=30s")
    wait_for(gone(namespace, "shared", "jobs", "configmaps"), timeout=60, what="children collected")
    after = kubectl_json("get", "pvc", "team-data", "-n", namespace)["metadata"]
    assert after.get("deletionTimestamp") is None
    assert "ownerReferences" not in after
    assert after["labels"] == {"owner": "team"}
    assert not (after.get("annotations") or {}).get("axolotl.ai/retain")


def test_deletion_does_not_wait_for_a_stopped_operator(op, namespace):
    apply_yaml(make_axj("orphan", {"kwok.axolotl.ai/hold": "true"}), namespace)
    wait_phase(namespace, "orphan", "Running")
    assert op.stop() == 0  # graceful shutdown on SIGTERM
    kubectl("delete", "axolotljob", "orphan", "-n", namespace, "--timeout=30s")
    wait_for(gone(namespace, "orphan", "jobs", "configmaps", "pods"), timeout=60, what="children collected")
    op.start()


def test_recreated_job_waits_for_the_old_children_then_runs(op, namespace):
    apply_yaml(make_axj("again", {"kwok.axolotl.ai/hold": "true"}), namespace)
    first = wait_phase(namespace, "again", "Running")
    # Keep the old Job around (a finalizer of the test's own) after its AxolotlJob is deleted, so the
    # re-created AxolotlJob meets a Job of the same name that belongs to the old uid.
    kubectl(
        "patch",
        "job",
        "again",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        json.dumps({"metadata": {"finalizers": [HOLD_FINALIZER]}}),
    )
    kubectl("delete", "axolotljob", "again", "-n", namespace, "--wait=false")
    wait_for(
        lambda: not kubectl("get", "axolotljob", "-n", namespace, "-o", "name"),
        timeout=30,
        what="the AxolotlJob deleted",
    )
    wait_for(
        lambda: kubectl_json("get", "job", "again", "-n", namespace)["metadata"].get("deletionTimestamp"),
        timeout=30,
        what="the old Job marked for deletion by the garbage collector",
    )
    apply_yaml(make_axj("again"), namespace)
    # The old job's claim stays (its data outlives the job) but was made for the old uid: it is not
    # taken over by name. The status says how to train on it.
    conflict = wait_phase(namespace, "again", "Pending", "ChildNameConflict")["status"]
    assert "PersistentVolumeClaim again-data" in conflict["message"]
    assert "spec.storage.existingClaim: again-data" in conflict["message"]
    kubectl(
        "patch", "axj", "again", "-n", namespace, "--type=merge",
        "-p", '{"spec":{"storage":{"existingClaim":"again-data"}}}',
    )
    waiting = f"{namespace}/again: reconcile waits 3s: Job again (controlled by AxolotlJob"
    wait_for(lambda: waiting in op.log(), timeout=60, what="the reconcile waiting for the old Job")
    waiting_status = wait_phase(namespace, "again", "Pending", "WaitingForCleanup")["status"]
    assert first["metadata"]["uid"] in waiting_status["message"]
    kubectl(
        "patch", "job", "again", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )
    obj = wait_phase(namespace, "again", "Succeeded", timeout=90)
    uid = obj["metadata"]["uid"]
    assert uid != first["metadata"]["uid"]
    (job,) = children(namespace, "again", "jobs")
    assert job["metadata"]["ownerReferences"][0]["uid"] == uid
    assert obj["status"]["attempts"] == 1


def test_the_shared_cache_is_mounted_by_every_job_and_outlives_them_all(op, namespace):
    """spec.cache: two jobs mount one cache claim (HF_HOME on it); deleting both leaves it untouched."""
    cache = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "model-cache", "labels": {"owner": "platform"}},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    apply_yaml(cache, namespace)
    for name in ("cache-a", "cache-b"):
        apply_yaml(make_axj(name, cache={"claimName": "model-cache"}), namespace)
    for name in ("cache-a", "cache-b"):
        wait_phase(namespace, name, "Succeeded")
        pod = kubectl_json("get", "job", name, "-n", namespace)["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "model-cache"
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        assert env["HF_HOME"] == "/workspace/cache/huggingface"
    for name in ("cache-a", "cache-b"):
        kubectl("delete", "axolotljob", name, "-n", namespace, "--timeout=30s")
    wait_for(gone(namespace, "cache-a", "jobs", "configmaps"), timeout=60, what="children collected")
    wait_for(gone(namespace, "cache-b", "jobs", "configmaps"), timeout=60, what="children collected")
    after = kubectl_json("get", "pvc", "model-cache", "-n", namespace)["metadata"]
    assert after.get("deletionTimestamp") is None
    assert "ownerReferences" not in after and after["labels"] == {"owner": "platform"}
