"""The GitHub workflows pass actionlint (github.com/rhysd/actionlint, the version hack/actionlint/build pins):
expressions, contexts, `needs` outputs, permissions, matrix values and runner labels, and, where shellcheck
is on PATH (GitHub's runners have it), every `run:` script. Any finding fails. No cluster is needed; this
runs in the integration tier because that tier has Go (`make integration` builds actionlint first).
Pinning and permissions are checked in tests/unit/test_workflows.py."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / ".github" / "workflows"


@pytest.fixture(scope="module")
def actionlint() -> str:
    built = subprocess.run(
        [str(ROOT / "hack" / "actionlint" / "build")],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert built.returncode == 0, (
        "hack/actionlint/build failed (it needs Go: `hack/kubeenv build` installs it; `make integration` "
        f"runs both first):\n{built.stderr[-4000:]}"
    )
    return built.stdout.strip().splitlines()[-1]


def test_actionlint_finds_nothing_in_the_workflows(actionlint):
    files = sorted(str(p) for p in WORKFLOWS.glob("*.y*ml"))
    assert len(files) >= 2
    result = subprocess.run(
        [actionlint, "-no-color", "-oneline", *files],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_actionlint_reports_a_broken_workflow(actionlint, tmp_path):
    """The linter really runs: a job output of a job that does not exist is a finding."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\n"
        "jobs:\n"
        "  a:\n"
        "    runs-on: ubuntu-24.04\n"
        "    steps:\n"
        "      - run: echo '${{ needs.nothing.outputs.version }}'\n"
    )
    result = subprocess.run(
        [actionlint, "-no-color", "-oneline", "-shellcheck=", str(broken)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'property "nothing" is not defined' in result.stdout, result.stdout
