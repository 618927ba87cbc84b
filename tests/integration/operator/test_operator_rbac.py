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
    free_port,
    kubectl,
    kubectl_json,
    make_axj,
    wait_events,
    wait_for,
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


def chart_rbac(helm: Path, namespace: str, *values: str, webhook: bool = False) -> list[dict]:
    """The chart's RBAC and ServiceAccount for a release in `namespace`, rendered by helm; with `webhook`,
    also its webhook objects (configuration, Service, the empty Secret)."""
    args = [str(helm), "template", f"rbac{uuid.uuid4().hex[:6]}", str(ROOT / "charts" / "axolotl-operator")]
    args += ["--namespace", namespace, "--show-only", "templates/rbac.yaml"]
    args += ["--show-only", "templates/serviceaccount.yaml", *(f"--set={v}" for v in values)]
    if webhook:
        args += ["--show-only", "templates/webhook.yaml"]
    rendered = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(rendered) if d]


def start_restricted(
    objects: list[dict],
    namespace: str,
    kubeconfig: Path,
    tmp_path: Path,
    *scope: str,
    extra: tuple[str, ...] = (),
):
    """Apply the RBAC objects and start the operator with only its ServiceAccount's token."""
    apply_yaml(objects, namespace)
    account = next(o["metadata"]["name"] for o in objects if o["kind"] == "ServiceAccount")
    token = kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    config = token_kubeconfig(Path(kubeconfig), token, tmp_path / "operator.kubeconfig")
    restricted = OperatorProcess(
        tmp_path / "restricted.log", scope=scope or ("--all-namespaces",), extra_args=extra
    )
    previous = os.environ["KUBECONFIG"]
    os.environ["KUBECONFIG"] = str(config)
    try:
        restricted.start()
    finally:
        os.environ["KUBECONFIG"] = previous
    return restricted, f"system:serviceaccount:{namespace}:{account}"


def delete_all(objects: list[dict]) -> None:
    for obj in objects:
        if obj["kind"] != "ServiceAccount":
            where = ["-n", obj["metadata"]["namespace"]] if obj["metadata"].get("namespace") else []
            kubectl(
                "delete",
                obj["kind"].lower(),
                obj["metadata"]["name"],
                *where,
                "--ignore-not-found",
                check=False,
            )


def test_operator_runs_with_the_charts_least_privilege_rbac(op, namespace, helm, kubeconfig, tmp_path):
    # The webhook as the chart runs it (its CA in the Secret, the caBundle on the chart's configuration),
    # set to Ignore: without kube-proxy here the API server cannot reach the Service (the e2e tier can).
    objects = chart_rbac(helm, namespace, "webhook.failurePolicy=Ignore", webhook=True)
    assert {o["kind"] for o in objects} == {
        "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "ServiceAccount",
        "Service", "Secret", "ValidatingWebhookConfiguration",
    }
    configuration = next(o for o in objects if o["kind"] == "ValidatingWebhookConfiguration")
    name = configuration["metadata"]["name"]
    op.stop()  # the admin-credentialed operator must not do the work
    webhook_flags = (
        "--webhook-port", str(free_port()), "--webhook-configuration", name,
        "--webhook-service", f"{namespace}/{name}-webhook", "--webhook-cert-secret", f"{name}-webhook-tls",
    )
    restricted, _ = start_restricted(objects, namespace, kubeconfig, tmp_path, extra=webhook_flags)
    try:
        def ca_bundle() -> str | None:
            live = kubectl_json("get", "validatingwebhookconfiguration", name)
            return live["webhooks"][0]["clientConfig"].get("caBundle")

        bundle = wait_for(ca_bundle, timeout=60, what="the caBundle set by the operator")
        kept = kubectl_json("get", "secret", f"{name}-webhook-tls", "-n", namespace)["data"]
        assert set(kept) == {"ca.crt", "ca.key", "tls.crt", "tls.key"} and kept["ca.crt"] == bundle
        kubectl("create", "secret", "generic", "hf", "-n", namespace, "--from-literal=token=x")
        notebook = {"enabled": True, "tokenSecret": {"name": "hf", "key": "token"}}
        secrets = {"hfToken": {"name": "hf", "key": "token"}}
        apply_yaml(make_axj("least", secrets=secrets, notebook=notebook), namespace)
        apply_yaml(
            make_axj("wrong", config={"load_in_4bit": True, "adapter": None, "lora_r": None}), namespace
        )
        wait_phase(namespace, "least", "Succeeded")
        assert len(children(namespace, "least", "pvc")) == 1
        wait_events(namespace, "least", "Succeeded")

        def notebook_shown() -> dict | None:  # created, then moved (updated) once training ended
            shown = (kubectl_json("get", "axj", "least", "-n", namespace)["status"]).get("notebook") or {}
            return shown if shown.get("ready") and shown.get("placement") == "Anywhere" else None

        wait_for(notebook_shown, timeout=60, what="the notebook, with the chart's RBAC")
        patch = '{"spec":{"notebook":{"enabled":false}}}'
        kubectl("patch", "axj", "least", "-n", namespace, "--type=merge", "-p", patch)
        gone = lambda: not children(namespace, "least", "deployments")  # noqa: E731
        wait_for(gone, timeout=60, what="the notebook deleted")
        wait_phase(namespace, "wrong", "Failed", "InvalidSpec")
        wait_events(namespace, "wrong", "InvalidSpec")
    finally:
        assert restricted.stop() == 0
        delete_all(objects)
    log = restricted.log()
    assert "forbidden" not in log.lower(), log[-3000:]


def test_a_namespaced_install_can_create_only_in_its_watched_namespaces(
    op, namespace, helm, kubeconfig, tmp_path
):
    objects = chart_rbac(helm, namespace, f"watchNamespaces={{{namespace}}}")
    assert {o["kind"] for o in objects} >= {"Role", "RoleBinding"}
    op.stop()
    restricted, user = start_restricted(objects, namespace, kubeconfig, tmp_path, "--namespace", namespace)
    try:

        def can(verb: str, resource: str, where: str) -> str:
            args = ("auth", "can-i", verb, resource, "-n", where, f"--as={user}")
            return kubectl(*args, check=False).strip()

        assert can("create", "jobs.batch", namespace) == "yes"
        assert can("create", "jobs.batch", "kube-system") == "no"
        assert can("patch", "configmaps", "default") == "no"
        assert can("get", "secrets", namespace) == "no"
        apply_yaml(make_axj("scoped"), namespace)
        wait_phase(namespace, "scoped", "Succeeded")
        wait_events(namespace, "scoped", "Succeeded")
    finally:
        assert restricted.stop() == 0
        delete_all(objects)
    log = restricted.log()
    assert "forbidden" not in log.lower(), log[-3000:]
