"""`hack/kubeenv down` leaves the machine as `up --real-nodes 1` found it: no process,
network namespace, bridge, route, nftables rule, mount, cgroup, sysctl or file left behind,
even with pods still running at the time, and even after the control plane was SIGKILLed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from host_state import differences, snapshot
from realnode_support import (
    KUBEENV,
    REAL_ENV,
    REAL_STATE_DIR,
    apply_yaml,
    kubectl,
    pod_phase,
    real_pod,
    wait_for,
)

pytestmark = pytest.mark.realnode


def kubeenv(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **REAL_ENV}
    return subprocess.run(
        [str(KUBEENV), *args], capture_output=True, text=True, env=env, timeout=1800, check=False
    )


def exited(pid: int) -> bool:
    """Gone or a zombie: kill() only starts the exit, and the kernel releases the process' files (its
    machine lock among them) before it becomes a zombie. `down` run earlier would find the lock held."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("crash", [False, True], ids=["clean-stop", "after-sigkill"])
def test_down_restores_the_machine_after_running_pods(crash: bool) -> None:
    kubeenv("down")  # this tier's own control plane, should an earlier run have kept it
    before = snapshot(str(REAL_STATE_DIR))
    up = kubeenv("up", "--real-nodes", "1")
    assert up.returncode == 0, up.stderr[-3000:]
    previous = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        ns = "restore"
        kubectl("create", "namespace", ns)
        wait_for(lambda: kubectl("get", "serviceaccount", "default", "-n", ns, "-o", "name"), timeout=60)
        kubectl("create", "secret", "generic", "tok", "-n", ns, "--from-literal=token=not-a-real-token")
        running: dict[str, Any] = real_pod("busy", "sleep 3600", container={
            "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}}],
            "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
        }, volumes=[{"name": "shm", "emptyDir": {"medium": "Memory"}}])
        apply_yaml([running, real_pod("done", "echo done")], ns)
        wait_for(lambda: pod_phase("busy", ns, ("Running",)), timeout=120, what="pod busy running")
        wait_for(lambda: pod_phase("done", ns), timeout=120, what="pod done finished")
        during = snapshot(str(REAL_STATE_DIR))
    finally:
        if previous is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = previous
        if crash:  # the control plane dies without cleaning up; its children get SIGTERM from the kernel
            pid = int((REAL_STATE_DIR / "pid").read_text())
            os.kill(pid, signal.SIGKILL)
            wait_for(lambda: exited(pid), timeout=60, what=f"the killed control plane ({pid}) to exit")
        down = kubeenv("down")
    assert down.returncode == 0, down.stderr[-3000:]
    # While up, the node really changed the machine (so the comparison below means something).
    changed = differences(before, during)
    assert {"links", "routes", "nftables", "mounts", "cgroups", "processes"} <= changed.keys(), changed.keys()
    # The kernel frees a pod's network namespace (and its veth) asynchronously: allow it a moment.
    deadline = time.monotonic() + 30
    while (left := differences(before, snapshot(str(REAL_STATE_DIR)))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == {}, left
