"""Many jobs at once, a SIGKILL in the middle of creating them, and no Secret value anywhere."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from operator_support import (
    apply_yaml,
    children,
    get_axj,
    kubectl,
    kubectl_json,
    make_axj,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration

COUNT = 20


def all_succeeded(namespace: str, count: int):
    def check():
        items = kubectl_json("get", "axolotljobs", "-n", namespace)["items"]
        phases = [(i.get("status") or {}).get("phase") for i in items]
        if "Failed" in phases:
            raise AssertionError(f"a job failed: {[i.get('status') for i in items]}")
        return items if len(items) == count and phases.count("Succeeded") == count else None

    return check


def assert_one_child_each(namespace: str, items: list[dict]) -> None:
    for item in items:
        name, uid = item["metadata"]["name"], item["metadata"]["uid"]
        for kind in ("jobs", "configmaps", "pvc"):
            found = children(namespace, name, kind)
            assert len(found) == 1, f"{name}: {len(found)} {kind}"
        (job,) = children(namespace, name, "jobs")
        assert job["metadata"]["ownerReferences"][0]["uid"] == uid
        assert len(children(namespace, name, "pods")) == 1, f"{name}: more than one training pod"


def test_twenty_jobs_at_once_all_succeed(op, namespace):
    apply_yaml([make_axj(f"many-{i:02d}") for i in range(COUNT)], namespace)
    items = wait_for(all_succeeded(namespace, COUNT), timeout=180, interval=0.5, what="20 jobs Succeeded")
    assert_one_child_each(namespace, items)
    assert all(i["status"]["attempts"] == 1 for i in items)


def test_sigkill_while_creating_twenty_jobs_then_restart_converges(op, namespace):
    # The 20 jobs wait for the operator, which is killed as soon as its log shows the first child made:
    # in the middle of creating the 20 x 3 children (kubectl is too slow to catch that moment).
    op.stop()
    apply_yaml([make_axj(f"kill-{i:02d}") for i in range(COUNT)], namespace)
    offset = len(op.log())
    first_child = re.compile(rf"{re.escape(namespace)}/kill-\d+: created ")
    op.start(wait=False)
    wait_for(lambda: first_child.search(op.log(), offset), timeout=60, interval=0.005, what="the first child")
    assert op.kill() == -9
    made = len(kubectl("get", "jobs", "-n", namespace, "-o", "name").split())
    assert made < COUNT, "the operator finished before it was killed; the test proves nothing"
    op.start()
    items = wait_for(all_succeeded(namespace, COUNT), timeout=180, interval=0.5, what="20 jobs Succeeded")
    assert_one_child_each(namespace, items)


def test_no_secret_value_leaks(op, namespace):
    token = f"hf_LEAKCHECK{uuid.uuid4().hex}"
    kubectl("create", "secret", "generic", "hf", "-n", namespace, f"--from-literal=token={token}")
    apply_yaml(make_axj("secretive", secrets={"hfToken": {"name": "hf", "key": "token"}}), namespace)
    wait_phase(namespace, "secretive", "Succeeded")
    # A token pasted into the config (past admission): refused without echoing it.
    apply_yaml(make_axj("pasted", config={"hf_token": token}), namespace)
    pasted = wait_phase(namespace, "pasted", "Failed", "InvalidSpec")
    assert "hf_token" in pasted["status"]["message"]

    job = kubectl_json("get", "job", "secretive", "-n", namespace)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    config_maps = kubectl("get", "configmaps", "-n", namespace, "-o", "json")
    statuses = json.dumps([get_axj(namespace, n).get("status") for n in ("secretive", "pasted")])
    events = kubectl("get", "events", "-n", namespace, "-o", "json")
    for where, text in (
        ("ConfigMaps", config_maps),
        ("status", statuses),
        ("Events", events),
        ("operator log", op.log()),
    ):
        assert token not in text, f"the Secret value leaked into the {where}"
    assert "secretive" in events and "pasted" in events  # the checks above looked at real content
