"""Helpers for the operator's integration tests (imported by the tests and by conftest.py).

The generic kubectl helpers are the integration suite's own (tests/integration/conftest.py), loaded by
path because two modules named `conftest` cannot import each other.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]
_spec = importlib.util.spec_from_file_location(
    "axolotl_integration_helpers", ROOT / "tests/integration/conftest.py"
)
assert _spec and _spec.loader
_helpers = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _helpers
_spec.loader.exec_module(_helpers)
kubectl = _helpers.kubectl
kubectl_json = _helpers.kubectl_json
apply_yaml = _helpers.apply_yaml
wait_for = _helpers.wait_for
KubectlError = _helpers.KubectlError
listening_sockets = _helpers.listening_sockets

TEST_NODE_LABEL = "axolotl.ai/test-node"
HOLD = {"kwok.axolotl.ai/hold": "true"}  # the fake kubelet keeps the pod Running until the knob goes
RELEASE = "kwok.axolotl.ai/hold-"  # `kubectl annotate pod ... kwok.axolotl.ai/hold-` removes it
BASE_CONFIG = {
    "base_model": "NousResearch/Llama-3.2-1B",
    "adapter": "lora",
    "lora_r": 8,
    "datasets": [{"path": "teknium/GPT4-LLM-Cleaned", "type": "alpaca"}],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def operator_binary() -> str:
    """The console script of the venv running the tests (what `make test` installs)."""
    candidate = Path(sys.executable).parent / "axolotl-operator"
    return str(candidate if candidate.exists() else ROOT / ".venv" / "bin" / "axolotl-operator")


class OperatorProcess:
    """The operator as users run it, restartable; all its output goes to one log file."""

    def __init__(
        self,
        log_path: Path,
        scope: tuple[str, ...] = ("--all-namespaces",),
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        command: tuple[str, ...] | None = None,
    ) -> None:
        self.log_path = log_path
        self.command = command or (operator_binary(),)  # another version's: (python, -m, ...)
        self.scope = scope
        self.extra_args = extra_args
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0
        self.starts = 0

    def start(self, wait: bool = True) -> None:
        """Start the process; with `wait`, return once its liveness endpoint answers."""
        self.health_port, self.metrics_port = free_port(), free_port()
        argv = [
            *self.command,
            "run",
            *self.scope,
            "--liveness",
            f"http://127.0.0.1:{self.health_port}/healthz",
            "--metrics-port",
            str(self.metrics_port),
            *self.extra_args,
        ]
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start #{self.starts + 1}: {' '.join(argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env}
            )
        self.starts += 1
        if wait:
            wait_for(self.healthy, timeout=60, interval=0.2, what="the operator's liveness endpoint")

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log()[-4000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure(self) -> None:
        if not self.running():
            self.start()

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as Kubernetes stops a pod; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=30)

    def restart(self) -> None:
        if self.running():
            self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()


def make_axj(
    name: str, annotations: dict[str, str] | None = None, config: dict[str, Any] | None = None, **spec: Any
) -> dict[str, Any]:
    """An AxolotlJob; ``annotations`` go to its pods (the fake kubelet's knobs); a None config value
    removes that key."""
    merged = {**BASE_CONFIG, **(config or {})}
    body: dict[str, Any] = {
        "gpus": 1,
        "storage": {"size": "1Gi"},
        "config": {key: value for key, value in merged.items() if value is not None},
    }
    if annotations:
        body["podMetadata"] = {"annotations": annotations}
    body.update(spec)
    return {
        "apiVersion": "axolotl.ai/v1alpha1",
        "kind": "AxolotlJob",
        "metadata": {"name": name},
        "spec": body,
    }


def get_axj(namespace: str, name: str) -> dict[str, Any]:
    return kubectl_json("get", "axolotljob", name, "-n", namespace)


def wait_phase(
    namespace: str, name: str, phase: str, reason: str | None = None, timeout: float = 60
) -> dict[str, Any]:
    """Wait for status.phase (and reason); fail at once if the job reaches another final phase."""

    def check() -> dict[str, Any] | None:
        obj = get_axj(namespace, name)
        status = obj.get("status") or {}
        if status.get("phase") == phase and (reason is None or status.get("reason") == reason):
            return obj
        if status.get("phase") in {"Succeeded", "Failed"} and status.get("phase") != phase:
            raise AssertionError(f"{name} ended {status.get('phase')}/{status.get('reason')}: {status}")
        return None

    return wait_for(
        check, timeout=timeout, interval=0.2, what=f"{namespace}/{name} phase {phase} {reason or ''}"
    )


def events_of(namespace: str, name: str) -> list[dict[str, Any]]:
    items = kubectl_json(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=AxolotlJob,involvedObject.name={name}",
    )
    return sorted(items["items"], key=lambda e: e.get("firstTimestamp") or "")


def wait_events(namespace: str, name: str, *reasons: str, timeout: float = 30) -> list[str]:
    """Wait until the AxolotlJob has Events with all these reasons; return all reasons (unordered)."""

    def check() -> list[str] | None:
        found = [e["reason"] for e in events_of(namespace, name)]
        return found if all(r in found for r in reasons) else None

    return wait_for(check, timeout=timeout, interval=0.2, what=f"events {reasons} on {name}")


def children(namespace: str, name: str, kind: str) -> list[dict[str, Any]]:
    return kubectl_json("get", kind, "-n", namespace, "-l", f"axolotl.ai/job={name}")["items"]


def pods_of(namespace: str, name: str) -> list[dict[str, Any]]:
    return children(namespace, name, "pods")


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in obj["status"]["conditions"] if c["type"] == type_)


def patch_spec(namespace: str, name: str, spec: dict[str, Any]) -> str:
    return kubectl(
        "patch", "axolotljob", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec})
    )


def kubelet_reports_waiting(namespace: str, pod: dict[str, Any], reason: str, message: str) -> None:
    """Write what a kubelet writes when the container cannot start (phase Pending, waiting state)."""
    container = pod["spec"]["containers"][0]
    status = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "ContainersNotReady"},
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"waiting": {"reason": reason, "message": message}},
                }
            ],
        }
    }
    kubectl(
        "patch",
        "pod",
        pod["metadata"]["name"],
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
    )


def progress_operator(log_dir: Path, name: str, port: int, scheme: str) -> OperatorProcess:
    """An operator with its progress endpoint on 127.0.0.1:`port`, telling trainer pods where it is
    (`https`: it makes its own CA and serves TLS)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    return OperatorProcess(
        log_dir / f"{name}.log",
        extra_args=("--progress-port", str(port), "--progress-host", "127.0.0.1"),
        env={"AXOLOTL_OPERATOR_PROGRESS_URL": f"{scheme}://127.0.0.1:{port}/progress"},
    )


def delete_jobs_and_wait_for_pods(namespace: str) -> None:
    """Held pods keep a deleted namespace terminating for a while; an operator started by a later test
    would then log 403s for it. Delete the jobs and wait for their pods to go before the namespace does."""
    kubectl("delete", "axolotljobs", "--all", "-n", namespace, "--wait=false", check=False)

    def gone() -> bool:
        if not kubectl_json("get", "pods", "-n", namespace)["items"]:
            return True
        # a Job not yet garbage-collected may have replaced a pod: remove whatever is there
        kubectl("delete", "pods", "--all", "-n", namespace, "--grace-period=0", "--force", check=False)
        return False

    wait_for(gone, timeout=90, interval=0.5, what=f"pods in {namespace} gone")
