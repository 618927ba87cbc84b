"""Live progress: a trainer pod's report, authenticated with a token bound to that pod, lands in the
AxolotlJob's status (and `kubectl get axj`); tokens for another audience, another job's pod or none at
all are refused. The tokens are real (TokenRequest), checked by the real API server (TokenReview)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from operator_support import (
    HOLD,
    OperatorProcess,
    apply_yaml,
    delete_jobs_and_wait_for_pods,
    free_port,
    get_axj,
    kubectl,
    kubectl_json,
    make_axj,
    pods_of,
    progress_operator,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration

AUDIENCE = "axolotl-operator"


@pytest.fixture(scope="module")
def progress_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def operator_process(
    kubeenv: Any, tmp_path_factory: pytest.TempPathFactory, progress_port: int
) -> Iterator[OperatorProcess]:
    """The operator with its progress endpoint on loopback, telling trainer pods where it is."""
    log_dir = Path(os.environ.get("AXOLOTL_OPERATOR_TEST_LOG_DIR") or tmp_path_factory.mktemp("operator"))
    process = progress_operator(log_dir, __name__, progress_port, "http")
    process.start()
    yield process
    if process.running():
        assert process.stop() == 0, f"the operator did not shut down cleanly; log: {process.log_path}"


@pytest.fixture(autouse=True)
def finish_jobs(namespace: str) -> Iterator[None]:
    yield
    delete_jobs_and_wait_for_pods(namespace)


def post(port: int, body: dict[str, Any], token: str | None) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/progress", data=json.dumps(body).encode(), headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def report(name: str, namespace: str, step: int, **fields: Any) -> dict[str, Any]:
    """A body exactly as trainer-image's contract.ProgressReport.to_payload() writes it."""
    body = {
        "jobName": name,
        "jobNamespace": namespace,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "step": step,
        "totalSteps": 500,
        "epoch": step / 500,
        "loss": None,
        "learningRate": None,
        "gradNorm": None,
        "tokensPerSecond": None,
        "etaSeconds": None,
        "final": False,
    }
    body.update(fields)
    return body


def running_pod(namespace: str, name: str) -> dict[str, Any]:
    wait_phase(namespace, name, "Running")
    return wait_for(lambda: pods_of(namespace, name), timeout=30, what=f"a pod of {name}")[0]


def pod_token(namespace: str, pod: dict[str, Any], audience: str = AUDIENCE) -> str:
    """What the kubelet mounts into the trainer pod: a token bound to this pod, for this audience."""
    account = pod["spec"].get("serviceAccountName") or "default"
    return kubectl(
        "create",
        "token",
        account,
        "-n",
        namespace,
        "--audience",
        audience,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        pod["metadata"]["name"],
    ).strip()


def test_a_pods_report_becomes_the_jobs_progress(op, namespace, progress_port):
    apply_yaml(make_axj("trained", annotations=HOLD), namespace)
    pod = running_pod(namespace, "trained")
    env = {var["name"]: var.get("value") for var in pod["spec"]["containers"][0]["env"]}
    assert env["AXOLOTL_PROGRESS_URL"] == f"http://127.0.0.1:{progress_port}/progress"
    projected = [v["projected"] for v in pod["spec"]["volumes"] if "projected" in v]
    assert {"audience": AUDIENCE, "expirationSeconds": 3600, "path": "token"} in [
        source.get("serviceAccountToken") for p in projected for source in p["sources"]
    ]

    token = pod_token(namespace, pod)
    body = report("trained", namespace, 120, loss=1.23, learningRate=0.0002, etaSeconds=900.4)
    code, answer = post(progress_port, body, token)
    assert code == 202, answer

    def shown() -> dict[str, Any] | None:
        progress = (get_axj(namespace, "trained").get("status") or {}).get("progress") or {}
        return progress if progress.get("step") == 120 else None

    progress = wait_for(shown, timeout=30, interval=0.2, what="status.progress.step 120")
    assert progress["totalSteps"] == 500 and progress["percent"] == 24
    assert progress["loss"] == 1.23 and progress["etaSeconds"] == 900
    assert progress["updatedAt"] == body["timestamp"]
    row = kubectl("get", "axj", "trained", "-n", namespace, "--no-headers").split()
    assert row[:5] == ["trained", "Running", "24", "1.23", "900"], row
    metrics = op.metrics()
    assert f'axolotl_operator_job_step{{name="trained",namespace="{namespace}"}} 120.0' in metrics
    assert 'axolotl_operator_progress_reports_total{code="202"}' in metrics

    # The final report goes out at once; the run's numbers replace the estimates.
    final = report("trained", namespace, 500, loss=0.9, etaSeconds=3.0, final=True)
    assert post(progress_port, final, token)[0] == 202

    def finished() -> dict[str, Any] | None:
        progress = (get_axj(namespace, "trained").get("status") or {}).get("progress") or {}
        return progress if progress.get("step") == 500 else None

    progress = wait_for(finished, timeout=30, interval=0.2, what="status.progress.step 500")
    assert progress["percent"] == 100 and progress["etaSeconds"] == 0 and progress["loss"] == 0.9
    assert "learningRate" not in progress  # the newest report is the whole picture
    assert token not in op.log()

    # Two field managers own the status, as the API server records it (--show-managed-fields).
    managed = kubectl_json("get", "axj", "trained", "-n", namespace, "--show-managed-fields")["metadata"]
    owners = {
        entry["manager"]: set(entry["fieldsV1"]["f:status"])
        for entry in managed["managedFields"]
        if entry.get("subresource") == "status" and entry["operation"] == "Apply"
    }
    assert owners["axolotl-operator-progress"] == {"f:progress"}
    assert {"f:phase", "f:conditions", "f:message"} <= owners["axolotl-operator"]
    assert "f:progress" not in owners["axolotl-operator"]


def test_reports_without_the_jobs_own_pod_token_are_refused(op, namespace, progress_port):
    apply_yaml(make_axj("target", annotations=HOLD), namespace)
    apply_yaml(make_axj("neighbour", annotations=HOLD), namespace)
    target = running_pod(namespace, "target")
    neighbour = running_pod(namespace, "neighbour")
    body = report("target", namespace, 7, loss=2.5)

    code, answer = post(progress_port, body, None)
    assert code == 401, answer
    code, answer = post(progress_port, body, "not-a-token")
    assert code == 401, answer
    code, answer = post(progress_port, body, pod_token(namespace, target, audience="somebody-else"))
    assert code == 401, answer
    code, answer = post(progress_port, body, pod_token(namespace, neighbour))
    assert code == 403, answer
    assert "axolotl.ai/job=target" in answer
    unbound = kubectl("create", "token", "default", "-n", namespace, "--audience", AUDIENCE).strip()
    code, answer = post(progress_port, body, unbound)
    assert code == 403, answer
    code, answer = post(progress_port, {"jobName": "target"}, pod_token(namespace, target))
    assert code == 400, answer

    assert "progress" not in (get_axj(namespace, "target").get("status") or {})
    # and the job's own pod may report, so the refusals above were about the tokens
    assert post(progress_port, body, pod_token(namespace, target))[0] == 202
    wait_for(
        lambda: ((get_axj(namespace, "target").get("status") or {}).get("progress") or {}).get("step") == 7,
        timeout=30,
        interval=0.2,
        what="status.progress.step 7",
    )
    metrics = op.metrics()
    for code in ("400", "401", "403"):
        assert f'axolotl_operator_progress_reports_total{{code="{code}"}}' in metrics
