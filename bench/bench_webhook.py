"""What the admission webhook adds to an apply: server-side dry-run creates with and without it, side by side.

Runs the real operator (`axolotl-operator run --webhook-port N`, as `make demo` does) against the local
control plane (hack/kubeenv, its own state dir) and sends, through the API (the `kubernetes` client, one
connection, so no kubectl start-up cost), dry-run creates in alternating blocks of 10:
  valid    a valid AxolotlJob with the webhook registered: the API server calls the operator (parse_job)
  invalid  an AxolotlJob the webhook denies (load_in_4bit without an adapter), in turn with `valid`
  off      the valid one with the configuration removed (the API server has seen the removal: an invalid
           one goes through), then the configuration is put back (until the invalid one is denied again)
Dry runs store nothing, so every request does the same work. Prints medians and p99 in milliseconds.

    .venv/bin/python bench/bench_webhook.py [--requests 100]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from bench_operator import CACHE, ROOT, control_plane, free_port, kubectl, manifest, operator_argv
from kubernetes import client, config
from kubernetes.client.rest import ApiException

NAMESPACE = "bench-webhook"
BLOCK = 10


def create(api: client.CustomObjectsApi, body: dict[str, Any]) -> tuple[float, bool]:
    start = time.perf_counter()
    try:
        api.create_namespaced_custom_object(
            "axolotl.ai", "v1alpha1", NAMESPACE, "axolotljobs", body, dry_run="All"
        )
        allowed = True
    except ApiException as exc:
        if exc.status not in (400, 422):
            raise
        allowed = False
    return (time.perf_counter() - start) * 1000, allowed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def measure(requests: int) -> dict[str, list[float]]:
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    api = client.CustomObjectsApi()
    kubectl("apply", "-f", str(ROOT / "crds/axolotl.ai_axolotljobs.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/axolotljobs.axolotl.ai")
    kubectl("create", "namespace", NAMESPACE)
    health, hook = free_port(), free_port()
    name = "axolotl-operator-bench"
    argv = operator_argv(health, "--webhook-port", str(hook), "--webhook-configuration", name)
    valid = manifest("bench")
    invalid = copy.deepcopy(valid)
    invalid["spec"]["config"].pop("adapter")
    invalid["spec"]["config"]["load_in_4bit"] = True
    times: dict[str, list[float]] = {"off": [], "valid": [], "invalid": []}
    with (CACHE / "bench-webhook-operator.log").open("wb") as log:
        operator = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        try:
            for _ in range(300):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                    kubectl("get", "validatingwebhookconfiguration", name)
                    break
                except (OSError, RuntimeError):
                    time.sleep(0.2)
            registered = registration(kubectl("get", "validatingwebhookconfiguration", name, "-o", "json"))
            for _ in range(5):  # warm-up: connections, Kopf's first admission
                create(api, valid)
            for _ in range(0, requests, BLOCK):
                for _ in range(BLOCK):
                    elapsed, allowed = create(api, valid)
                    assert allowed, "the valid job was denied"
                    times["valid"].append(elapsed)
                    elapsed, allowed = create(api, invalid)
                    assert not allowed, "the invalid job was allowed: the webhook is not in the path"
                    times["invalid"].append(elapsed)
                kubectl("delete", "validatingwebhookconfiguration", name)
                wait_until(lambda: create(api, invalid)[1])
                times["off"].extend(create(api, valid)[0] for _ in range(BLOCK))
                kubectl("create", "-f", "-", input=registered)
                wait_until(lambda: not create(api, invalid)[1])
        finally:
            operator.send_signal(signal.SIGTERM)
            operator.wait(timeout=60)
            kubectl("delete", "namespace", NAMESPACE, "--wait=false")
    return times


def registration(text: str) -> str:
    """The configuration as the operator registered it, ready to be created again."""
    body = json.loads(text)
    body["metadata"] = {"name": body["metadata"]["name"], "labels": body["metadata"].get("labels") or {}}
    return json.dumps(body)


def wait_until(predicate: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the API server did not pick up the webhook configuration change")
        time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=100)
    args = parser.parse_args()
    with control_plane():
        times = measure(args.requests)
    off = statistics.median(times["off"])
    print(f"{args.requests} dry-run creates each, interleaved (ms):")
    for label, values in times.items():
        median = statistics.median(values)
        print(
            f"  {label:8s} median {median:6.1f}  p99 {percentile(values, 0.99):6.1f}  "
            f"median / off {median / off:4.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
