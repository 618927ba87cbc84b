"""An upgrade from the previous version keeps running jobs: the previous chart, CRD and operator (taken
from git at PREVIOUS) run two training jobs; then the documented upgrade (the new CRD applied, `helm
upgrade` to this chart, the new operator started) must not restart them: the same Job and pod uids, the
new operator writes their status, and a job finishing afterwards is recorded as Succeeded.

The chart's operator Deployment runs on a kwok node here (its pod is scheduled, not executed), so the
operator versions run as local processes; `helm upgrade` itself (templates, immutable selectors, the
values schema) is real, and so are the CRD update and the handover between the two operators.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import uuid
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from operator_support import (
    HOLD,
    RELEASE,
    ROOT,
    OperatorProcess,
    apply_yaml,
    get_axj,
    kubectl,
    kubectl_json,
    make_axj,
    pods_of,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration

# The last version that landed before this test was written (no release is tagged yet): bump it to the
# previous release when one is cut.
PREVIOUS = "16a67af"
CRD = "crds/axolotl.ai_axolotljobs.yaml"
CHART = "charts/axolotl-operator"
NO_WEBHOOK = ("--set", "webhook.enabled=false")  # its pod does not really run here to answer


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, timeout=300, check=False)


def have_revision(revision: str) -> bool:
    """Whether the checkout has `revision`; a shallow clone fetches its history from its origin first."""
    if git("cat-file", "-e", f"{revision}^{{commit}}").returncode == 0:
        return True
    if git("rev-parse", "--is-shallow-repository").stdout.strip() == b"true":
        git("fetch", "--quiet", "--unshallow")
    return git("cat-file", "-e", f"{revision}^{{commit}}").returncode == 0


def extract(revision: str, paths: list[str], into: Path) -> Path:
    """The files of `paths` as they were at `revision` (git archive: no checkout, no worktree)."""
    assert have_revision(revision), f"this checkout lacks the previous version {revision}: clone with history"
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", revision, *paths],
        capture_output=True,
        check=True,
        timeout=120,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def apply_crd(path: Path) -> None:
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=pytest", "-f", str(path))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/axolotljobs.axolotl.ai")


@pytest.fixture
def previous(tmp_path: Path) -> Iterator[Path]:
    """The previous version's files; the current CRD is put back whatever happens."""
    root = extract(PREVIOUS, ["operator", "crds", "charts"], tmp_path / "previous")
    try:
        yield root
    finally:
        apply_crd(ROOT / CRD)


def helm_release(helm: Path, verb: str, chart: Path, release: str, namespace: str) -> None:
    argv = [str(helm), verb, release, str(chart), "-n", namespace, *NO_WEBHOOK]
    if verb == "install":
        argv.append("--create-namespace")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"helm {verb} failed:\n{done.stderr}"


def snapshot(namespace: str, name: str) -> dict[str, Any]:
    job = kubectl_json("get", "job", name, "-n", namespace)
    pods = [p for p in pods_of(namespace, name) if not p["metadata"].get("deletionTimestamp")]
    claim = kubectl_json("get", "pvc", f"{name}-data", "-n", namespace)
    return {
        "job": job["metadata"]["uid"],
        "pods": sorted(p["metadata"]["uid"] for p in pods),
        "claim": claim["metadata"]["uid"],
    }


def test_an_upgrade_keeps_running_jobs_and_the_new_operator_takes_them_over(
    previous: Path, namespace: str, helm: Path, tmp_path: Path
) -> None:
    release, system = "axolotl", f"axolotl-system-{uuid.uuid4().hex[:6]}"
    old = OperatorProcess(
        tmp_path / "previous-operator.log",
        command=(sys.executable, "-m", "axolotl_operator.cli"),
        env={"PYTHONPATH": str(previous / "operator")},
    )
    new = OperatorProcess(tmp_path / "operator.log")
    try:
        apply_crd(previous / CRD)
        helm_release(helm, "install", previous / CHART, release, system)
        old.start()
        where = subprocess.run(
            [*old.command[:1], "-c", "import axolotl_operator; print(axolotl_operator.__file__)"],
            capture_output=True, text=True, check=True, env={**os.environ, **old.env},
        ).stdout
        assert where.startswith(str(previous)), where  # the previous version's code, not this one
        for name in ("long", "short"):
            apply_yaml(make_axj(name, annotations=HOLD), namespace)
        for name in ("long", "short"):
            wait_phase(namespace, name, "Running", timeout=120)
            one_pod = lambda n=name: len(snapshot(namespace, n)["pods"]) == 1  # noqa: E731
            wait_for(one_pod, timeout=60, what=f"the pod of {name}")
        before = {name: snapshot(namespace, name) for name in ("long", "short")}

        # The documented upgrade: the new CRD first (Helm never upgrades crds/), then the chart.
        assert old.stop() == 0
        apply_crd(ROOT / CRD)
        helm_release(helm, "upgrade", ROOT / CHART, release, system)
        new.start()

        # The new operator takes both over without restarting anything, and records what happens next
        # (only it runs now: the Succeeded below is its write).
        (pod,) = [p for p in pods_of(namespace, "short") if not p["metadata"].get("deletionTimestamp")]
        kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, RELEASE)
        wait_phase(namespace, "short", "Succeeded", timeout=120)
        assert get_axj(namespace, "long")["status"]["phase"] == "Running"
        after = {name: snapshot(namespace, name) for name in ("long", "short")}
        assert after == before
        assert "reconciled" in new.log()
    finally:
        for process in (old, new):
            if process.running():
                process.stop()
        subprocess.run(
            [str(helm), "uninstall", release, "-n", system], capture_output=True, timeout=300, check=False
        )
        kubectl("delete", "namespace", system, "--ignore-not-found", "--wait=false", check=False)
