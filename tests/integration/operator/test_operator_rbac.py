"""The operator works with exactly the Helm chart's RBAC: run it with its ServiceAccount's token."""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml
from operator_support import (
    ROOT,
    OperatorProcess,
    apply_yaml,
    children,
    kubectl,
    make_axj,
    wait_events,
    wait_phase,
)

pytestmark = pytest.mark.integration


def token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    """A kubeconfig for the same API server that authenticates with a bearer token only."""
    cluster = yaml.safe_load(admin.read_text())["clusters"][0]["cluster"]
    if "certificate-authority" in cluster:
        ca = Path(cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_operator_runs_with_the_charts_least_privilege_rbac(op, namespace, helm, kubeconfig, tmp_path):
    release = f"rbac{uuid.uuid4().hex[:6]}"
    rendered = subprocess.run(
        [
            str(helm),
            "template",
            release,
            str(ROOT / "charts" / "axolotl-operator"),
            "--namespace",
            namespace,
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    assert {o["kind"] for o in objects} == {"ClusterRole", "ClusterRoleBinding", "ServiceAccount"}
    apply_yaml(objects, namespace)
    account = next(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
    token = kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    config = token_kubeconfig(Path(kubeconfig), token, tmp_path / "operator.kubeconfig")

    op.stop()  # the admin-credentialed operator must not do the work
    restricted = OperatorProcess(tmp_path / "restricted.log")
    previous = os.environ["KUBECONFIG"]
    os.environ["KUBECONFIG"] = str(config)
    try:
        restricted.start()
    finally:
        os.environ["KUBECONFIG"] = previous
    try:
        kubectl("create", "secret", "generic", "hf", "-n", namespace, "--from-literal=token=x")
        apply_yaml(make_axj("least", secrets={"hfToken": {"name": "hf", "key": "token"}}), namespace)
        apply_yaml(
            make_axj("wrong", config={"load_in_4bit": True, "adapter": None, "lora_r": None}), namespace
        )
        wait_phase(namespace, "least", "Succeeded")
        assert len(children(namespace, "least", "pvc")) == 1
        wait_events(namespace, "least", "Succeeded")
        wait_phase(namespace, "wrong", "Failed", "InvalidSpec")
        wait_events(namespace, "wrong", "InvalidSpec")
    finally:
        assert restricted.stop() == 0
        for obj in objects:
            if obj["kind"] != "ServiceAccount":
                kubectl(
                    "delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False
                )
    log = restricted.log()
    assert "forbidden" not in log.lower(), log[-3000:]
