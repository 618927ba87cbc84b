"""Fixtures for the real-node tier: the control plane with a REAL node (kubelet, containerd,
runc, CNI, kube-proxy, CoreDNS), so pods really run. Needs root; `hack/kubeenv` installs the
Debian packages it lacks and builds the rest (tests/kubeenv/README.md, "Real nodes").

- ``kubeenv`` (session): ``hack/kubeenv up --real-nodes 1`` on its own state dir
  (``REAL_STATE_DIR``, no kwok nodes), so it never disturbs the kwok tier's control plane.
- ``namespace``, ``kubectl``, ``kubectl_json``, ``apply_yaml``, ``wait_for``: as in the
  integration tier (tests/integration/conftest.py), against this control plane.
Pod builders and constants: realnode_support.py.
"""

from __future__ import annotations

import pytest
from realnode_support import (  # noqa: F401  (fixtures: a conftest registers the names it holds)
    apply_yaml_fixture,
    kubectl_fixture,
    kubectl_json_fixture,
    kubeenv,
    namespace,
    wait_for_fixture,
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The machine-restore test brings its own real node up and down; only one runs per machine,
    so it goes before any test that starts the session's."""
    items.sort(key=lambda item: item.path.name != "test_host_restored.py")
