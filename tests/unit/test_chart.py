"""The Helm chart lints, renders, and grants the operator exactly what it uses."""

from __future__ import annotations

import subprocess

import pytest
import yaml
from conftest import REPO

CHART = REPO / "charts" / "axolotl-operator"


@pytest.fixture(scope="module")
def helm() -> str:
    return subprocess.run(
        [str(REPO / "hack" / "helm"), "--path"], capture_output=True, text=True, check=True
    ).stdout.strip()


def template(helm: str, *values: str) -> list[dict]:
    args = [helm, "template", "ops", str(CHART), "-n", "axolotl-system"]
    for value in values:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_chart_lints(helm):
    result = subprocess.run([helm, "lint", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_deployment_runs_one_standalone_operator(helm):
    deployment = next(d for d in template(helm) if d["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["run", "--all-namespaces"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_watch_namespaces_and_settings_reach_the_operator(helm):
    docs = template(helm, "watchNamespaces={ml,research}", "gpuResourceName=amd.com/gpu")
    container = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][
        0
    ]
    assert "--namespace=ml" in container["args"] and "--namespace=research" in container["args"]
    assert "--all-namespaces" not in container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AXOLOTL_OPERATOR_GPU_RESOURCE_NAME"] == "amd.com/gpu"


def test_role_never_reads_secrets(helm):
    role = next(d for d in template(helm) if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "secrets" not in rule["resources"]
    granted = {(g, r) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert {("axolotl.ai", "axolotljobs/status"), ("batch", "jobs"), ("", "pods")} <= granted


def test_chart_ships_the_generated_crd():
    assert (CHART / "crds" / "axolotl.ai_axolotljobs.yaml").read_text() == (
        REPO / "crds" / "axolotl.ai_axolotljobs.yaml"
    ).read_text()


def _container(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_trainer_pods_get_the_progress_endpoints_url(helm):
    docs = template(helm)
    container = _container(docs)
    assert "--progress-port=8081" in container["args"]
    assert {"name": "progress", "containerPort": 8081} in container["ports"]
    service = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-progress"))
    assert service["spec"]["ports"] == [{"name": "progress", "port": 8081, "targetPort": "progress"}]
    assert (
        service["spec"]["selector"]
        == next(d for d in docs if d["kind"] == "Deployment")["spec"]["selector"]["matchLabels"]
    )
    env = {e["name"]: e["value"] for e in container["env"]}
    name = service["metadata"]["name"]
    assert env["AXOLOTL_OPERATOR_PROGRESS_URL"] == f"http://{name}.axolotl-system.svc:8081/progress"
    assert env["AXOLOTL_OPERATOR_PROGRESS_AUDIENCE"] == "axolotl-operator"
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert any("tokenreviews" in rule["resources"] and rule["verbs"] == ["create"] for rule in role["rules"])


def test_progress_port_and_url_are_settable_and_zero_turns_it_off(helm):
    container = _container(
        template(helm, "progress.port=9000", "progress.url=http://op.example:9000/progress")
    )
    assert "--progress-port=9000" in container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AXOLOTL_OPERATOR_PROGRESS_URL"] == "http://op.example:9000/progress"
    docs = template(helm, "progress.port=0")
    container = _container(docs)
    assert not any(arg.startswith("--progress-port") for arg in container["args"])
    assert "AXOLOTL_OPERATOR_PROGRESS_URL" not in {e["name"] for e in container["env"]}
    assert not any(d["kind"] == "Service" and d["metadata"]["name"].endswith("-progress") for d in docs)


def test_watched_namespaces_get_roles_and_no_create_rights_elsewhere(helm):
    docs = template(helm, "watchNamespaces={ml,research}")
    cluster_role = next(
        d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "ops-axolotl-operator"
    )
    cluster_verbs = {
        (r, v) for rule in cluster_role["rules"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert {(r, v) for r, v in cluster_verbs if v in {"create", "patch", "update"}} == {
        ("tokenreviews", "create")
    }
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role"}
    assert set(roles) == {"ml", "research"}
    for role in roles.values():
        granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
        assert {("jobs", "create"), ("configmaps", "create"), ("axolotljobs/status", "patch")} <= granted
        assert not any("secrets" in rule["resources"] for rule in role["rules"])
    bindings = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding"}
    assert set(bindings) == {"ml", "research"}
    assert all(b["subjects"][0]["namespace"] == "axolotl-system" for b in bindings.values())


def test_the_default_roles_can_manage_and_read_axolotljobs(helm):
    roles = {d["metadata"]["name"]: d for d in template(helm) if d["kind"] == "ClusterRole"}
    edit, view = roles["ops-axolotl-operator-axolotljob-edit"], roles["ops-axolotl-operator-axolotljob-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "create" in edit["rules"][0]["verbs"] and "delete" in edit["rules"][0]["verbs"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert set(view["rules"][0]["verbs"]) == {"get", "list", "watch"}
    off = template(helm, "rbac.aggregateToDefaultRoles=false")
    assert [d["metadata"]["name"] for d in off if d["kind"] == "ClusterRole"] == ["ops-axolotl-operator"]
