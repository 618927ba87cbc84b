"""The GitHub workflows parse, pin every action, ask for no more permissions than they use, and the release
publishes only the version the repository declares (hack/release-version). actionlint lints them in
tests/integration/test_workflows.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from axolotl_operator import __version__
from conftest import REPO

WORKFLOWS = REPO / ".github" / "workflows"
RELEASE_VERSION = REPO / "hack" / "release-version"
# A full commit SHA with the version it is in a trailing comment, or an exact release tag.
PINNED = re.compile(r"^[\w.-]+/[\w.-]+(/[\w./-]+)?@(?:[0-9a-f]{40}(?= # v\d+\.\d+\.\d+$)|v\d+\.\d+\.\d+$)")


def workflows() -> dict[str, dict]:
    found = {}
    for path in sorted(WORKFLOWS.glob("*.y*ml")):
        loaded = yaml.safe_load(path.read_text())
        loaded["on"] = loaded.pop(True, loaded.get("on"))  # YAML 1.1 reads the key `on` as true
        found[path.name] = loaded
    return found


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def test_the_workflows_parse_and_are_the_expected_ones():
    found = workflows()
    assert set(found) == {"ci.yml", "release.yml"}
    for name, workflow in found.items():
        assert workflow["on"] and workflow["jobs"], name


def test_every_action_is_pinned_to_a_commit_or_an_exact_version():
    for path in sorted(WORKFLOWS.glob("*.y*ml")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            match = re.match(r"^\s*(?:- )?uses:\s*(.+?)\s*$", line)
            if match and not match.group(1).startswith("./"):
                assert PINNED.match(match.group(1)), f"{path.name}:{number}: not pinned: {match.group(1)}"
    uses = [step["uses"] for w in workflows().values() for step in steps(w) if "uses" in step]
    assert len(uses) >= 10  # the line scan above saw them all


def test_ci_runs_make_test_with_python_3_11_and_go():
    ci = workflows()["ci.yml"]
    assert set(ci["on"]) >= {"push", "pull_request"}
    assert ci["permissions"] == {"contents": "read"}
    (job,) = ci["jobs"].values()
    actions = {step["uses"].split("@")[0]: step for step in job["steps"] if "uses" in step}
    assert "3.11" in actions["actions/setup-python"]["with"]["python-version"].split()
    assert "actions/setup-go" in actions
    assert any(re.search(r"\bmake test\b", step.get("run", "")) for step in job["steps"])


def test_release_jobs_get_only_the_permissions_they_use():
    release = workflows()["release.yml"]
    assert release["on"] == {"push": {"tags": ["v*"]}}
    assert release["permissions"] == {}
    granted = {name: job["permissions"] for name, job in release["jobs"].items()}
    assert granted == {
        "version": {"contents": "read"},
        "images": {"contents": "read", "packages": "write", "id-token": "write"},
        "chart": {"contents": "read", "packages": "write", "id-token": "write"},
        "github-release": {"contents": "write"},
    }
    for job in release["jobs"].values():
        for step in job["steps"]:
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step["with"]["persist-credentials"] is False


def test_the_release_checks_the_tag_against_the_one_version_before_anything_else():
    release = workflows()["release.yml"]
    jobs = release["jobs"]
    (check,) = [s for s in jobs["version"]["steps"] if "hack/release-version" in s.get("run", "")]
    assert check["env"] == {"TAG": "${{ github.ref_name }}"} and '"$TAG"' in check["run"]
    assert "$GITHUB_OUTPUT" in check["run"]
    for name, job in jobs.items():
        if name != "version":
            assert "version" in ([job["needs"]] if isinstance(job["needs"], str) else job["needs"]), name
    text = (WORKFLOWS / "release.yml").read_text()
    # every published name and version comes from the version job, none is written here
    assert "0.1.0" not in text and "ghcr.io/axolotl-operator" not in text


def test_release_builds_both_images_multi_arch_with_attestations_and_signs_them():
    images = workflows()["release.yml"]["jobs"]["images"]
    built = {entry["name"]: entry for entry in images["strategy"]["matrix"]["include"]}
    assert built["operator"]["file"] == "operator/Dockerfile" and built["operator"]["context"] == "."
    assert built["trainer"]["file"] == "trainer-image/Dockerfile"
    assert built["operator"]["tag"] == "${{ needs.version.outputs.version }}"
    assert built["trainer"]["tag"] == "${{ needs.version.outputs.trainer_tag }}"
    (build,) = [s for s in images["steps"] if s.get("uses", "").startswith("docker/build-push-action@")]
    assert build["with"]["platforms"] == "linux/amd64,linux/arm64"
    assert build["with"]["push"] is True and build["with"]["sbom"] is True
    assert build["with"]["provenance"] == "mode=max"
    (sign,) = [s for s in images["steps"] if "cosign sign" in s.get("run", "")]
    assert sign["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}" and "--yes" in sign["run"]
    chart = workflows()["release.yml"]["jobs"]["chart"]
    (push,) = [s for s in chart["steps"] if "helm" in s.get("run", "")]
    assert '"oci://$REGISTRY"' in push["run"] and "cosign sign" in push["run"]
    (publish,) = workflows()["release.yml"]["jobs"]["github-release"]["steps"][1:]
    assert "crd=crds/axolotl.ai_axolotljobs.yaml" in publish["run"] and "--verify-tag" in publish["run"]


def release_version(tag: str, owner: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_REPOSITORY_OWNER"}
    if owner:
        env["GITHUB_REPOSITORY_OWNER"] = owner
    return subprocess.run(
        [sys.executable, str(RELEASE_VERSION), tag], capture_output=True, text=True, env=env, check=False
    )


def test_release_version_publishes_what_the_chart_pulls():
    from axolotl_operator.settings import DEFAULT_TRAINER_IMAGE

    result = release_version(f"v{__version__}", owner="Axolotl-Operator")
    assert result.returncode == 0, result.stderr
    published = dict(line.split("=", 1) for line in result.stdout.splitlines())
    values = yaml.safe_load((REPO / "charts" / "axolotl-operator" / "values.yaml").read_text())
    trainer_image, trainer_tag = DEFAULT_TRAINER_IMAGE.rsplit(":", 1)
    assert published == {
        "version": __version__,
        "operator_image": values["image"]["repository"],
        "trainer_image": trainer_image,
        "trainer_tag": trainer_tag,
        "chart_registry": values["image"]["repository"].rsplit("/", 1)[0] + "/charts",
    }


@pytest.mark.parametrize(
    "tag, owner, says",
    [
        ("v9.9.9", None, "is not v"),
        (__version__, None, "is not v"),
        (f"v{__version__}-rc1", None, "is not v"),
        (f"v{__version__}", "someone-else", "ghcr.io/someone-else"),
    ],
)
def test_release_version_refuses_a_tag_or_owner_that_disagrees(tag, owner, says):
    result = release_version(tag, owner)
    assert result.returncode != 0 and says in result.stderr, result.stderr
