"""Helpers of bench_scale.py: raw watches, /proc sampling, apiserver metrics, the training-operator process.

Everything talks to the local control plane on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from axolotl_operator.kube import ApiError, Kube

CLK_TCK = os.sysconf("SC_CLK_TCK")
CLONE_NEWNET = 0x40000000


# ---------------------------------------------------------------------------------------------- stats


def pct(values: Iterable[float], q: float) -> float | None:
    """The q-quantile (0..1, nearest rank) or None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: Iterable[float]) -> float | None:
    values = list(values)
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (its threads included)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM = peak RSS) in MiB."""
    rss = hwm = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return rss, hwm


class Sampler:
    """RSS (MiB) and CPU seconds of a process every `interval` seconds, in a thread."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (monotonic, rss MiB, cpu s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.samples.append((time.monotonic(), memory_mib(self.pid)[0], cpu_seconds(self.pid)))
            self._stop.wait(self.interval)

    def peak(self, since: float = 0.0) -> float:
        return max((rss for t, rss, _ in self.samples if t >= since), default=0.0)


# ---------------------------------------------------------------------------------------------- apiserver


METRIC = re.compile(r"^apiserver_request_total\{([^}]*)\}\s+([0-9.eE+]+)")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def api_requests(kube: Kube) -> Counter[tuple[str, str, str, str]]:
    """apiserver_request_total summed by (verb, resource, subresource, code class)."""
    text = kube.request("GET", "/metrics", accept="text/plain")
    if isinstance(text, bytes):
        text = text.decode()
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for line in str(text).splitlines():
        match = METRIC.match(line)
        if not match:
            continue
        labels = dict(LABEL.findall(match.group(1)))
        if labels.get("dry_run"):
            continue
        key = (
            labels.get("verb", ""),
            labels.get("resource", ""),
            labels.get("subresource", ""),
            labels.get("code", "")[:1] + "xx",
        )
        counts[key] += int(float(match.group(2)))
    return counts


def diff_requests(
    before: Counter[tuple[str, str, str, str]], after: Counter[tuple[str, str, str, str]]
) -> dict[str, Any]:
    """Requests served between two snapshots: total, by verb/resource, non-2xx."""
    delta = Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0})
    by: Counter[str] = Counter()
    for (verb, resource, sub, _code), n in delta.items():
        by[f"{verb} {resource}{'/' + sub if sub else ''}"] += n
    errors = sum(n for (_v, _r, _s, code), n in delta.items() if code not in ("2xx", "xx"))
    return {"total": sum(delta.values()), "non_2xx": errors, "by": dict(by.most_common())}


# ---------------------------------------------------------------------------------------------- watches


class Watch(threading.Thread):
    """LIST then WATCH one collection (plain JSON, no model deserialisation); calls
    `on_event(type, obj, monotonic)` for every object, the listed ones as ADDED. Re-watches on expiry."""

    def __init__(self, kube: Kube, path: str, on_event: Callable[[str, dict[str, Any], float], None]) -> None:
        super().__init__(daemon=True)
        self.kube = kube
        self.path = path
        self.on_event = on_event
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._response: Any = None

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            if self._response is not None:
                self._response.shutdown()
        with contextlib.suppress(Exception):
            if self._response is not None:
                self._response.release_conn()

    def run(self) -> None:
        with contextlib.suppress(Exception):
            self._run()

    def _run(self) -> None:
        version = ""
        while not self._stop.is_set():
            if not version:
                listed = self.kube.request("GET", self.path)
                now = time.monotonic()
                for item in listed.get("items") or []:
                    self.on_event("ADDED", item, now)
                version = listed["metadata"]["resourceVersion"]
            self.ready.set()
            query = f"watch=1&resourceVersion={version}&allowWatchBookmarks=true&timeoutSeconds=600"
            _, url, headers, _, _ = self.kube.api.param_serialize(
                "GET",
                f"{self.path}?{query}",
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            pool = self.kube.api.rest_client.pool_manager
            self._response = pool.request("GET", url, headers=headers, preload_content=False, timeout=None)
            buffer = b""
            for chunk in self._response.stream(1 << 16):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        version = ""  # 410 Gone: list again
                        break
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if kind != "BOOKMARK":
                        self.on_event(kind, obj, time.monotonic())
                if self._stop.is_set():
                    return


PLURALS = {
    ("v1", "Secret"): "/api/v1/namespaces/{ns}/secrets",
    ("kubeflow.org/v1", "PyTorchJob"): "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs",
    ("axolotl.ai/v1alpha1", "AxolotlJob"): "/apis/axolotl.ai/v1alpha1/namespaces/{ns}/axolotljobs",
}


def create_object(kube: Kube, manifest: dict[str, Any]) -> dict[str, Any]:
    """POST a namespaced object (the kinds above) through the operator's client."""
    path = PLURALS[(manifest["apiVersion"], manifest["kind"])].format(ns=manifest["metadata"]["namespace"])
    return kube.request("POST", path, body=manifest)


def owner_name(obj: dict[str, Any], kind: str) -> str | None:
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == kind:
            return ref.get("name")
    return None


# ---------------------------------------------------------------------------------------------- namespaces


def create_namespace(kube: Kube, name: str, timeout: float = 60) -> None:
    """A fresh namespace (one left by an interrupted run is deleted first)."""
    with contextlib.suppress(ApiError):
        kube.request("GET", f"/api/v1/namespaces/{name}")
        delete_namespace(kube, name)
    kube.request(
        "POST",
        "/api/v1/namespaces",
        body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    deadline = time.monotonic() + timeout
    while True:  # pods need the default ServiceAccount
        try:
            kube.request("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return
        except ApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def delete_namespace(kube: Kube, name: str, timeout: float = 900) -> float:
    """Delete and wait until it is gone; seconds it took."""
    start = time.monotonic()
    with contextlib.suppress(ApiError):
        kube.request("DELETE", f"/api/v1/namespaces/{name}")
    while time.monotonic() - start < timeout:
        try:
            kube.request("GET", f"/api/v1/namespaces/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return time.monotonic() - start
            raise
        time.sleep(0.5)
    raise TimeoutError(f"namespace {name} still there after {timeout}s")


# ------------------------------------------------------------------------------------ training-operator

TO_SYSTEM_NAMESPACE = "bench-kubeflow"
TO_SECRET = "training-operator-webhook-cert"
TO_WEBHOOK_CONFIGURATION = "validator.training-operator.kubeflow.org"  # fixed in its pkg/cert
TO_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"  # fixed in its pkg/cert, seen in its mount namespace


def build_training_operator(root: Path) -> Path:
    out = subprocess.run(
        ["nice", str(root / "hack/training-operator/build")], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"hack/training-operator/build failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class ApiForward:
    """Makes 127.0.0.1:`port` inside another network namespace (the training-operator's) lead to the
    API server on this machine's 127.0.0.1:`port`. The listening socket is created by a thread that
    joined that namespace (a socket stays in the namespace it was made in); every upstream connection is
    made from this namespace. Nothing listens outside loopback, here or there."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.port = port
        self._closed = False
        box: list[Any] = []

        def listen() -> None:
            try:
                with open(f"/proc/{pid}/ns/net") as ns:
                    _setns(ns.fileno())
                sock = socket.socket()
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("127.0.0.1", port))
                sock.listen(256)
                box.append(sock)
            except BaseException as exc:
                box.append(exc)

        helper = threading.Thread(target=listen)  # exits afterwards: this process' namespace is untouched
        helper.start()
        helper.join()
        if isinstance(box[0], BaseException):
            raise box[0]
        self.sock: socket.socket = box[0]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                inner, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(inner,), daemon=True).start()

    def _relay(self, inner: socket.socket) -> None:
        try:
            outer = socket.create_connection(("127.0.0.1", self.port))
        except OSError:
            inner.close()
            return

        def pump(src: socket.socket, dst: socket.socket) -> None:
            with contextlib.suppress(OSError):
                while data := src.recv(1 << 16):
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        back = threading.Thread(target=pump, args=(outer, inner), daemon=True)
        back.start()
        pump(inner, outer)
        back.join()
        inner.close()
        outer.close()


class TrainingOperator:
    """Kubeflow's training-operator v1.8.1 (upstream cmd/training-operator.v1, unchanged) as a local
    process: PyTorchJob scheme only, no gang scheduler, one controller thread (its default), no leader
    election, metrics off. It runs in a network namespace of its own (only `lo`, reached by ApiForward)
    because its webhook server binds all addresses with no flag to change it, and in a mount namespace
    with a tmpfs over /tmp for the serving certificate it expects at a fixed path. Its cert rotator needs
    its Secret and a ValidatingWebhookConfiguration of its fixed name: the bench makes both, the
    configuration with one webhook that matches no request (the API server never calls it, like our
    operator's bench runs without its webhook), and copies the certificate the rotator writes into the
    Secret to where the kubelet would mount it."""

    def __init__(self, home: Path, kube: Kube, workdir: Path, threads: int = 1) -> None:
        self.home = home
        self.kube = kube
        self.workdir = workdir
        self.threads = threads
        self.proc: subprocess.Popen[bytes] | None = None
        self.forward: ApiForward | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "training-operator.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def install(self, kubectl: Callable[..., str]) -> None:
        """The PyTorchJob CRD (from the same module), the rotator's namespace, Secret and configuration."""
        kubectl("apply", "--server-side", "-f", str(self.home / "crds/kubeflow.org_pytorchjobs.yaml"))
        deadline = time.monotonic() + 60
        path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/pytorchjobs.kubeflow.org"
        while not any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in (self.kube.request("GET", path).get("status") or {}).get("conditions") or []
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("the PyTorchJob CRD is not Established")
            time.sleep(0.2)
        with contextlib.suppress(ApiError):
            create_namespace(self.kube, TO_SYSTEM_NAMESPACE)
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": TO_SECRET, "namespace": TO_SYSTEM_NAMESPACE},
        }
        with contextlib.suppress(ApiError):
            create_object(self.kube, secret)
        hook = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": TO_WEBHOOK_CONFIGURATION},
            "webhooks": [
                {
                    "name": "never.bench.axolotl.ai",
                    "clientConfig": {"url": "https://127.0.0.1:1/never"},
                    "rules": [
                        {
                            "apiGroups": ["bench.axolotl.ai"],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["nothing"],
                        }
                    ],
                    "failurePolicy": "Ignore",
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                }
            ],
        }
        with contextlib.suppress(ApiError):  # 409: left by an interrupted run, the same
            self.kube.request(
                "POST", "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations", body=hook
            )

    def uninstall(self) -> None:
        with contextlib.suppress(ApiError):
            self.kube.request(
                "DELETE",
                f"/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{TO_WEBHOOK_CONFIGURATION}",
            )
        with contextlib.suppress(Exception):
            delete_namespace(self.kube, TO_SYSTEM_NAMESPACE, timeout=120)

    def start(self, api_port: int, timeout: float = 120) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        go = self.workdir / "go"
        go.unlink(missing_ok=True)
        script = (
            "set -e; ip link set lo up; mount -t tmpfs -o size=4m,mode=1777 bench-to-tmp /tmp; "
            f"mkdir -p {TO_CERT_DIR}; "
            'while [ ! -e "$1" ]; do sleep 0.05; done; shift; exec "$@"'
        )
        argv = [
            "unshare",
            "--net",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "to-launcher",
            str(go),
            str(self.home / "training-operator"),
            f"--kubeconfig={os.environ['KUBECONFIG']}",
            "--enable-scheme=pytorchjob",
            "--gang-scheduler-name=",
            f"--controller-threads={self.threads}",
            "--metrics-bind-address=0",
            "--health-probe-bind-address=127.0.0.1:8081",
            "--webhook-server-port=9443",
            "--leader-elect=false",
            "--zap-log-level=info",
        ]
        env = dict(os.environ, MY_POD_NAMESPACE=TO_SYSTEM_NAMESPACE)
        self._log_start = len(self.log())
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 10
        while True:  # the shell has made the namespaces once /tmp is its tmpfs
            if self.proc.poll() is not None:
                raise RuntimeError(f"training-operator launcher exited:\n{self.log()[-3000:]}")
            with contextlib.suppress(OSError):
                if (
                    os.readlink(f"/proc/{self.pid}/ns/net") != os.readlink("/proc/self/ns/net")
                    and Path(f"/proc/{self.pid}/root{TO_CERT_DIR}").is_dir()
                ):
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("training-operator namespaces")
            time.sleep(0.05)
        self.forward = ApiForward(self.pid, api_port)
        go.touch()
        deadline = time.monotonic() + timeout
        copied = False
        while 'pytorchjob-controller", "worker count' not in self.log()[self._log_start :]:
            if self.proc.poll() is not None:
                raise RuntimeError(f"training-operator exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"training-operator not ready:\n{self.log()[-3000:]}")
            if not copied:
                copied = self._copy_cert()
            time.sleep(0.2)

    def _copy_cert(self) -> bool:
        """What the kubelet would do: mount the rotator's Secret at the cert dir."""
        try:
            secret = self.kube.request("GET", f"/api/v1/namespaces/{TO_SYSTEM_NAMESPACE}/secrets/{TO_SECRET}")
        except ApiError:
            return False
        data = secret.get("data") or {}
        if not data.get("tls.crt") or not data.get("tls.key"):
            return False
        import base64

        target = Path(f"/proc/{self.pid}/root{TO_CERT_DIR}")
        for key in ("tls.crt", "tls.key"):
            (target / key).write_bytes(base64.b64decode(data[key]))
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        if self.forward is not None:
            self.forward.close()
