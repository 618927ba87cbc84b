"""No takeover by name, on the real control plane: an object planted under a child's name is left
untouched (no owner reference, no patch, no pod mounting it), the job says which object blocks it, and
it goes on once the object is removed."""

from __future__ import annotations

import json

import pytest
from operator_support import apply_yaml, get_axj, kubectl, kubectl_json, make_axj, wait_phase

pytestmark = pytest.mark.integration


def test_a_planted_config_map_is_never_adopted(op, namespace):
    planted = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "victim-config",
            # The operator's own labels are not proof: only this AxolotlJob's uid annotation is.
            "labels": {"axolotl.ai/job": "victim", "app.kubernetes.io/managed-by": "axolotl-operator"},
        },
        "data": {"config.yaml": "base_model: attacker/model\n"},
    }
    kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(planted))
    apply_yaml(make_axj("victim"), namespace)
    status = wait_phase(namespace, "victim", "Pending", "ChildNameConflict", timeout=60)["status"]
    assert "ConfigMap victim-config" in status["message"] and "left untouched" in status["message"]

    still = kubectl_json("get", "configmap", "victim-config", "-n", namespace)
    assert "ownerReferences" not in still["metadata"]
    assert still["data"] == planted["data"]
    assert not kubectl("get", "jobs", "-n", namespace, "-o", "name")  # no pod would read the planted config
    reasons = kubectl("get", "events", "-n", namespace, "-o", "jsonpath={.items[*].reason}").split()
    assert "ChildNameConflict" in reasons

    kubectl("delete", "configmap", "victim-config", "-n", namespace)
    done = wait_phase(namespace, "victim", "Succeeded", timeout=120)  # the next reconcile (<= 30 s) goes on
    mine = kubectl_json("get", "configmap", "victim-config", "-n", namespace)
    assert mine["metadata"]["annotations"]["axolotl.ai/owner-uid"] == done["metadata"]["uid"]
    assert mine["metadata"]["ownerReferences"][0]["uid"] == get_axj(namespace, "victim")["metadata"]["uid"]
