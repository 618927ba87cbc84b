"""Helpers for the real-node tier (imported by the tests and by conftest.py): the integration
tier's kubectl helpers, loaded by path because two modules named `conftest` cannot import each
other, and builders for pods on the real node."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "axolotl_integration_helpers", ROOT / "tests/integration/conftest.py"
)
assert _spec and _spec.loader
helpers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = helpers
_spec.loader.exec_module(helpers)
kubectl = helpers.kubectl
kubectl_json = helpers.kubectl_json
apply_yaml = helpers.apply_yaml
wait_for = helpers.wait_for
KubectlError = helpers.KubectlError

CACHE = Path(os.environ.get("AXOLOTL_CACHE_DIR") or Path.home() / ".cache" / "axolotl-operator")
REAL_STATE_DIR = CACHE / "kubeenv-real"
REAL_ENV = {"KUBEENV_STATE_DIR": str(REAL_STATE_DIR), "KUBEENV_NODES": "0"}
KUBEENV = ROOT / "hack" / "kubeenv"
BUSYBOX = "localhost/kubeenv/busybox:1"
NODE_SELECTOR = {"kubeenv.axolotl.ai/node": "real"}
TOLERATION = {"key": "kubeenv.axolotl.ai/real-node", "operator": "Exists", "effect": "NoSchedule"}


# The fixtures of every tier that runs on the real node (tests/realnode, tests/e2e): the integration
# tier's, resolved against this `kubeenv`. A conftest registers them by importing them.
namespace = helpers.namespace
kubectl_fixture = helpers.kubectl_fixture
kubectl_json_fixture = helpers.kubectl_json_fixture
apply_yaml_fixture = helpers.apply_yaml_fixture
wait_for_fixture = helpers.wait_for_fixture
helm = helpers.helm


@pytest.fixture(scope="session")
def kubeenv() -> Iterator[Any]:
    """The control plane with one real node, started once per session."""
    yield from helpers.kubeenv_session(("--real-nodes", "1"), REAL_ENV)


def real_pod(
    name: str, command: str, *, container: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """A pod running ``sh -c command`` in the local busybox image on the real node."""
    main = {"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", command]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "nodeSelector": NODE_SELECTOR,
            "tolerations": [TOLERATION],
            "terminationGracePeriodSeconds": 1,
            "containers": [{**main, **(container or {})}],
            **spec,
        },
    }


def pod_phase(name: str, ns: str, phases: tuple[str, ...] = ("Succeeded", "Failed")) -> dict[str, Any] | None:
    """The pod once it is in one of ``phases``, else None (for ``wait_for``)."""
    pod = kubectl_json("get", "pod", name, "-n", ns)
    return pod if pod.get("status", {}).get("phase") in phases else None
