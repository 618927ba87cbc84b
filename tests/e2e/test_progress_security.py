"""Only a job's own training pod may post its progress: a plain pod that carries the job's label
and a real bound token for the operator's audience is refused (403), a pod without a token too
(401), and the job's status keeps no progress. The endpoint is the chart's default: HTTPS."""

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


# The endpoint speaks HTTPS only (busybox's nc cannot): the impostor posts with the trainer image's
# Python. It does not verify the certificate (an attacker need not trust the CA to try); prints each code.
IMPOSTOR = """
import json, ssl, sys, urllib.error, urllib.request
url, job, namespace = sys.argv[1:4]
body = json.dumps({"jobName": job, "jobNamespace": namespace, "step": 5,
                   "timestamp": "2026-01-01T00:00:00Z"}).encode()
for token_file in ("/var/run/axolotl/token", None):
    headers = {"Content-Type": "application/json"}
    if token_file:
        headers["Authorization"] = "Bearer " + open(token_file).read().strip()
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10, context=ssl._create_unverified_context()) as r:
            print("HTTP", r.status)
    except urllib.error.HTTPError as error:
        print("HTTP", error.code)
"""


def test_a_pod_that_is_not_the_jobs_own_cannot_post_its_progress(release: Release, namespace: str) -> None:
    apply_yaml({
        "apiVersion": "axolotl.ai/v1alpha1", "kind": "AxolotlJob", "metadata": {"name": "victim"},
        "spec": {"gpus": 0, "suspend": True, "storage": {"size": "1Gi"},
                 "nodeSelector": NODE_SELECTOR, "tolerations": [TOLERATION],
                 "config": {"base_model": "NousResearch/Llama-3.2-1B", "adapter": "lora",
                            "datasets": [{"path": "teknium/GPT4-LLM-Cleaned", "type": "alpaca"}]}},
    }, namespace)
    url = f"https://{release.fullname}-progress.{release.namespace}.svc.cluster.local:8081/progress"
    trainer = kubectl_json("get", "deployment", release.fullname, "-n", release.namespace)
    env = {e["name"]: e.get("value") for e in trainer["spec"]["template"]["spec"]["containers"][0]["env"]}
    impostor = real_pod("impostor", "",
                        container={"image": env["AXOLOTL_OPERATOR_DEFAULT_IMAGE"],
                                   "command": ["python", "-c", IMPOSTOR, url, "victim", namespace],
                                   "volumeMounts": [{"name": "token", "mountPath": "/var/run/axolotl"}]},
                        volumes=[{"name": "token", "projected": {"sources": [{"serviceAccountToken": {
                            "path": "token", "audience": "axolotl-operator", "expirationSeconds": 600}}]}}])
    impostor["metadata"]["labels"] = {"axolotl.ai/job": "victim", "batch.kubernetes.io/job-name": "victim"}
    apply_yaml(impostor, namespace)
    wait_for(lambda: pod_phase("impostor", namespace), timeout=120, what="impostor finished")
    out = kubectl("logs", "impostor", "-n", namespace).splitlines()
    assert [line.split()[1] for line in out if line.startswith("HTTP ")] == ["403", "401"], out
    status = kubectl_json("get", "axj", "victim", "-n", namespace).get("status", {})
    assert not status.get("progress"), status
