"""hack/kubeenv survives a control plane killed without warning (as CI's clean-up or a crash leaves it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

HACK = Path(__file__).resolve().parents[2] / "hack" / "kubeenv"


def kubeenv(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KUBEENV_STATE_DIR": str(state), "KUBEENV_NODES": "1"}
    return subprocess.run([str(HACK), *args], env=env, capture_output=True, text=True, timeout=300)


def processes_using(state: Path) -> list[str]:
    found = subprocess.run(["pgrep", "-f", str(state)], capture_output=True, text=True)
    return found.stdout.split()


def test_up_after_sigkill_starts_a_fresh_control_plane(tmp_path):
    state = tmp_path / "state"
    first = kubeenv(state, "up")
    assert first.returncode == 0, first.stderr
    old_pid = int((state / "pid").read_text())
    os.kill(old_pid, signal.SIGKILL)
    time.sleep(0.5)
    try:
        second = kubeenv(state, "up")
        assert second.returncode == 0, second.stderr
        assert "reusing" not in second.stderr  # a killed (possibly unreaped) process is not reused
        assert int((state / "pid").read_text()) != old_pid
        kubeconfig = second.stdout.strip().splitlines()[-1].removeprefix("export KUBECONFIG=")
        nodes = subprocess.run(
            ["kubectl", "--kubeconfig", kubeconfig, "get", "nodes", "-o", "name"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert nodes.stdout.split() == ["node/kwok-gpu-0"]
    finally:
        down = kubeenv(state, "down")
    assert down.returncode == 0, down.stderr
    assert not state.exists()
    assert processes_using(state) == []  # neither the control plane nor its kwok child is left
