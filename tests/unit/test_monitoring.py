"""The chart's alerts and dashboard only name metrics and labels the code exports (so renaming one fails
here), and the operator keeps one phase series per job. promtool's own checks of the same files (PromQL
parses, each alert fires and stays quiet) are in tests/integration/test_monitoring.py."""

from __future__ import annotations

import importlib.util
import json
import re
from datetime import UTC, datetime

import pytest
import yaml
from conftest import REPO

CHART = REPO / "charts" / "axolotl-operator"
RULES = CHART / "files" / "prometheus-rules.yaml"
DASHBOARD = CHART / "files" / "grafana-dashboard.json"
TRAINER_METRICS = REPO / "trainer-image" / "src" / "axolotl_job_runner" / "metrics.py"

# Labels Prometheus itself puts on every scraped series (and `up`), not the exporters'.
TARGET_LABELS = {"job", "instance"}
SYNTHETIC = {"up"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or"}
_KEYWORDS |= {"unless", "atan2", "inf", "nan"}
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _strip(expr: str) -> str:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range and subquery windows
    return _CLAUSE.sub(" ", expr)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (identifiers that are not functions or keywords)."""
    found = re.findall(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)\b(?!\s*\()", _strip(expr))
    return {name for name in found if name.lower() not in _KEYWORDS}


def label_names(expr: str) -> set[str]:
    """The label names an expression matches on or groups by."""
    names = set()
    for matchers in re.findall(r"\{([^}]*)\}", re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)):
        names |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    for clause in _CLAUSE.findall(expr):
        names |= {n.strip() for n in clause.split(",") if n.strip()}
    return names


def rule_exprs() -> dict[str, str]:
    return {r["alert"]: r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_exprs() -> list[str]:
    """Every query of the dashboard: panel targets and the query variables' series selectors."""
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            exprs.append(re.fullmatch(r"label_values\((.*),\s*\w+\)", variable["query"]["query"]).group(1))
    return exprs


def _trainer_metrics_module():
    spec = importlib.util.spec_from_file_location("runner_metrics", TRAINER_METRICS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Metric name -> label names, as the operator's /metrics and a trainer pod's :9402/metrics expose them
    (counters with their _total suffix), read from the code: the operator's prometheus_client registry
    after one of each observation, and the runner's own renderer."""
    from axolotl_operator import metrics
    from prometheus_client import REGISTRY

    ns, name = "monitoring-test", "exported"
    progress = {"percent": 1, "step": 1, "totalSteps": 2, "loss": 1.0, "etaSeconds": 1}
    metrics.observe_job(ns, name, {"phase": "Running", "reason": "Running", "progress": progress})
    metrics.transition("Running", "monitoring-test")
    metrics.reconcile_error("monitoring-test")
    metrics.progress_report(599)
    try:
        found: dict[str, set[str]] = {}
        for family in REGISTRY.collect():
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                found.setdefault(sample.name, set()).update(sample.labels)
    finally:
        metrics.forget_job(ns, name)
        metrics.TRANSITIONS.remove("Running", "monitoring-test")
        metrics.RECONCILE_ERRORS.remove("monitoring-test")
        metrics.PROGRESS_REPORTS.remove("599")
    runner = _trainer_metrics_module()
    state = {field: 1.0 for field, _, _ in runner.GAUGES}
    text = runner.render_metrics(state, {"axolotljob": "x", "axolotljob_namespace": "ml"}, "training")
    for line in text.splitlines():
        if line and not line.startswith("#"):
            sample = re.match(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}", line)
            found.setdefault(sample.group(1), set()).update(re.findall(r"(\w+)=", sample.group(2)))
    return found


def test_the_rules_use_exactly_the_operators_metrics_they_are_written_for(exported):
    used = set().union(*map(metric_names, rule_exprs().values()))
    assert used == {
        "axolotl_operator_job_phase",
        "axolotl_operator_job_step",
        "axolotl_operator_job_loss",
        "axolotl_operator_reconcile_errors_total",
        "up",
    }
    assert used - SYNTHETIC <= set(exported), "a rule names a metric the operator does not export"


def test_every_metric_and_label_the_rules_and_dashboard_use_is_exported(exported):
    exprs = [*rule_exprs().values(), *dashboard_exprs()]
    used = set().union(*map(metric_names, exprs))
    missing = used - set(exported) - SYNTHETIC
    assert not missing, f"not exported by the operator or the trainer runner: {sorted(missing)}"
    labels = set().union(*map(label_names, exprs))
    known = set().union(*exported.values()) | TARGET_LABELS
    assert not labels - known, f"labels no metric has: {sorted(labels - known)}"


def test_the_dashboard_shows_jobs_progress_and_operator_health(exported):
    used = set().union(*map(metric_names, dashboard_exprs()))
    operator = {n for n in exported if n.startswith("axolotl_operator_")}
    assert operator <= used, f"operator metrics without a panel: {sorted(operator - used)}"
    assert {"axolotl_job_tokens_per_second", "axolotl_job_learning_rate", "up"} <= used
    board = dashboard()
    panels = [p for p in board["panels"] if p["type"] != "row"]
    titles = {p["title"] for p in panels}
    assert {"Jobs by phase", "Step", "Loss", "ETA", "Reconcile errors", "Progress reports by code"} <= titles
    assert any(t.startswith("Throughput") for t in titles)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert panel["targets"], panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    assert board["uid"] == "axolotl-operator"


def test_the_metric_name_reader_sees_through_promql():
    expr = (
        'sum by (phase) (rate(a_total{x="b{c}"}[5m])) / on (namespace) group_left (name) '
        'max(b offset 30m) unless absent(up{job=~"$job"}) or c != c and abs(d) == +Inf'
    )
    assert metric_names(expr) == {"a_total", "b", "up", "c", "d"}
    assert label_names(expr) == {"phase", "x", "namespace", "name", "job"}


def test_each_job_has_one_phase_series_that_follows_its_status():
    from axolotl_operator import metrics
    from prometheus_client import REGISTRY

    ns, name = "monitoring-test", "phase"

    def series() -> dict[tuple[str, str], float]:
        return {
            (s.labels["phase"], s.labels["reason"]): s.value
            for family in REGISTRY.collect()
            if family.name == "axolotl_operator_job_phase"
            for s in family.samples
            if (s.labels["namespace"], s.labels["name"]) == (ns, name)
        }

    metrics.observe_job(ns, name, None)
    assert series() == {("Unknown", ""): 1}
    metrics.observe_job(ns, name, {"phase": "Running", "reason": "Running"})
    metrics.observe_job(ns, name, {"phase": "Running", "reason": "Running"})
    assert series() == {("Running", "Running"): 1}
    metrics.observe_job(ns, name, {"phase": "Failed", "reason": "OOMKilled"})
    assert series() == {("Failed", "OOMKilled"): 1}
    metrics.forget_job(ns, name)
    assert series() == {}


def test_a_diverged_loss_reaches_the_gauge_as_nan_so_the_alert_can_fire():
    """The trainer's NaN loss travels as `lossNonFinite` (JSON has no NaN) and comes out as a NaN gauge,
    the series `AxolotlJobLossNaN` (`loss != loss`) fires on; a finite loss afterwards clears it."""
    import math

    from axolotl_operator import metrics
    from axolotl_operator.progress import parse_report, to_progress
    from axolotl_operator.trainer_contract import ProgressReport
    from prometheus_client import REGISTRY

    ns, name = "monitoring-test", "diverged"

    def loss() -> float:
        value = REGISTRY.get_sample_value("axolotl_operator_job_loss", {"namespace": ns, "name": name})
        assert value is not None
        return value

    def report(value: float) -> dict:
        sent = ProgressReport(step=3, loss=value, job_name=name, job_namespace=ns).to_payload()
        return to_progress(parse_report(json.dumps(sent, allow_nan=False), datetime.now(UTC)))

    metrics.observe_job(ns, name, {"phase": "Running", "progress": report(1.5)})
    assert loss() == 1.5
    for diverged in (math.nan, math.inf, -math.inf):
        progress = report(diverged)
        assert progress["lossNonFinite"] is True and "loss" not in progress
        metrics.observe_job(ns, name, {"phase": "Running", "progress": progress})
        assert math.isnan(loss())
    metrics.observe_job(ns, name, {"phase": "Running", "progress": report(0.9)})
    assert loss() == 0.9
    metrics.forget_job(ns, name)
