"""Only a job's own training pod may post its progress: a plain pod that carries the job's label
and a real bound token for the operator's audience is refused (403), a pod without a token too
(401), and the job's status keeps no progress."""

from __future__ import annotations

import pytest
from e2e_support import (
    NODE_SELECTOR,
    TOLERATION,
    Release,
    apply_yaml,
    kubectl,
    kubectl_json,
    pod_phase,
    real_pod,
    wait_for,
)

pytestmark = pytest.mark.e2e


def post_progress(host: str, job: str, namespace: str, token_file: str | None) -> str:
    """A shell line POSTing a progress report for ``job`` with busybox nc; prints the status line."""
    body = f'{{"jobName":"{job}","jobNamespace":"{namespace}","step":5,"timestamp":"2026-01-01T00:00:00Z"}}'
    auth = f"Authorization: Bearer $(cat {token_file})\\r\\n" if token_file else ""
    headers = f"Host: {host}\\r\\n{auth}Content-Type: application/json\\r\\nContent-Length: {len(body)}\\r\\n"
    request = f"printf \"POST /progress HTTP/1.0\\r\\n{headers}\\r\\n%s\" '{body}'"  # "...": $(cat) expands
    return f"({request}; sleep 3) | nc -w 10 {host} 8081 | head -1"


def test_a_pod_that_is_not_the_jobs_own_cannot_post_its_progress(release: Release, namespace: str) -> None:
    apply_yaml({
        "apiVersion": "axolotl.ai/v1alpha1", "kind": "AxolotlJob", "metadata": {"name": "victim"},
        "spec": {"gpus": 0, "suspend": True, "storage": {"size": "1Gi"},
                 "nodeSelector": NODE_SELECTOR, "tolerations": [TOLERATION],
                 "config": {"base_model": "NousResearch/Llama-3.2-1B", "adapter": "lora",
                            "datasets": [{"path": "teknium/GPT4-LLM-Cleaned", "type": "alpaca"}]}},
    }, namespace)
    host = f"{release.fullname}-progress.{release.namespace}.svc.cluster.local"
    token = "/var/run/axolotl/token"
    impostor = real_pod("impostor", f"{post_progress(host, 'victim', namespace, token)};"
                                    f" {post_progress(host, 'victim', namespace, None)}",
                        container={"volumeMounts": [{"name": "token", "mountPath": "/var/run/axolotl"}]},
                        volumes=[{"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                            "path": "token", "audience": "axolotl-operator", "expirationSeconds": 600}}]}}])
    impostor["metadata"]["labels"] = {"axolotl.ai/job": "victim", "batch.kubernetes.io/job-name": "victim"}
    apply_yaml(impostor, namespace)
    wait_for(lambda: pod_phase("impostor", namespace), timeout=120, what="impostor finished")
    out = kubectl("logs", "impostor", "-n", namespace).splitlines()
    assert [line.split()[1] for line in out if line.startswith("HTTP/")] == ["403", "401"], out
    status = kubectl_json("get", "axj", "victim", "-n", namespace).get("status", {})
    assert not status.get("progress"), status
