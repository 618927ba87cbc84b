"""Wall time from `kubectl apply` to the Job existing and to Succeeded, for 1 job and for N at once.

Runs the real operator (`axolotl-operator run`) against the local control plane (hack/kubeenv, its own
state dir) and times with watches, so polling adds no latency:
  t0          just before `kubectl apply -f` starts (what a user types)
  job exists  the batch/v1 Job's ADDED event
  succeeded   the AxolotlJob's status.phase == Succeeded event
kwok, the fake kubelet, keeps each pod Running ~1 s (its default) before it exits 0.

    .venv/bin/python bench/bench_operator.py [--single-runs 5] [--batch 20] [--batch-runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("AXOLOTL_CACHE_DIR") or Path.home() / ".cache" / "axolotl-operator")


def manifest(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "axolotl.ai/v1alpha1",
        "kind": "AxolotlJob",
        "metadata": {"name": name},
        "spec": {
            "gpus": 1,
            "storage": {"size": "1Gi"},
            "config": {
                "base_model": "NousResearch/Llama-3.2-1B",
                "adapter": "lora",
                "datasets": [{"path": "teknium/GPT4-LLM-Cleaned", "type": "alpaca"}],
            },
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kubectl(*args: str, input: str | None = None) -> str:
    proc = subprocess.run(["kubectl", *args], input=input, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


class Recorder:
    """Watches Jobs and AxolotlJobs of one namespace and records when each name appeared/succeeded."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.job_seen: dict[str, float] = {}
        self.succeeded: dict[str, float] = {}
        self._watches: list[watch.Watch] = []
        self._threads = [
            threading.Thread(target=self._jobs, daemon=True),
            threading.Thread(target=self._axjs, daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        for w in self._watches:
            w.stop()

    def _jobs(self) -> None:
        with contextlib.suppress(Exception):  # the stream ends with the control plane; nothing to report
            self._watch_jobs()

    def _axjs(self) -> None:
        with contextlib.suppress(Exception):
            self._watch_axjs()

    def _watch_jobs(self) -> None:
        w = watch.Watch()
        self._watches.append(w)
        for event in w.stream(client.BatchV1Api().list_namespaced_job, self.namespace, timeout_seconds=600):
            self.job_seen.setdefault(event["object"].metadata.name, time.monotonic())

    def _watch_axjs(self) -> None:
        w = watch.Watch()
        self._watches.append(w)
        api = client.CustomObjectsApi()
        stream = w.stream(
            api.list_namespaced_custom_object,
            "axolotl.ai",
            "v1alpha1",
            self.namespace,
            "axolotljobs",
            timeout_seconds=600,
        )
        for event in stream:
            obj = event["object"]
            if (obj.get("status") or {}).get("phase") == "Succeeded":
                self.succeeded.setdefault(obj["metadata"]["name"], time.monotonic())


def run_once(count: int, timeout: float = 300) -> tuple[list[float], list[float]]:
    """Apply `count` jobs at once; (seconds to each Job, seconds to each Succeeded)."""
    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    deadline = time.monotonic() + 60
    has_sa = ["kubectl", "get", "serviceaccount", "default", "-n", namespace]
    while subprocess.run(has_sa, capture_output=True).returncode != 0:
        if time.monotonic() > deadline:
            raise TimeoutError("default ServiceAccount")
        time.sleep(0.1)
    recorder = Recorder(namespace)
    recorder.start()
    time.sleep(0.5)  # let the watches open before t0
    docs = yaml.safe_dump_all([manifest(f"job-{i:02d}") for i in range(count)])
    t0 = time.monotonic()
    kubectl("apply", "-n", namespace, "-f", "-", input=docs)
    deadline = t0 + timeout
    while len(recorder.succeeded) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(recorder.succeeded)}/{count} Succeeded after {timeout}s")
        time.sleep(0.05)
    recorder.stop()
    kubectl("delete", "namespace", namespace, "--wait=false")
    return [t - t0 for t in recorder.job_seen.values()], [t - t0 for t in recorder.succeeded.values()]


@contextlib.contextmanager
def control_plane() -> Iterator[None]:
    """The local control plane (hack/kubeenv, state in bench-kubeenv) with KUBECONFIG pointing at it;
    stopped afterwards only if started here."""
    env = dict(
        os.environ, KUBEENV_STATE_DIR=os.environ.get("KUBEENV_STATE_DIR", str(CACHE / "bench-kubeenv"))
    )
    kubeenv = str(ROOT / "hack/kubeenv")
    started = subprocess.run([kubeenv, "status"], env=env, capture_output=True).returncode != 0
    up = subprocess.run([kubeenv, "up"], env=env, capture_output=True, text=True, check=True)
    os.environ["KUBECONFIG"] = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        yield
    finally:
        if started:
            subprocess.run([kubeenv, "down"], env=env, capture_output=True)


def operator_argv(health_port: int, *extra: str) -> list[str]:
    """`axolotl-operator run` from this venv, watching every namespace, liveness on `health_port`."""
    return [
        str(Path(sys.executable).parent / "axolotl-operator"),
        "run",
        "--all-namespaces",
        "--liveness",
        f"http://127.0.0.1:{health_port}/healthz",
        "--metrics-port",
        "0",
        *extra,
    ]


def measure(args: argparse.Namespace) -> tuple[list[Any], list[Any]]:
    """Start the operator on the running control plane and time the runs."""
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    kubectl("apply", "-f", str(ROOT / "crds/axolotl.ai_axolotljobs.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/axolotljobs.axolotl.ai")
    health = free_port()
    with (CACHE / "bench-operator.log").open("wb") as log:
        operator = subprocess.Popen(
            operator_argv(health),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.2)
            run_once(1)  # warm-up (first watch lists, connection pools)
            single = [run_once(1) for _ in range(args.single_runs)]
            batch = [run_once(args.batch) for _ in range(args.batch_runs)]
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=60)
    return single, batch


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--single-runs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--batch-runs", type=int, default=3)
    args = parser.parse_args()

    with control_plane():
        single, batch = measure(args)

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):.2f}s"

    print(f"1 job, {args.single_runs} runs (median):")
    print(f"  apply -> Job exists : {med([j[0] for j, _ in single])}")
    print(f"  apply -> Succeeded  : {med([s[0] for _, s in single])}")
    print(f"{args.batch} jobs at once, {args.batch_runs} runs (median over runs):")
    print(
        f"  apply -> all {args.batch} Jobs exist : {med([max(j) for j, _ in batch])}"
        f"  (per job median {med([statistics.median(j) for j, _ in batch])})"
    )
    print(
        f"  apply -> all {args.batch} Succeeded  : {med([max(s) for _, s in batch])}"
        f"  (per job median {med([statistics.median(s) for _, s in batch])})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
