"""Progress from an image that is not ours, over HTTPS: a real `transformers.Trainer` (the trainer venv's
Python, a tiny GPT-2 on the CPU) reports with transformers' own KubeflowCallback to the operator, using
exactly what the operator rendered into the job's (kwok) training pod: the per-job URL, the CA from the
job's ConfigMap, and a real token bound to that pod (TokenRequest, checked by the API server's
TokenReview). The job's status shows the callback's step, total and loss; another job's pod token is
refused (403), and so is a client that speaks plain HTTP. All traffic stays on 127.0.0.1."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
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
SCRIPT = Path(__file__).with_name("hf_trainer_job.py")
STEPS = 6


def trainer_python() -> str:
    """The trainer tier's venv (torch, transformers): `make integration` makes sure it exists."""
    default = Path.home() / ".cache/axolotl-operator/trainer-venv/bin/python"
    python = Path(os.environ.get("AXOLOTL_TRAINER_PYTHON") or default)
    if not python.exists():
        pytest.fail(
            f"{python} is missing: this test runs a real transformers.Trainer in the trainer venv; "
            "create it with `make trainer-setup` (or run `make integration`, which does)"
        )
    return str(python)


@pytest.fixture(scope="module")
def progress_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def operator_process(
    kubeenv: Any, tmp_path_factory: pytest.TempPathFactory, progress_port: int
) -> Iterator[OperatorProcess]:
    """The operator with an https progress URL on loopback: it makes its CA and serves TLS."""
    log_dir = Path(os.environ.get("AXOLOTL_OPERATOR_TEST_LOG_DIR") or tmp_path_factory.mktemp("operator"))
    process = progress_operator(log_dir, __name__, progress_port, "https")
    process.start()
    yield process
    if process.running():
        assert process.stop() == 0, f"the operator did not shut down cleanly; log: {process.log_path}"


@pytest.fixture(autouse=True)
def finish_jobs(namespace: str) -> Iterator[None]:
    yield
    delete_jobs_and_wait_for_pods(namespace)


def running_pod(namespace: str, name: str) -> dict[str, Any]:
    wait_phase(namespace, name, "Running")
    return wait_for(lambda: pods_of(namespace, name), timeout=30, what=f"a pod of {name}")[0]


def pod_token(namespace: str, pod: dict[str, Any]) -> str:
    """What the kubelet projects into the pod: a token bound to it, for the operator's audience."""
    account = pod["spec"].get("serviceAccountName") or "default"
    return kubectl(
        "create", "token", account, "-n", namespace, "--audience", AUDIENCE,
        "--bound-object-kind", "Pod", "--bound-object-name", pod["metadata"]["name"],
    ).strip()  # fmt: skip


def rendered(namespace: str, pod: dict[str, Any], workdir: Path) -> dict[str, str]:
    """The pod's environment for the callback, with the files it names written where this machine can
    read them: the CA from the job's ConfigMap (as the projected volume mounts it), the pod's token."""
    env = {var["name"]: var.get("value") for var in pod["spec"]["containers"][0]["env"]}
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == "progress-token"]
    sources = volume["projected"]["sources"]
    (config_map,) = [s["configMap"] for s in sources if "configMap" in s]
    (item,) = config_map["items"]
    data = kubectl_json("get", "configmap", config_map["name"], "-n", namespace)["data"]
    assert "PRIVATE KEY" not in json.dumps(data)  # the CA's certificate only
    ca = workdir / item["path"]
    ca.write_text(data[item["key"]])
    token = workdir / "token"
    token.write_text(pod_token(namespace, pod))
    assert env["KUBEFLOW_TRAINER_SERVER_CA_CERT"].endswith("/" + item["path"])
    assert env["KUBEFLOW_TRAINER_SERVER_TOKEN"] == env["AXOLOTL_PROGRESS_TOKEN_FILE"]
    return {
        "KUBEFLOW_TRAINER_SERVER_URL": env["KUBEFLOW_TRAINER_SERVER_URL"],
        "KUBEFLOW_TRAINER_SERVER_CA_CERT": str(ca),
        "KUBEFLOW_TRAINER_SERVER_TOKEN": str(token),
    }


def trainer_env(kubeflow: dict[str, str]) -> dict[str, str]:
    """A clean environment: no proxies (the callback's urllib would use them), no Hub, no telemetry."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
    return {
        **keep,
        **kubeflow,
        "NO_PROXY": "*",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
    }


def post(url: str, body: dict[str, Any], token: str, context: ssl.SSLContext | None) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
    )
    try:
        with opener.open(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_plain_hf_trainer_reports_live_progress_over_https(op, namespace, progress_port, tmp_path):
    python = trainer_python()
    apply_yaml(make_axj("custom", annotations=HOLD), namespace)
    apply_yaml(make_axj("neighbour", annotations=HOLD), namespace)
    pod = running_pod(namespace, "custom")
    neighbour = running_pod(namespace, "neighbour")
    kubeflow = rendered(namespace, pod, tmp_path)
    url = kubeflow["KUBEFLOW_TRAINER_SERVER_URL"]
    assert url == f"https://127.0.0.1:{progress_port}/kubeflow/namespaces/{namespace}/axolotljobs/custom"

    run = subprocess.run(
        [python, str(SCRIPT), str(tmp_path / "out"), str(STEPS), "1.5"],
        env=trainer_env(kubeflow),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    history = json.loads(run.stdout.strip().splitlines()[-1])
    last_loss = [entry["loss"] for entry in history if "loss" in entry][-1]

    def final() -> dict[str, Any] | None:
        progress = (get_axj(namespace, "custom").get("status") or {}).get("progress") or {}
        return progress if progress.get("etaSeconds") == 0 and progress.get("step") == STEPS else None

    progress = wait_for(final, timeout=30, interval=0.2, what=f"status.progress at step {STEPS}")
    assert progress["totalSteps"] == STEPS and progress["percent"] == 100
    assert progress["loss"] == last_loss  # the callback's str(float), read back exactly
    assert progress["epoch"] > 0 and progress["learningRate"] > 0
    metrics = op.metrics()
    # on_train_begin, at least one mid-run step (a step takes 1.5 s, the callback sends every 5 s), the end
    counter = 'axolotl_operator_progress_reports_total{code="200"}'
    sent = [line for line in metrics.splitlines() if line.startswith(counter)]
    assert sent and float(sent[0].split()[-1]) >= 3, sent
    assert kubeflow_token(tmp_path) not in op.log()

    # Another job's pod, with a real token bound to it, cannot report for this job; the same body is
    # accepted with this job's own token, so the refusal was about the token.
    trusted = ssl.create_default_context(cafile=kubeflow["KUBEFLOW_TRAINER_SERVER_CA_CERT"])
    body = {
        "trainerStatus": {
            "lastUpdatedTime": datetime.now(UTC).isoformat(),
            "progressPercentage": 50,
            "metrics": [{"name": "current_step", "value": "3"}, {"name": "total_steps", "value": "6"}],
        }
    }
    assert post(url, body, pod_token(namespace, neighbour), trusted) == 403
    assert post(url, body, kubeflow_token(tmp_path), trusted) == 200
    # The endpoint speaks TLS only: a plain-HTTP client (its token in cleartext) gets no answer.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        post(url.replace("https://", "http://"), body, kubeflow_token(tmp_path), None)
    # ... and a client without the operator's CA refuses the endpoint before sending the token.
    with pytest.raises(urllib.error.URLError):
        post(url, body, kubeflow_token(tmp_path), ssl.create_default_context())


def kubeflow_token(workdir: Path) -> str:
    return (workdir / "token").read_text()
