"""Pods really run on the real node: logs, exit codes, volumes, Secrets, tokens, Services and
DNS, Indexed Jobs with a headless Service, and the OOM killer, all Kubernetes' own."""

from __future__ import annotations

import ipaddress
import json
import socket
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from realnode_support import REAL_STATE_DIR, kubectl, kubectl_json, pod_phase, real_pod, wait_for

pytestmark = pytest.mark.realnode

SERVICE_RANGE = ipaddress.ip_network("198.19.0.0/16")
POD_RANGE = ipaddress.ip_network("198.18.64.0/18")


def finished(name: str, ns: str, timeout: float = 120) -> dict[str, Any]:
    return wait_for(lambda: pod_phase(name, ns), timeout=timeout, what=f"pod {name} finished")


def terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def settled_logs(name: str, ns: str, expected: str, timeout: float = 30) -> str:
    """The pod's log once it holds ``expected``, else the last one read. The runtime may still be
    copying a short-lived container's last lines when its exit is reported (a CI run read an empty
    log once, right after the Job completed)."""
    last = ""

    def read() -> str | None:
        nonlocal last
        last = kubectl("logs", name, "-n", ns).strip()
        return last if expected in last else None

    try:
        return wait_for(read, timeout=timeout, what=f"{expected!r} in the log of {name}")
    except TimeoutError:
        return last


def test_pod_runs_to_completion_and_logs_show_its_output(
    namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    word = uuid.uuid4().hex
    apply_yaml(real_pod("hello", f"echo hello {word} from $(hostname)"), namespace)
    pod = finished("hello", namespace)
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == "realnode-0"
    assert ipaddress.ip_address(pod["status"]["podIP"]) in POD_RANGE
    assert settled_logs("hello", namespace, word) == f"hello {word} from hello"


def test_exit_code_and_termination_message_reach_the_pod_status(
    namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    apply_yaml(real_pod("fails", "echo -n 'summary: step 7' > /dev/termination-log; exit 3"), namespace)
    pod = finished("fails", namespace)
    assert pod["status"]["phase"] == "Failed"
    state = terminated(pod)
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", "summary: step 7")


def test_configmap_secret_shm_claim_and_audience_token_inside_the_pod(
    namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    secret_value, config_value, data_value = (uuid.uuid4().hex for _ in range(3))
    apply_yaml([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"},
         "data": {"config.yaml": config_value}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tok"},
         "stringData": {"token": secret_value}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "data"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}},
    ], namespace)
    script = (
        "cat /src/config/config.yaml; echo; echo \"secret=$HF_TOKEN\"; grep ' /dev/shm ' /proc/mounts;"
        f" echo {data_value} > /workspace/data/written; cat /var/run/axolotl/token"
    )
    pod = real_pod("inside", script, container={
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}],
        "volumeMounts": [
            {"name": "config", "mountPath": "/src/config"},
            {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "data", "mountPath": "/workspace/data"},
            {"name": "token", "mountPath": "/var/run/axolotl"},
        ],
    }, volumes=[
        {"name": "config", "configMap": {"name": "cfg"}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
        {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
        {"name": "token", "projected": {"sources": [{"serviceAccountToken": {
            "path": "token", "audience": "axolotl-operator", "expirationSeconds": 600}}]}},
    ])
    apply_yaml(pod, namespace)
    assert finished("inside", namespace)["status"]["phase"] == "Succeeded"
    lines = kubectl("logs", "inside", "-n", namespace).splitlines()
    assert lines[0] == config_value
    assert lines[1] == f"secret={secret_value}"
    assert lines[2].split()[1:3] == ["/dev/shm", "tmpfs"]

    # The token is a real bound token for that audience, issued to this pod.
    review = json.loads(kubectl("create", "-o", "json", "-f", "-", input=json.dumps({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
        "spec": {"token": lines[3], "audiences": ["axolotl-operator"]}})))["status"]
    assert review["authenticated"] is True
    assert review["audiences"] == ["axolotl-operator"]
    assert review["user"]["extra"]["authentication.kubernetes.io/pod-name"] == ["inside"]

    # The claim was provisioned on the real node, and what the pod wrote is on it.
    claim = kubectl_json("get", "pvc", "data", "-n", namespace)
    assert claim["status"]["phase"] == "Bound"
    volume = kubectl_json("get", "pv", claim["spec"]["volumeName"])
    assert Path(volume["spec"]["hostPath"]["path"], "written").read_text().strip() == data_value


def test_service_gets_endpoints_and_a_pod_reaches_it_by_dns_name(
    namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    page = uuid.uuid4().hex
    apply_yaml([
        real_pod("web", f"mkdir /www && echo {page} > /www/index.html && exec httpd -f -p 8080 -h /www"),
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ], namespace)
    web = wait_for(lambda: pod_phase("web", namespace, ("Running",)), timeout=60, what="web running")

    def endpoints() -> list[str]:
        slices = kubectl_json("get", "endpointslices", "-n", namespace,
                              "-l", "kubernetes.io/service-name=web")
        return [a for s in slices["items"] for e in s.get("endpoints") or [] for a in e["addresses"]]

    assert wait_for(endpoints, timeout=60, what="endpoints of web") == [web["status"]["podIP"]]
    cluster_ip = kubectl_json("get", "service", "web", "-n", namespace)["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in SERVICE_RANGE

    # busybox's nc, not its wget: Debian's static busybox wget crashes on any URL.
    request = r"printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 10 web 80"
    apply_yaml(real_pod("client", f"nslookup web.{namespace}.svc.cluster.local && {request}"), namespace)
    pod = finished("client", namespace)
    out = kubectl("logs", "client", "-n", namespace)
    assert pod["status"]["phase"] == "Succeeded", out
    assert f"Address: {cluster_ip}" in out
    assert out.strip().endswith(page)


def test_indexed_job_pods_rendezvous_through_a_headless_service(
    namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    word = uuid.uuid4().hex
    # Index 0 listens; index 1 resolves <job>-0.<service> and sends it a word (like torchrun's c10d).
    # Index 0 also keeps the word as its termination message, which the kubelet records with the exit.
    script = (
        'if [ "$JOB_COMPLETION_INDEX" = 0 ]; then nc -l -p 29500 | tee /dev/termination-log; else '
        f"until echo {word} | nc -w 5 rdzv-0.workers 29500; do sleep 0.5; done; fi"
    )
    template = real_pod("unused", script)["spec"]
    apply_yaml([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "workers"},
         "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                  "selector": {"batch.kubernetes.io/job-name": "rdzv"}}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "rdzv"},
         "spec": {"completionMode": "Indexed", "completions": 2, "parallelism": 2, "backoffLimit": 0,
                  "template": {"spec": {**template, "subdomain": "workers"}}}},
    ], namespace)

    def complete() -> dict[str, Any] | None:
        job = kubectl_json("get", "job", "rdzv", "-n", namespace)
        conditions = {c["type"]: c["status"] for c in job.get("status", {}).get("conditions") or []}
        assert conditions.get("Failed") != "True", job["status"]
        return job if conditions.get("Complete") == "True" else None

    wait_for(complete, timeout=120, what="Indexed Job rdzv complete")
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-completion-index=0")
    assert terminated(pods["items"][0])["message"].strip() == word
    assert settled_logs(pods["items"][0]["metadata"]["name"], namespace, word) == word


def test_a_container_over_its_memory_limit_is_oom_killed(
    namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    pod = real_pod("hog", "dd if=/dev/zero of=/dev/null bs=200M count=1", container={
        "resources": {"limits": {"memory": "32Mi"}, "requests": {"memory": "32Mi"}}})
    apply_yaml(pod, namespace)
    state = terminated(finished("hog", namespace))
    assert (state["reason"], state["exitCode"]) == ("OOMKilled", 137)


def test_pods_without_the_toleration_stay_off_the_real_node(
    namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    pod = real_pod("untolerated", "true")
    pod["spec"].pop("tolerations")
    apply_yaml(pod, namespace)

    def unschedulable() -> bool:
        pod = kubectl_json("get", "pod", "untolerated", "-n", namespace)
        conditions = pod["status"].get("conditions") or []
        return any(c["type"] == "PodScheduled" and c.get("reason") == "Unschedulable" for c in conditions)

    assert wait_for(unschedulable, timeout=60, what="untolerated pod unschedulable")


def test_pods_reach_the_api_server_through_the_kubernetes_service(
    namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    service = kubectl_json("get", "service", "kubernetes", "-n", "default")
    cluster_ip = service["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in SERVICE_RANGE
    endpoints = kubectl_json("get", "endpointslice", "kubernetes", "-n", "default")
    assert endpoints["endpoints"][0]["addresses"] == ["198.18.64.1"]
    # In a pod, the Service's environment leads to a TCP connection to the apiserver...
    connect = 'nc -w 5 "$KUBERNETES_SERVICE_HOST" "$KUBERNETES_SERVICE_PORT" </dev/null && echo open'
    apply_yaml(real_pod("api", connect), namespace)
    pod = finished("api", namespace)
    assert (pod["status"]["phase"], kubectl("logs", "api", "-n", namespace).strip()) == ("Succeeded", "open")
    # ...and the apiserver answers there with a certificate valid for the ClusterIP.
    context = ssl.create_default_context(cafile=str(REAL_STATE_DIR / "pki" / "ca.crt"))
    with (
        socket.create_connection((cluster_ip, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=cluster_ip) as tls,  # as in-cluster clients check
    ):
        tls.sendall(b"GET /version HTTP/1.0\r\nHost: kubernetes.default.svc\r\n\r\n")
        response = b"".join(iter(lambda: tls.recv(65536), b""))
    assert response.startswith(b"HTTP/1.0 200") and b'"gitVersion": "v1.37.2"' in response, response[:300]
