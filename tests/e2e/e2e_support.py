"""Helpers for the end-to-end tier: images, the Helm release, and requests made from inside the
cluster (a busybox pod on the real node), so the checks see what a pod sees."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "realnode"))
import realnode_support as realnode  # noqa: E402  (the real-node tier's helpers and fixtures)

kubectl, kubectl_json = realnode.kubectl, realnode.kubectl_json
apply_yaml, wait_for = realnode.apply_yaml, realnode.wait_for
real_pod, pod_phase = realnode.real_pod, realnode.pod_phase
REAL_ENV, NODE_SELECTOR, TOLERATION = realnode.REAL_ENV, realnode.NODE_SELECTOR, realnode.TOLERATION

IMAGES = ROOT / "hack" / "images"
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
    """Values only, no chart edits: the local images and the real node."""
    operator_repo, _, operator_tag = images["operator"].rpartition(":")
    return {
        "image": {"repository": operator_repo, "tag": operator_tag, "pullPolicy": "Never"},
        "trainer": {"image": images["trainer"], "imagePullPolicy": "Never"},
        "nodeSelector": NODE_SELECTOR,
        "tolerations": [TOLERATION],
        "storage": {"defaultSize": "1Gi"},
    }


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
