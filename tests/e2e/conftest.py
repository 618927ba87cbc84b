"""Fixtures for the end-to-end tier: the product as users run it, on a real node.

- ``kubeenv`` (session): the control plane with one real node (as in tests/realnode).
- ``images`` (session): the operator and trainer images built from the repository's
  Dockerfiles (``hack/images``) and imported into the real node.
- ``release`` (session): ``helm install`` of charts/axolotl-operator with values only (the local
  images, the real node's selector and toleration); the operator runs in-cluster.
- ``workspace`` (session): a namespace with a claim holding the tiny model and dataset (written by a
  pod from the trainer image) and the fake HF token's Secret, shared by the training tests.
- ``namespace``, ``kubectl``, ``kubectl_json``, ``apply_yaml``, ``wait_for``: as in the other tiers.
Helpers: e2e_support.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from e2e_support import Release, Workspace, build_and_load_images, create_workspace, install_release
from realnode_support import (  # noqa: F401  (fixtures: a conftest registers the names it holds)
    apply_yaml_fixture,
    helm,
    kubectl_fixture,
    kubectl_json_fixture,
    kubeenv,
    namespace,
    wait_for_fixture,
)


@pytest.fixture(scope="session")
def images(kubeenv: Any) -> dict[str, str]:  # noqa: F811  (the fixture, by name)
    """Image references of the operator and the trainer, present on the real node."""
    return build_and_load_images()


@pytest.fixture(scope="session")
def release(images: dict[str, str], helm: Any) -> Iterator[Release]:  # noqa: F811
    """The operator installed by its Helm chart, ready."""
    yield from install_release(images)


@pytest.fixture(scope="session")
def workspace(images: dict[str, str]) -> Iterator[Workspace]:
    """Where the training tests' jobs run: the tiny model on a claim, the token's Secret."""
    yield from create_workspace(images["trainer"])
