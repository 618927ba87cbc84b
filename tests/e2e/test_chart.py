"""`helm install` of the chart on the real node: the operator runs in-cluster from its image, with
the chart's ServiceAccount and RBAC; its liveness endpoint answers and its Services have endpoints."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from e2e_support import ROOT, Release, from_a_pod, http_get, kubectl, kubectl_json, wait_for

pytestmark = pytest.mark.e2e


def operator_pod(release: Release) -> dict[str, Any]:
    pods = kubectl_json("get", "pods", "-n", release.namespace,
                        "-l", "app.kubernetes.io/name=axolotl-operator")
    running = [p for p in pods["items"] if p["status"].get("phase") == "Running"]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods["items"]]
    return running[0]


def test_the_operator_runs_in_cluster_from_its_image_with_the_charts_account(
    release: Release, images: dict[str, str]
) -> None:
    pod = operator_pod(release)
    assert pod["spec"]["nodeName"] == "realnode-0"
    assert pod["spec"]["serviceAccountName"] == release.fullname
    assert pod["spec"]["containers"][0]["image"] == images["operator"]
    status = pod["status"]["containerStatuses"][0]
    assert status["ready"] is True and status["restartCount"] == 0
    # Its log is the operator's own, read through the kubelet (it may be a moment before it prints).
    def log() -> str:
        return kubectl("logs", pod["metadata"]["name"], "-n", release.namespace)

    assert wait_for(lambda: "starting: watching all namespaces" in log(), timeout=60, what="operator log")


def test_liveness_endpoint_answers_and_services_have_endpoints(release: Release, namespace: str) -> None:
    pod = operator_pod(release)
    ip = pod["status"]["podIP"]
    for service in (f"{release.fullname}-metrics", f"{release.fullname}-progress"):
        def addresses(service: str = service) -> list[str]:
            slices = kubectl_json("get", "endpointslices", "-n", release.namespace,
                                  "-l", f"kubernetes.io/service-name={service}")
            return [a for s in slices["items"] for e in s.get("endpoints") or [] for a in e["addresses"]]

        assert wait_for(addresses, timeout=60, what=f"endpoints of {service}") == [ip]
    metrics_host = f"{release.fullname}-metrics.{release.namespace}.svc.cluster.local"
    script = f"{http_get(ip, 8080, '/healthz')}; echo; echo ---; {http_get(metrics_host, 9400, '/metrics')}"
    out = from_a_pod(namespace, script)
    health, metrics = out.split("---", 1)
    assert health.startswith("HTTP/1.") and " 200 " in health.splitlines()[0], health
    assert " 200 " in metrics.splitlines()[1], metrics[:500]
    assert "# TYPE axolotl_operator_jobs gauge" in metrics, metrics[:500]


def test_the_charts_webhook_refuses_bad_specs_and_warns_about_stale_keys(
    release: Release, namespace: str
) -> None:
    """The API server calls the operator's pod through the chart's Service, trusting the CA the operator
    made, kept in its Secret and set as the caBundle of the chart's configuration."""
    configuration = kubectl_json("get", "validatingwebhookconfiguration", release.fullname)
    (webhook,) = configuration["webhooks"]
    assert webhook["clientConfig"]["caBundle"] and webhook["failurePolicy"] == "Fail"
    secret = kubectl_json("get", "secret", f"{release.fullname}-webhook-tls", "-n", release.namespace)
    assert set(secret["data"]) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert secret["data"]["ca.crt"] == webhook["clientConfig"]["caBundle"]

    for example, field in (("quantized-without-adapter.yaml", "spec.config.load_in_4bit"),
                           ("lora-r-zero.yaml", "spec.config.lora_r")):
        text = (ROOT / "tests" / "examples" / "invalid" / example).read_text()
        refused = subprocess.run(["kubectl", "apply", "-n", namespace, "-f", "-"], input=text,
                                 capture_output=True, text=True, timeout=120, check=False)
        assert refused.returncode != 0 and field in refused.stderr, refused.stderr
    assert kubectl_json("get", "axolotljobs", "-n", namespace)["items"] == []

    stale = {
        "apiVersion": "axolotl.ai/v1alpha1", "kind": "AxolotlJob", "metadata": {"name": "stale"},
        "spec": {"gpus": 0, "suspend": True, "config": {
            "base_model": "NousResearch/Llama-3.2-1B", "adapter": "lora", "epochs": 3,
            "datasets": [{"path": "teknium/GPT4-LLM-Cleaned", "type": "alpaca"}]}},
    }
    accepted = subprocess.run(["kubectl", "apply", "-n", namespace, "-f", "-"], input=json.dumps(stale),
                              capture_output=True, text=True, timeout=120, check=False)
    assert accepted.returncode == 0, accepted.stderr
    assert "Warning: spec.config.epochs" in accepted.stderr and "num_epochs" in accepted.stderr


def test_helm_test_passes(release: Release, helm: Any) -> None:
    """The chart's own test pod (its image, its ServiceAccount): metrics answer, the CRD is established."""
    result = subprocess.run(["helm", "test", release.name, "-n", release.namespace, "--logs"],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok: metrics answer, the AxolotlJob CRD is established" in result.stdout
