"""The Helm chart lints, renders, and grants the operator exactly what it uses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, manifest

CHART = REPO / "charts" / "axolotl-operator"
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"


@pytest.fixture(scope="module")
def helm() -> str:
    return subprocess.run(
        [str(REPO / "hack" / "helm"), "--path"], capture_output=True, text=True, check=True
    ).stdout.strip()


def template(helm: str, *values: str, values_file: Path | None = None) -> list[dict]:
    args = [helm, "template", "ops", str(CHART), "-n", "axolotl-system"]
    if values_file is not None:
        args += ["-f", str(values_file)]
    for value in values:
        args += ["--set", value]
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_chart_lints_strictly(helm):
    result = subprocess.run([helm, "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    everything = ",".join(
        f"monitoring.{value}.enabled=true"
        for value in ("serviceMonitor", "podMonitor", "prometheusRule", "grafanaDashboard")
    )
    result = subprocess.run(
        [helm, "lint", "--strict", str(CHART), "--set", everything], capture_output=True, text=True
    )
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


def is_webhook(doc: dict) -> bool:
    """The webhook's or the progress endpoint's own Role (each for its certificate's Secret)."""
    return doc["metadata"]["name"].endswith(("-webhook", "-progress"))


def test_role_reads_no_secret_but_the_webhooks_and_the_progress_endpoints_own(helm):
    docs = template(helm)
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "secrets" not in rule["resources"]
    secret_rules = [
        (d["metadata"]["namespace"], rule)
        for d in docs
        if d["kind"] == "Role"
        for rule in d["rules"]
        if "secrets" in rule["resources"]
    ]
    assert secret_rules == [
        (
            "axolotl-system",
            {
                "apiGroups": [""],
                "resources": ["secrets"],
                "resourceNames": [f"ops-axolotl-operator-{which}-tls"],
                "verbs": ["get", "update"],
            },
        )
        for which in ("webhook", "progress")
    ]
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
    assert env["AXOLOTL_OPERATOR_PROGRESS_URL"] == f"https://{name}.axolotl-system.svc:8081/progress"
    assert env["AXOLOTL_OPERATOR_PROGRESS_AUDIENCE"] == "axolotl-operator"
    # HTTPS: the operator keeps its CA and certificate in the chart's (empty) Secret
    assert "--progress-cert-secret=axolotl-system/ops-axolotl-operator-progress-tls" in container["args"]
    secrets = [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"].endswith("-progress-tls")]
    assert len(secrets) == 1 and "data" not in secrets[0]
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    assert any("tokenreviews" in rule["resources"] and rule["verbs"] == ["create"] for rule in role["rules"])


def test_progress_port_and_url_are_settable_and_zero_turns_it_off(helm):
    container = _container(
        template(helm, "progress.port=9000", "progress.url=http://op.example:9000/progress")
    )
    assert "--progress-port=9000" in container["args"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["AXOLOTL_OPERATOR_PROGRESS_URL"] == "http://op.example:9000/progress"
    assert not any(a.startswith("--progress-cert-secret") for a in container["args"])  # http: no TLS
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
        ("tokenreviews", "create"),
        ("validatingwebhookconfigurations", "patch"),  # its own, by name (test_the_webhook_...)
    }
    roles = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "Role" and not is_webhook(d)}
    assert set(roles) == {"ml", "research"}
    for role in roles.values():
        granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
        assert {("jobs", "create"), ("configmaps", "create"), ("axolotljobs/status", "patch")} <= granted
        assert not any("secrets" in rule["resources"] for rule in role["rules"])
    bindings = {
        d["metadata"]["namespace"]: d for d in docs if d["kind"] == "RoleBinding" and not is_webhook(d)
    }
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


# ---------------------------------------------------------------- the admission webhook


def webhook_docs(helm, *values) -> tuple[dict[str, dict], list[dict]]:
    """The webhook's objects by kind (and all documents)."""
    docs = template(helm, *values)
    kinds = {"Secret", "Service", "Certificate", "Issuer"}
    ours = [
        d
        for d in docs
        if d["kind"] == "ValidatingWebhookConfiguration"
        or (d["kind"] in kinds and "-webhook" in d["metadata"]["name"])
    ]
    return {d["kind"]: d for d in ours}, docs


def operator_container(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][0]


def test_the_chart_webhook_entry_is_the_operators_own_rendering(helm):
    from axolotl_operator.admission import webhook_configuration

    scoped = ("watchNamespaces={b,a}", "webhook.failurePolicy=Ignore")
    for values, namespaces, policy in (((), (), "Fail"), (scoped, ("a", "b"), "Ignore")):
        docs, _ = webhook_docs(helm, *values)
        (charted,) = docs["ValidatingWebhookConfiguration"]["webhooks"]
        client = charted["clientConfig"]
        assert client == {
            "service": {
                "namespace": "axolotl-system",
                "name": "ops-axolotl-operator-webhook",
                "path": "/validate-axolotljob",
                "port": 443,
            }
        }
        (rendered,) = webhook_configuration("ops-axolotl-operator", client, policy, namespaces)["webhooks"]
        assert charted == rendered


def test_the_webhook_glob_namespaces_get_no_selector(helm):
    docs, _ = webhook_docs(helm, "watchNamespaces={team-*}")
    assert "namespaceSelector" not in docs["ValidatingWebhookConfiguration"]["webhooks"][0]


def test_the_webhook_service_secret_and_operator_flags_fit_together(helm):
    docs, all_docs = webhook_docs(helm)
    assert docs["Service"]["spec"]["ports"] == [{"name": "webhook", "port": 443, "targetPort": "webhook"}]
    assert "data" not in docs["Secret"] and "stringData" not in docs["Secret"]  # the operator fills it
    container = operator_container(all_docs)
    assert {
        "--webhook-port=9443",
        "--webhook-address=0.0.0.0",
        "--webhook-configuration=ops-axolotl-operator",
        "--webhook-service=axolotl-system/ops-axolotl-operator-webhook",
        "--webhook-cert-secret=ops-axolotl-operator-webhook-tls",
    } <= set(container["args"])
    assert container["readinessProbe"]["tcpSocket"] == {"port": "webhook"}
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]  # read-only root: certs go here
    cluster_role = next(d for d in all_docs if d["kind"] == "ClusterRole")
    (hook_rule,) = [r for r in cluster_role["rules"] if "validatingwebhookconfigurations" in r["resources"]]
    assert hook_rule["resourceNames"] == ["ops-axolotl-operator"] and hook_rule["verbs"] == ["get", "patch"]


def test_cert_manager_issues_the_certificate_and_the_operator_manages_nothing(helm):
    docs, all_docs = webhook_docs(helm, "webhook.certManager.enabled=true")
    annotations = docs["ValidatingWebhookConfiguration"]["metadata"]["annotations"]
    assert annotations == {"cert-manager.io/inject-ca-from": "axolotl-system/ops-axolotl-operator-webhook"}
    assert docs["Certificate"]["spec"]["secretName"] == "ops-axolotl-operator-webhook-tls"
    assert docs["Certificate"]["spec"]["dnsNames"][0] == "ops-axolotl-operator-webhook.axolotl-system.svc"
    assert docs["Issuer"]["spec"] == {"selfSigned": {}}
    assert "Secret" not in docs
    container = operator_container(all_docs)
    assert "--webhook-cert-dir=/etc/axolotl-operator/webhook-certs" in container["args"]
    assert not any(a.startswith("--webhook-cert-secret") for a in container["args"])
    rules = [
        r
        for d in all_docs
        if d["kind"] in {"Role", "ClusterRole"} and not d["metadata"]["name"].endswith("-progress")
        for r in d["rules"]
    ]
    assert not any({"secrets", "validatingwebhookconfigurations"} & set(r["resources"]) for r in rules)


def test_the_webhook_can_be_turned_off_and_refuses_an_unknown_policy(helm):
    docs = template(helm, "webhook.enabled=false")
    assert not any(d["kind"] == "ValidatingWebhookConfiguration" for d in docs)
    container = operator_container(docs)
    assert not any(a.startswith("--webhook") for a in container["args"])
    with pytest.raises(subprocess.CalledProcessError) as caught:
        template(helm, "webhook.failurePolicy=Sometimes")
    assert "/webhook/failurePolicy" in caught.value.stderr and "'Fail', 'Ignore'" in caught.value.stderr


# ---------------------------------------------------------------- values, notes, helm test, versions


@pytest.mark.parametrize(
    "value, where",
    [
        ("replicas=2", "additional properties 'replicas' not allowed"),
        ("webhook.timeoutSeconds=60", "/webhook/timeoutSeconds"),
        ("metrics.port=0", "/metrics/port"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("storage.defaultSize=lots", "/storage/defaultSize"),
        ("watchNamespaces={ML}", "/watchNamespaces/0"),
        ("webhook.certManager.issuerRef.nam=x", "/webhook/certManager/issuerRef"),
        ("monitoring.prometheusRule.stalledMinutes=0", "/monitoring/prometheusRule/stalledMinutes"),
        ("monitoring.prometheusRule.operatorSelector=up", "/monitoring/prometheusRule/operatorSelector"),
        ("monitoring.serviceMonitor.interval=often", "/monitoring/serviceMonitor/interval"),
        ("monitoring.podMonitor.enable=true", "/monitoring/podMonitor"),
        ("monitoring.grafanaDashboard.label=a b", "/monitoring/grafanaDashboard/label"),
    ],
)
def test_a_wrong_value_is_refused_by_the_schema_naming_it(helm, value, where):
    with pytest.raises(subprocess.CalledProcessError) as caught:
        template(helm, value)
    assert "don't meet the specifications of the schema" in caught.value.stderr
    assert where in caught.value.stderr, caught.value.stderr


def test_every_documented_value_renders(helm):
    values = [
        "image.tag=1.2.3",
        "imagePullSecrets[0].name=regcred",
        "watchNamespaces={ml,team-*}",
        "rbac.aggregateToDefaultRoles=false",
        "trainer.image=registry.local/trainer:1",
        "trainer.imagePullPolicy=Always",
        "gpuResourceName=amd.com/gpu",
        "storage.defaultSize=10Gi",
        "storage.defaultStorageClass=fast",
        "serviceAccount.create=false",
        "serviceAccount.name=existing",
        "metrics.port=9500",
        "progress.port=0",
        "webhook.port=8443",
        "webhook.failurePolicy=Ignore",
        "webhook.timeoutSeconds=5",
        "webhook.certManager.enabled=true",
        "webhook.certManager.issuerRef.name=ca",
        "webhook.certManager.issuerRef.kind=ClusterIssuer",
        "nodeSelector.pool=cpu",
        "podAnnotations.team=ml",
        "priorityClassName=system-cluster-critical",
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.serviceMonitor.labels.release=kps",
        "monitoring.serviceMonitor.interval=15s",
        "monitoring.podMonitor.enabled=true",
        "monitoring.podMonitor.labels.release=kps",
        "monitoring.podMonitor.interval=15s",
        "monitoring.podMonitor.namespaceSelector.matchNames={ml}",
        "monitoring.prometheusRule.enabled=true",
        "monitoring.prometheusRule.labels.release=kps",
        "monitoring.prometheusRule.stalledMinutes=45",
        'monitoring.prometheusRule.operatorSelector=job="ops"',
        "monitoring.grafanaDashboard.enabled=true",
        "monitoring.grafanaDashboard.label=grafana_dashboard",
        "monitoring.grafanaDashboard.labelValue=ml",
        "monitoring.grafanaDashboard.namespace=grafana",
        "monitoring.grafanaDashboard.annotations.grafana_folder=ML",
    ]
    docs = template(helm, *values)
    container = operator_container(docs)
    assert container["image"] == "ghcr.io/axolotl-operator/axolotl-operator:1.2.3"
    assert "--webhook-port=8443" in container["args"]
    certificate = next(d for d in docs if d["kind"] == "Certificate")
    assert certificate["spec"]["issuerRef"] == {"name": "ca", "kind": "ClusterIssuer"}
    assert not any(d["kind"] == "ServiceAccount" for d in docs)
    assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= {d["kind"] for d in docs}


def test_notes_say_what_to_do_next(helm):
    result = subprocess.run(
        [helm, "install", "--dry-run=client", "ops", str(CHART), "-n", "axolotl-system"],
        capture_output=True,
        text=True,
        check=True,
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "helm test ops -n axolotl-system" in notes
    assert "kubectl get axolotljobs -w" in notes and "admission webhook" in notes


def test_helm_test_pod_uses_the_operators_image_and_account(helm):
    docs = template(helm)
    (pod,) = [d for d in docs if d["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["serviceAccountName"] == "ops-axolotl-operator"
    assert pod["spec"]["containers"][0]["image"] == operator_container(docs)["image"]
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_versions_come_from_one_source():
    """The Python package's version is the source; the chart, its appVersion, the trainer package and
    the default trainer image tag follow it."""
    import tomllib

    from axolotl_operator import __version__
    from axolotl_operator.settings import DEFAULT_TRAINER_IMAGE

    package = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    trainer = tomllib.loads((REPO / "trainer-image" / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert __version__ == package == trainer == chart["version"] == chart["appVersion"]
    assert values["trainer"]["image"] == DEFAULT_TRAINER_IMAGE
    assert DEFAULT_TRAINER_IMAGE.rsplit(":", 1)[1].startswith(f"{package}-axolotl")


# ---------------------------------------------------------------- monitoring (docs/monitoring.md)

MONITORING = {
    "serviceMonitor": "ServiceMonitor",
    "podMonitor": "PodMonitor",
    "prometheusRule": "PrometheusRule",
    "grafanaDashboard": "ConfigMap",
}


def monitoring_objects(docs: list[dict]) -> list[dict]:
    return [d for d in docs if d["kind"] in MONITORING.values()]


def one(docs: list[dict], kind: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def shipped_groups() -> list[dict]:
    return yaml.safe_load(RULES.read_text())["groups"]


def test_each_monitoring_object_renders_only_when_its_value_is_on(helm):
    assert monitoring_objects(template(helm)) == []
    for value, kind in MONITORING.items():
        rendered = monitoring_objects(template(helm, f"monitoring.{value}.enabled=true"))
        assert [d["kind"] for d in rendered] == [kind]


def test_the_service_monitor_scrapes_the_metrics_service_and_only_it(helm):
    docs = template(
        helm, "monitoring.serviceMonitor.enabled=true", "monitoring.serviceMonitor.labels.release=kps"
    )
    monitor = one(docs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    selected = [n for n, s in services.items() if selector.items() <= s["metadata"]["labels"].items()]
    assert selected == ["ops-axolotl-operator-metrics"]
    (endpoint,) = monitor["spec"]["endpoints"]
    service = services[selected[0]]
    assert {"name": "metrics", "port": 9400, "targetPort": "metrics"} in service["spec"]["ports"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
    assert endpoint["honorLabels"] is True  # the per-job series keep their job's `namespace`
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["axolotl-system"]}
    # job="axolotl-operator": what the AxolotlOperatorDown alert selects by default
    job = service["metadata"]["labels"][monitor["spec"]["jobLabel"]]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["monitoring"]["prometheusRule"]["operatorSelector"] == f'job="{job}"'
    assert f'up{{job="{job}"}}' in RULES.read_text()


def test_the_pod_monitor_selects_the_trainer_pods_metrics_port(helm):
    from axolotl_operator.api import parse_job
    from axolotl_operator.render import render
    from axolotl_operator.settings import OperatorSettings
    from axolotl_operator.trainer_contract import METRICS_PORT

    docs = template(helm, "monitoring.podMonitor.enabled=true")
    monitor = one(docs, "PodMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    pod = render(parse_job(manifest()), OperatorSettings(), "ml", None).job["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    operator_pod = one(docs, "Deployment")["spec"]["template"]
    assert not selector.items() <= operator_pod["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (container,) = pod["spec"]["containers"]
    assert {"name": endpoint["port"], "containerPort": METRICS_PORT} in container["ports"]
    assert METRICS_PORT == 9402
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    only_ml = "monitoring.podMonitor.namespaceSelector.matchNames={ml}"
    scoped = one(template(helm, "monitoring.podMonitor.enabled=true", only_ml), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}


def test_the_prometheus_rule_is_the_shipped_rules_file(helm):
    docs = template(
        helm, "monitoring.prometheusRule.enabled=true", "monitoring.prometheusRule.labels.role=alert-rules"
    )
    rule = one(docs, "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["labels"]["role"] == "alert-rules"
    assert rule["spec"]["groups"] == shipped_groups()


def test_the_rule_values_change_only_the_stalled_window_and_the_operator_selector(helm, tmp_path):
    values = tmp_path / "values.yaml"
    selector = 'job="kubernetes-service-endpoints",service="ops-axolotl-operator-metrics"'
    rule_values = {"enabled": True, "stalledMinutes": 45, "operatorSelector": selector}
    values.write_text(yaml.safe_dump({"monitoring": {"prometheusRule": rule_values}}))
    rendered = one(template(helm, values_file=values), "PrometheusRule")["spec"]["groups"]
    expected = shipped_groups()
    changed = set()
    for rule in expected[0]["rules"]:
        expr = (
            rule["expr"]
            .replace("[30m]", "[45m]")
            .replace("offset 30m", "offset 45m")
            .replace('job="axolotl-operator"', selector)
        )
        if expr != rule["expr"]:
            changed.add(rule["alert"])
        rule["expr"] = expr
    assert rendered == expected
    assert changed == {"AxolotlJobStalled", "AxolotlOperatorDown"}
    by_name = {r["alert"]: r["expr"] for r in rendered[0]["rules"]}
    assert "[45m]" in by_name["AxolotlJobStalled"] and "offset 45m" in by_name["AxolotlJobStalled"]
    assert "30m" not in by_name["AxolotlJobStalled"]
    assert f"absent(up{{{selector}}})" in by_name["AxolotlOperatorDown"]


def test_the_dashboard_config_map_carries_the_shipped_json_for_grafanas_sidecar(helm, tmp_path):
    config_map = one(template(helm, "monitoring.grafanaDashboard.enabled=true"), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "axolotl-system"
    assert json.loads(config_map["data"]["axolotl-operator.json"]) == json.loads(DASHBOARD.read_text())
    values = tmp_path / "values.yaml"
    dashboard_values = {
        "enabled": True,
        "label": "grafana.com/dashboard",
        "labelValue": "true",
        "namespace": "grafana",
        "annotations": {"grafana_folder": "ML"},
    }
    values.write_text(yaml.safe_dump({"monitoring": {"grafanaDashboard": dashboard_values}}))
    config_map = one(template(helm, values_file=values), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana.com/dashboard"] == "true"
    assert config_map["metadata"]["namespace"] == "grafana"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "ML"}


def test_the_shared_cache_claim_reaches_the_operator_and_is_created_only_when_asked(helm):
    env = {e["name"]: e.get("value") for e in _container(template(helm, "cache.claimName=team-cache"))["env"]}
    assert env["AXOLOTL_OPERATOR_CACHE_CLAIM"] == "team-cache"
    assert not [
        d for d in template(helm, "cache.claimName=team-cache") if d["kind"] == "PersistentVolumeClaim"
    ]

    docs = template(helm, "cache.claimName=team-cache", "cache.create=true", "watchNamespaces={ml,research}")
    claims = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert sorted(c["metadata"]["namespace"] for c in claims) == ["ml", "research"]
    for claim in claims:
        assert claim["metadata"]["name"] == "team-cache"
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # outlives uninstall
        assert "ownerReferences" not in claim["metadata"]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"


def test_creating_a_cache_without_a_name_is_refused(helm):
    result = subprocess.run(
        [helm, "template", "ops", str(CHART), "--set", "cache.create=true"], capture_output=True, text=True
    )
    assert result.returncode != 0 and "cache.create needs cache.claimName" in result.stderr
