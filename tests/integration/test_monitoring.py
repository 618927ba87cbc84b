"""The chart's alerts and dashboard, checked by Prometheus' own promtool (built by hack/promtool/build from
github.com/prometheus/prometheus, the version pinned there): the shipped rules file is valid, each alert
fires and stays quiet on the series of tests/monitoring/rules_test.yaml, the rules the chart renders with
other values are valid too, and every dashboard query parses. No cluster is needed; these run in the
integration tier because that tier has Go (`make integration` builds promtool before pytest starts).
That the names they use are metrics the code exports is checked in tests/unit/test_monitoring.py."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "axolotl-operator"
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
RULES_TEST = ROOT / "tests" / "monitoring" / "rules_test.yaml"
# Grafana replaces these before a query reaches Prometheus; any duration stands in for them here.
GRAFANA_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


@pytest.fixture(scope="module")
def promtool() -> str:
    built = subprocess.run(
        [str(ROOT / "hack" / "promtool" / "build")], capture_output=True, text=True, timeout=1800, check=False
    )
    assert built.returncode == 0, (
        "hack/promtool/build failed (it needs Go: `hack/kubeenv build` installs it; `make integration` "
        f"runs both first):\n{built.stderr[-4000:]}"
    )
    return built.stdout.strip().splitlines()[-1]


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=300, check=False)


def alerts(groups: list[dict]) -> list[str]:
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_shipped_rules_file(promtool):
    result = promtool_run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    count = len(alerts(yaml.safe_load(RULES.read_text())["groups"]))
    assert f"SUCCESS: {count} rules found" in result.stdout, result.stdout


def test_each_alert_fires_and_stays_quiet_in_promtools_rule_tests(promtool):
    suite = yaml.safe_load(RULES_TEST.read_text())
    assert [(RULES_TEST.parent / f).resolve() for f in suite["rule_files"]] == [RULES.resolve()]
    fires, quiet = set(), set()
    for case in suite["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    shipped = set(alerts(yaml.safe_load(RULES.read_text())["groups"]))
    assert fires == shipped, f"alerts never tested firing: {sorted(shipped - fires)}"
    assert quiet == shipped, f"alerts never tested staying quiet: {sorted(shipped - quiet)}"
    result = promtool_run(promtool, "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_the_chart_renders_with_other_values_pass_promtool_check(promtool, helm, tmp_path):
    values = tmp_path / "values.yaml"
    selector = 'job="kubernetes-service-endpoints",service="ops-axolotl-operator-metrics"'
    rule_values = {"enabled": True, "stalledMinutes": 90, "operatorSelector": selector}
    values.write_text(yaml.safe_dump({"monitoring": {"prometheusRule": rule_values}}))
    rendered = subprocess.run(
        [str(helm), "template", "ops", str(CHART), "-n", "axolotl-system", "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    (rule,) = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "PrometheusRule"]
    rules_file = tmp_path / "rendered-rules.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    assert "[90m]" in rules_file.read_text() and selector in rules_file.read_text()
    result = promtool_run(promtool, "check", "rules", "--lint=all", "--lint-fatal", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def dashboard_queries() -> dict[str, str]:
    """Each query of the dashboard by where it is: panel targets and query variables' series selectors."""
    board = json.loads(DASHBOARD.read_text())
    queries = {
        f"panel {panel['id']} ({panel['title']}) {target['refId']}": target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
    }
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"])
            assert selector, f"variable {variable['name']}: not label_values(<selector>, <label>)"
            queries[f"variable {variable['name']}"] = selector.group(1)
    return queries


def test_every_dashboard_query_parses_as_promql(promtool, tmp_path):
    """promtool has no bare `parse` command, so each query becomes a recording rule, which `check rules`
    parses with Prometheus' own PromQL parser."""
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = []
    for index, expr in enumerate(queries.values()):
        for variable in GRAFANA_INTERVALS:
            expr = expr.replace(variable, "5m")
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    rules_file = tmp_path / "dashboard-queries.yaml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = promtool_run(promtool, "check", "rules", str(rules_file))
    names = {f"dashboard:query_{i}": where for i, where in enumerate(queries)}
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\nqueries: {json.dumps(names, indent=1)}"
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
