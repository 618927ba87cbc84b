"""Helpers for the end-to-end tier: images, the Helm release, and requests made from inside the
cluster (a busybox pod on the real node), so the checks see what a pod sees."""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from axolotl_operator.trainer_contract import parse_summary

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "realnode"))
import realnode_support as realnode  # noqa: E402  (the real-node tier's helpers and fixtures)

kubectl, kubectl_json = realnode.kubectl, realnode.kubectl_json
apply_yaml, wait_for = realnode.apply_yaml, realnode.wait_for
real_pod, pod_phase = realnode.real_pod, realnode.pod_phase
REAL_ENV, NODE_SELECTOR, TOLERATION = realnode.REAL_ENV, realnode.NODE_SELECTOR, realnode.TOLERATION

IMAGES = ROOT / "hack" / "images"
TRAINER_SUPPORT = ROOT / "tests" / "trainer" / "trainer_support.py"
DEMO_TINY_MODEL = ROOT / "hack" / "demo-train" / "tiny-model.yaml"  # the demo's objects, reused
DEMO_JOB = ROOT / "hack" / "demo-train" / "quickstart.yaml"
DEMO_VALUES = ROOT / "hack" / "demo-train" / "values.yaml"
OPERATOR_SELECTOR = "app.kubernetes.io/name=axolotl-operator"
CHART = ROOT / "charts" / "axolotl-operator"
RELEASE_NAMESPACE = "axolotl-system"
RELEASE_NAME = "axolotl"


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    fullname: str


def _images(*args: str) -> str:
    env = {**os.environ, **REAL_ENV}
    proc = subprocess.run(
        [str(IMAGES), *args], capture_output=True, text=True, env=env, timeout=3600, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"hack/images {' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip()


def build_and_load_images() -> dict[str, str]:
    _images("load", "all")
    return {name: _images("ref", name) for name in ("operator", "trainer")}


def release_values(images: dict[str, str]) -> dict[str, Any]:
    """The demo's values (hack/demo-train/values.yaml: local images, the real node), with the
    references hack/images reports."""
    values = yaml.safe_load(DEMO_VALUES.read_text())
    operator_repo, _, operator_tag = images["operator"].rpartition(":")
    values["image"].update(repository=operator_repo, tag=operator_tag)
    values["trainer"]["image"] = images["trainer"]
    return values


def install_release(images: dict[str, str]) -> Iterator[Release]:
    values = ROOT / ".e2e-values.yaml"
    values.write_text(yaml.safe_dump(release_values(images)))
    try:
        subprocess.run(
            ["helm", "upgrade", "--install", RELEASE_NAME, str(CHART), "-n", RELEASE_NAMESPACE,
             "--create-namespace", "-f", str(values), "--wait", "--timeout", "5m"],
            check=True, capture_output=True, text=True, timeout=600,
        )
    except subprocess.CalledProcessError as exc:
        pods = kubectl("get", "pods", "-A", "-o", "wide")
        raise RuntimeError(f"helm install failed: {exc.stderr}\n{pods}") from exc
    finally:
        values.unlink(missing_ok=True)
    yield Release(RELEASE_NAME, RELEASE_NAMESPACE, f"{RELEASE_NAME}-axolotl-operator")
    subprocess.run(["helm", "uninstall", RELEASE_NAME, "-n", RELEASE_NAMESPACE, "--wait"],
                   capture_output=True, timeout=300, check=False)


def from_a_pod(namespace: str, script: str, timeout: float = 120) -> str:
    """Run ``sh -c script`` in a busybox pod on the real node; return its log (it must succeed)."""
    name = f"probe-{uuid.uuid4().hex[:8]}"
    apply_yaml(real_pod(name, script), namespace)
    pod = wait_for(lambda: pod_phase(name, namespace), timeout=timeout, what=f"pod {name}")
    out = kubectl("logs", name, "-n", namespace)
    assert pod["status"]["phase"] == "Succeeded", out
    return out


def http_get(url_host: str, port: int, path: str) -> str:
    """A shell line fetching http://host:port/path with busybox nc (its wget crashes). The request
    side stays open a moment: aiohttp drops a request whose client half-closed before the answer."""
    request = f"printf 'GET {path} HTTP/1.0\\r\\nHost: {url_host}\\r\\n\\r\\n'"
    return f"({request}; sleep 3) | nc -w 10 {url_host} {port}"


# ---------------------------------------------------------------- training on the real node


@dataclass(frozen=True)
class Workspace:
    """A namespace holding what training jobs share: a claim with the tiny model and dataset on it,
    and the fake Hugging Face token's Secret (``hf-token``, key ``token``)."""

    namespace: str
    claim: str
    token: str

    def host_path(self, *parts: str) -> Path:
        """Where a path under the claim's root lies on this machine (the test provisioner's hostPath)."""
        claim = kubectl_json("get", "pvc", self.claim, "-n", self.namespace)
        volume = kubectl_json("get", "pv", claim["spec"]["volumeName"])
        return Path(volume["spec"]["hostPath"]["path"], *parts)


def create_workspace(trainer_image: str) -> Iterator[Workspace]:
    """A fresh namespace with the claim, the Secret and the tiny model; deleted afterwards."""
    namespace = f"e2e-training-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    try:
        wait_for(lambda: kubectl("get", "serviceaccount", "default", "-n", namespace, check=False),
                 timeout=60, what=f"default ServiceAccount in {namespace}")
        workspace = Workspace(namespace, "train-data", "hf_" + secrets.token_hex(17))
        apply_yaml([
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"},
             "stringData": {"token": workspace.token}},
            {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": workspace.claim},
             "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}},
        ], namespace)
        write_tiny_model(namespace, trainer_image, workspace.claim)
        yield workspace
    finally:
        kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found", check=False)


def write_tiny_model(namespace: str, trainer_image: str, claim: str) -> None:
    """A one-off pod from the trainer image writes the tiny model and dataset onto the claim
    (hack/demo-train/tiny-model.yaml: the trainer tier's generator, no download)."""
    pod = yaml.safe_load(DEMO_TINY_MODEL.read_text())
    pod["spec"]["containers"][0]["image"] = trainer_image
    pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = claim
    apply_yaml([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tiny-model-maker"},
         "data": {"trainer_support.py": TRAINER_SUPPORT.read_text()}},
        pod,
    ], namespace)
    done = wait_for(lambda: pod_phase("tiny-model-maker", namespace), timeout=300, what="tiny model written")
    log = kubectl("logs", "tiny-model-maker", "-n", namespace)
    assert done["status"]["phase"] == "Succeeded", log[-3000:]


def cpu_job(name: str, claim: str, spec: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    """The demo's CPU AxolotlJob (hack/demo-train/quickstart.yaml) named ``name`` on ``claim``;
    ``spec`` adds Kubernetes fields, keyword arguments Axolotl keys."""
    job = yaml.safe_load(DEMO_JOB.read_text())
    job["metadata"] = {"name": name}
    job["spec"].update(spec or {})
    job["spec"]["storage"] = {"existingClaim": claim}
    job["spec"]["config"].update(config)
    return job


def get_axj(name: str, namespace: str) -> dict[str, str]:
    """`kubectl get axj NAME` as the user sees it: column -> value."""
    header, row = kubectl("get", "axj", name, "-n", namespace).splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return dict(zip(names, cells, strict=True))


def wait_for_phase(name: str, namespace: str, phase: str, timeout: float = 900) -> dict[str, Any]:
    """The AxolotlJob once its status reaches ``phase``; fails early on another terminal phase."""

    def reached() -> dict[str, Any] | None:
        job = kubectl_json("get", "axj", name, "-n", namespace)
        status = job.get("status") or {}
        if status.get("phase") in ("Failed", "Succeeded") and status["phase"] != phase:
            raise AssertionError(f"{name} ended {status['phase']}, not {phase}: {status.get('message')}")
        return job if status.get("phase") == phase else None

    return wait_for(reached, timeout=timeout, interval=2, what=f"AxolotlJob {name} {phase}")


def training_pods(name: str, namespace: str) -> list[dict[str, Any]]:
    """The pods of the AxolotlJob's training Job, oldest first."""
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", f"batch.kubernetes.io/job-name={name}")["items"]
    return sorted(pods, key=lambda p: p["metadata"]["creationTimestamp"])


def termination_summary(pod: dict[str, Any]) -> dict[str, Any]:
    """The runner's JSON summary from the pod's terminated container."""
    message = pod["status"]["containerStatuses"][0]["state"]["terminated"].get("message")
    summary = parse_summary(message)  # the operator's own reader
    assert summary is not None, f"no runner summary in {pod['metadata']['name']}: {message!r}"
    return summary
