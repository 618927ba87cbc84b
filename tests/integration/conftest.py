"""Fixtures for integration tests against a REAL Kubernetes control plane.

`hack/kubeenv up` starts (or reuses) etcd + kube-apiserver + kube-controller-manager +
kube-scheduler built from Kubernetes' own modules, with kwok as the kubelet of fake GPU
nodes (default 2 nodes x 8 `nvidia.com/gpu`). Nothing here is mocked: CRD validation,
RBAC, Job semantics and garbage collection are Kubernetes' own.

Fixtures
--------
- ``kubeenv`` (session): the running control plane; sets ``KUBECONFIG`` for the whole
  session (so a subprocess such as the operator inherits it), installs the AxolotlJob CRD
  from ``crds/`` when present, and stops the control plane at the end only if this session
  started it (set ``KUBEENV_KEEP=1`` to leave it running).
- ``kubeconfig`` (session): path of the admin kubeconfig.
- ``namespace``: a fresh namespace per test (its default ServiceAccount exists, so pods
  can be created at once); deleted after the test.
- ``kubectl``: ``kubectl(*args, input=None, check=True) -> str`` (stdout).
- ``kubectl_json``: ``kubectl_json(*args) -> dict`` (adds ``-o json``).
- ``apply_yaml``: ``apply_yaml(text_or_obj, namespace=None) -> list[dict]`` server-side
  applies YAML text, a dict or a list of dicts and returns the applied objects.
- ``wait_for``: ``wait_for(predicate, timeout=60, interval=0.25, what="") -> value``
  polls until ``predicate()`` returns something truthy and returns it.
- ``wait_condition``: ``wait_condition(ref, condition, namespace=None, timeout=60)``
  waits for ``status.conditions[type=condition].status == "True"`` (e.g. ``job/x``, ``Complete``).
- ``helm``: path of a real helm binary (also put on ``PATH``).

Fake kubelet knobs (pod annotations, see tests/kubeenv/README.md): ``kwok.axolotl.ai/hold``,
``exit-code``, ``oom``, ``evict``, ``termination-message``, ``run-seconds``.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBEENV = ROOT / "hack" / "kubeenv"
HELM = ROOT / "hack" / "helm"
CRD_FILE = ROOT / "crds" / "axolotl.ai_axolotljobs.yaml"
KNOB = "kwok.axolotl.ai/"

T = TypeVar("T")


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; ``stderr`` says why (e.g. Forbidden). Tests catch it as
    ``subprocess.CalledProcessError``."""

    def __str__(self) -> str:
        return f"kubectl {' '.join(self.cmd)} exited {self.returncode}: {(self.stderr or '').strip()}"


def kubectl(*args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
    """Run kubectl against the current KUBECONFIG and return stdout; raise KubectlError on failure."""
    argv = [str(a) for a in args]
    proc = subprocess.run(
        ["kubectl", *argv], input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
    return proc.stdout


def kubectl_json(*args: str) -> dict[str, Any]:
    """kubectl with ``-o json``, parsed."""
    return json.loads(kubectl(*args, "-o", "json"))


def _to_docs(text_or_obj: str | dict[str, Any] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(text_or_obj, str):
        return [d for d in yaml.safe_load_all(text_or_obj) if d]
    if isinstance(text_or_obj, dict):
        return [text_or_obj]
    return list(text_or_obj)


def apply_yaml(
    text_or_obj: str | dict[str, Any] | list[dict[str, Any]], namespace: str | None = None
) -> list[dict[str, Any]]:
    """Server-side apply manifests (YAML text, a dict or a list of dicts); return the applied objects."""
    docs = _to_docs(text_or_obj)
    args = ["apply", "--server-side", "--force-conflicts", "--field-manager=pytest", "-f", "-", "-o", "json"]
    if namespace:
        args += ["-n", namespace]
    out = json.loads(kubectl(*args, input=yaml.safe_dump_all(docs)))
    return out.get("items", [out]) if out.get("kind") == "List" else [out]


def wait_for(predicate: Callable[[], T], timeout: float = 60, interval: float = 0.25, what: str = "") -> T:
    """Poll ``predicate`` until it returns a truthy value (returned); exceptions count as not yet."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except (KubectlError, KeyError, IndexError, TypeError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}; last: {last!r}")
        time.sleep(interval)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    """The status condition of the given type, or None."""
    for c in obj.get("status", {}).get("conditions") or []:
        if c.get("type") == type_:
            return c
    return None


def wait_condition(ref: str, type_: str, namespace: str | None = None, timeout: float = 60) -> dict[str, Any]:
    """Wait until ``ref`` (e.g. ``job/train``) has condition ``type_`` True; return the object."""
    ns = ["-n", namespace] if namespace else []

    def check() -> dict[str, Any] | None:
        obj = kubectl_json("get", ref, *ns)
        c = condition(obj, type_)
        return obj if c and c.get("status") == "True" else None

    return wait_for(check, timeout=timeout, what=f"{ref} condition {type_}=True")


def listening_sockets(pid: int) -> list[tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]]:
    """(local address, port) of the TCP sockets a process listens on (from /proc, no tools needed)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = str(fd.readlink()) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table, size in (("tcp", 4), ("tcp6", 16)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = [raw[i:i + 4][::-1] for i in range(0, size, 4)]
                found.append((ipaddress.ip_address(b"".join(words)), int(port, 16)))
    return found


def listening_addresses(pid: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Local addresses of the TCP sockets a process listens on."""
    return [address for address, _ in listening_sockets(pid)]


@dataclass(frozen=True)
class KubeEnv:
    """The running local control plane."""

    kubeconfig: Path
    started_here: bool


def _install_crd(path: Path) -> None:
    """Install a CRD file and wait until every CRD in it is Established."""
    docs = _to_docs(path.read_text())
    apply_yaml(docs)
    for d in docs:
        if d.get("kind") == "CustomResourceDefinition":
            wait_condition(f"crd/{d['metadata']['name']}", "Established", timeout=60)


def _put_on_path(name: str, flag: str) -> Path:
    """Put the binary ``hack/helm <flag>`` provides on PATH as ``name``; return its path."""
    out = subprocess.run([str(HELM), flag], capture_output=True, text=True, timeout=600, check=False)
    if out.returncode != 0:
        pytest.fail(f"hack/helm {flag} failed: {out.stderr[-2000:]}")
    target = Path(out.stdout.strip().splitlines()[-1])
    link_dir = target.parent / f"{name}-bin"
    link_dir.mkdir(parents=True, exist_ok=True)
    link = link_dir / name
    if not link.is_symlink():
        link.symlink_to(target)
    os.environ["PATH"] = f"{link_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    return link


def kubeenv_session(args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Iterator[KubeEnv]:
    """Start (or reuse) a control plane (``hack/kubeenv up *args`` with ``env`` added to the
    environment), point KUBECONFIG at it, yield it; stop it only if this call started it."""
    run_env = {**os.environ, **(env or {})}
    if shutil.which("kubectl") is None:  # a machine without kubectl: the one shipped with helm
        _put_on_path("kubectl", "--kubectl-path")
    running = subprocess.run(
        [str(KUBEENV), "status"], capture_output=True, text=True, check=False, env=run_env
    )
    started_here = running.returncode != 0
    proc = subprocess.run(
        [str(KUBEENV), "up", *args], capture_output=True, text=True, timeout=3600, check=False, env=run_env
    )
    if proc.returncode != 0:
        pytest.fail(f"hack/kubeenv up failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    last = proc.stdout.strip().splitlines()[-1]
    if not last.startswith("export KUBECONFIG="):
        pytest.fail(f"hack/kubeenv up printed no KUBECONFIG line: {proc.stdout!r}")
    path = Path(last.split("=", 1)[1])
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(path)
    try:
        if CRD_FILE.exists():
            _install_crd(CRD_FILE)
        yield KubeEnv(kubeconfig=path, started_here=started_here)
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        if started_here and not os.environ.get("KUBEENV_KEEP"):
            subprocess.run([str(KUBEENV), "down"], capture_output=True, text=True, check=False, env=run_env)


@pytest.fixture(scope="session")
def kubeenv() -> Iterator[KubeEnv]:
    """Start (or reuse) the control plane once per session; stop it only if we started it."""
    yield from kubeenv_session()


@pytest.fixture(scope="session")
def kubeconfig(kubeenv: KubeEnv) -> Path:
    """Admin kubeconfig of the local control plane."""
    return kubeenv.kubeconfig


@pytest.fixture
def namespace(kubeenv: KubeEnv, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace named after the test, ready for pods; deleted afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", name)
    # The ServiceAccount admission plugin rejects pods until the default SA exists.
    wait_for(lambda: kubectl("get", "serviceaccount", "default", "-n", name, "-o", "name"), timeout=60,
             what=f"default ServiceAccount in {name}")
    yield name
    kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


@pytest.fixture(name="kubectl")
def kubectl_fixture(kubeenv: KubeEnv) -> Callable[..., str]:
    """``kubectl(*args, input=None, check=True) -> stdout`` against the local control plane."""
    return kubectl


@pytest.fixture(name="kubectl_json")
def kubectl_json_fixture(kubeenv: KubeEnv) -> Callable[..., dict[str, Any]]:
    """``kubectl_json(*args) -> dict``."""
    return kubectl_json


@pytest.fixture(name="apply_yaml")
def apply_yaml_fixture(kubeenv: KubeEnv) -> Callable[..., list[dict[str, Any]]]:
    """``apply_yaml(text_or_obj, namespace=None) -> applied objects``."""
    return apply_yaml


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Any]:
    """``wait_for(predicate, timeout=60, interval=0.25, what="") -> truthy value``."""
    return wait_for


@pytest.fixture(name="wait_condition")
def wait_condition_fixture(kubeenv: KubeEnv) -> Callable[..., dict[str, Any]]:
    """``wait_condition(ref, type, namespace=None, timeout=60) -> object``."""
    return wait_condition


@pytest.fixture(scope="session")
def helm() -> Path:
    """A real helm binary (fetched once into ~/.cache/axolotl-operator/bin), also put on PATH."""
    return _put_on_path("helm", "--path")


@pytest.fixture(name="listening_addresses")
def listening_addresses_fixture() -> Callable[[int], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """``listening_addresses(pid)``: the local addresses a process listens on, read from /proc."""
    return listening_addresses
