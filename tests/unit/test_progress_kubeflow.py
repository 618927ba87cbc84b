"""Progress from images that are not ours: transformers' `KubeflowCallback` protocol (parsing, filling
its partial reports in), and the endpoint over HTTPS for both protocols (a real server on 127.0.0.1,
real TLS clients that verify the operator's CA; an in-memory API stands in for Kubernetes)."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from axolotl_operator import certs
from axolotl_operator.progress import (
    MAX_BODY_BYTES,
    MAX_METRICS,
    PayloadError,
    kubeflow_path,
    kubeflow_url,
    newest,
    parse_kubeflow,
    to_progress,
)
from axolotl_operator.progress_server import ProgressServer
from axolotl_operator.progress_tls import ProgressTls, progress_hosts, secret_ref
from cryptography import x509
from test_progress import AUDIENCE, NOW, Clock, FakeKube, nested

# ---------------------------------------------------------------- what the callback sends


def kubeflow_body(percent: int | None = 30, eta: int | None = 70, **metrics: Any) -> dict[str, Any]:
    """A body as KubeflowCallback._update_status builds it (transformers 5.20): values are `str(v)`."""
    status: dict[str, Any] = {"lastUpdatedTime": "2026-11-28T02:59:55.123456+00:00"}
    if percent is not None:
        status["progressPercentage"] = percent
    if eta is not None:
        status["estimatedRemainingSeconds"] = eta
    if metrics:
        status["metrics"] = [{"name": str(k), "value": str(v)} for k, v in metrics.items()]
    return {"trainerStatus": status}


def mid_run(**overrides: Any) -> dict[str, Any]:
    """on_step_end: the logged values so far, the step, the total and the epoch."""
    metrics = {
        "loss": 1.25,
        "grad_norm": 0.5,
        "learning_rate": 0.0002,
        "epoch": 0.2,
        "current_step": 3,
        "total_steps": 10,
        "current_epoch": 0.3,
    }
    metrics.update(overrides)
    return kubeflow_body(30, 70, **{k: v for k, v in metrics.items() if v is not ...})


def parse(body: Any, namespace: str = "ml", name: str = "demo") -> Any:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return parse_kubeflow(data, namespace, name, NOW)


# ---------------------------------------------------------------- parsing


def test_a_mid_run_report_becomes_the_same_progress_as_ours():
    report = parse(mid_run())
    assert (report.job_namespace, report.job_name, report.step, report.total_steps) == ("ml", "demo", 3, 10)
    assert report.timestamp == datetime(2026, 11, 28, 2, 59, 55, 123456, tzinfo=UTC)
    assert report.partial and not report.final
    assert to_progress(report) == {
        "step": 3,
        "totalSteps": 10,
        "percent": 30,
        "epoch": 0.3,  # current_epoch (the step's), not the last log's epoch
        "loss": 1.25,
        "learningRate": 0.0002,
        "gradNorm": 0.5,
        "etaSeconds": 70,
        "updatedAt": "2026-11-28T02:59:55Z",
    }


def test_the_first_report_has_only_the_total_and_the_last_one_no_step():
    begin = parse(kubeflow_body(0, None, total_steps=10))  # on_train_begin
    assert begin.step is None and begin.total_steps == 10
    assert to_progress(begin) == {"totalSteps": 10, "updatedAt": "2026-11-28T02:59:55Z"}
    shown = to_progress(parse(mid_run(current_step=7, loss=0.9)))
    end = parse(kubeflow_body(100, 0, loss=0.75, epoch=1.0, train_loss=1.1, train_runtime=12.5))
    assert end.final and end.step is None and end.total_steps is None
    # what the final report leaves out keeps its shown value; it ended at the last step
    assert to_progress(end, shown) | {"updatedAt": ""} == {
        "step": 10,
        "totalSteps": 10,
        "percent": 100,
        "epoch": 1.0,
        "loss": 0.75,  # the last logged loss, not the run's average (train_loss)
        "learningRate": 0.0002,
        "gradNorm": 0.5,
        "etaSeconds": 0,
        "updatedAt": "",
    }


def test_coalesced_partial_reports_keep_what_the_older_one_said():
    begin = parse(kubeflow_body(0, None, total_steps=10))
    end = parse_kubeflow(json.dumps(kubeflow_body(100, 0, loss=0.75)), "ml", "demo", NOW)
    end = end.__class__(**{**end.__dict__, "timestamp": begin.timestamp + timedelta(seconds=3)})
    kept = newest(begin, end)
    assert (kept.step, kept.total_steps, kept.loss, kept.final) == (10, 10, 0.75, True)


def test_a_nan_loss_is_flagged_and_never_replaced_by_an_old_one():
    for text in ("nan", "inf", "-inf", "1e999"):
        report = parse(mid_run(loss=text))
        assert report.loss is None and report.loss_non_finite, text
        progress = to_progress(report, {"loss": 2.0})
        assert "loss" not in progress and progress["lossNonFinite"] is True
    # a report without any loss keeps the shown one (and its flag)
    assert to_progress(parse(mid_run(loss=...)), {"loss": 2.0})["loss"] == 2.0
    assert to_progress(parse(mid_run(loss=...)), {"lossNonFinite": True})["lossNonFinite"] is True
    assert "lossNonFinite" not in to_progress(parse(mid_run()), {"lossNonFinite": True})


def test_numbers_follow_our_rules():
    report = parse(
        mid_run(grad_norm="inf", learning_rate=-1, current_epoch="x", epoch="nan", current_step="3.5")
    )
    assert report.grad_norm is None and report.learning_rate is None and report.epoch is None
    assert report.step is None  # not an integer
    assert parse(mid_run(current_step="4.0", total_steps=0)).step == 4
    assert parse(mid_run(total_steps=0)).total_steps is None  # 0 means unknown
    assert parse(mid_run(current_step=10**16)).step is None  # beyond MAX_INT: a broken sender
    assert parse(mid_run(current_step="9" * 65)).step is None  # too long to be a number's text
    # JSON numbers instead of strings are taken too; a bool or an object is no number
    body = kubeflow_body()
    body["trainerStatus"]["metrics"] = [
        {"name": "current_step", "value": 5},
        {"name": "loss", "value": True},
        {"name": "learning_rate", "value": {"x": 1}},
        {"name": "grad_norm", "value": 10**400},
    ]
    report = parse(body)
    assert report.step == 5 and report.loss is None and not report.loss_non_finite
    assert report.learning_rate is None and report.grad_norm is None


def test_missing_metrics_and_fields_are_unknown_not_errors():
    report = parse({"trainerStatus": {}})
    assert report.step is None and report.total_steps is None and not report.final
    assert report.timestamp == NOW  # no lastUpdatedTime: ours decides
    assert to_progress(report) == {"updatedAt": "2026-11-28T03:00:00Z"}
    future = parse({"trainerStatus": {"lastUpdatedTime": "2099-01-01T00:00:00+00:00"}})
    assert future.timestamp == NOW
    assert not parse(kubeflow_body(100, None)).final  # progress 100 alone is not the end
    assert not parse(kubeflow_body(99, 0)).final


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"{nope", "not JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "trainerStatus: not an object"),
        (b'{"trainerStatus": []}', "trainerStatus: not an object"),
        (b'{"trainerStatus": {"metrics": {"loss": "1"}}}', "metrics: not a list"),
        (b'{"trainerStatus": {"metrics": ["loss"]}}', "metrics[0]"),
        (b'{"trainerStatus": {"metrics": [{"value": "1"}]}}', "metrics[0]"),
        (b'{"trainerStatus": {"metrics": [{"name": ""}]}}', "metrics[0]"),
        (json.dumps({"trainerStatus": {"metrics": [{"name": "x" * 129}]}}).encode(), "metrics[0]"),
        (nested(8000), "nested too deeply"),
        (b"{" + b" " * MAX_BODY_BYTES + b"}", "body over"),
        (
            json.dumps(
                {"trainerStatus": {"metrics": [{"name": "a", "value": "1"}] * (MAX_METRICS + 1)}}
            ).encode(),
            f"more than {MAX_METRICS}",
        ),
    ],
)
def test_hostile_bodies_are_payload_errors(body, why):
    with pytest.raises(PayloadError, match=why.replace("[", r"\[").replace("]", r"\]")):
        parse(body)


@pytest.mark.parametrize(
    ("namespace", "name", "why"),
    [
        ("ml", "Demo", "job name"),
        ("ml", "a_b", "job name"),
        ("ml", "", "job name"),
        ("ml", "x" * 254, "job name"),
        ("ml", "..", "job name"),
        ("ML", "demo", "namespace"),
        ("a.b", "demo", "namespace"),  # a namespace is a DNS label
        ("", "demo", "namespace"),
    ],
)
def test_the_path_names_a_valid_job_or_the_report_is_refused(namespace, name, why):
    with pytest.raises(PayloadError, match=why):
        parse(mid_run(), namespace, name)


def test_the_job_url_keeps_the_endpoints_scheme_host_and_port():
    assert kubeflow_path("ml", "demo") == "/kubeflow/namespaces/ml/axolotljobs/demo"
    assert (
        kubeflow_url("https://op-progress.sys.svc:8081/progress", "ml", "demo")
        == "https://op-progress.sys.svc:8081/kubeflow/namespaces/ml/axolotljobs/demo"
    )
    assert (
        kubeflow_url("https://proxy.example/axolotl/progress/", "ml", "demo")
        == "https://proxy.example/axolotl/kubeflow/namespaces/ml/axolotljobs/demo"
    )
    assert (
        kubeflow_url("http://[::1]:9/progress", "ml", "d")
        == "http://[::1]:9/kubeflow/namespaces/ml/axolotljobs/d"
    )
    assert progress_hosts("https://[::1]:9/progress") == ["::1"]
    assert progress_hosts("https://op.sys.svc:8081/progress") == ["op.sys.svc"]
    with pytest.raises(ValueError, match="names no host"):
        progress_hosts("https:///progress")
    assert secret_ref("sys/op-progress-tls") == ("sys", "op-progress-tls")
    for bad in ("op-progress-tls", "sys/", "/x", "a/b/c"):
        with pytest.raises(ValueError, match="NAMESPACE/NAME"):
            secret_ref(bad)


# ---------------------------------------------------------------- the endpoint over HTTPS


class Now:
    """The certificates' clock: they were made 300 days ago, so a renewal is due at the real now."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC) - timedelta(days=300)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def tls_server():
    """The endpoint as the operator runs it with an https URL on 127.0.0.1: an in-memory CA."""
    now = Now()
    cas: list[str] = []
    tls = ProgressTls(["127.0.0.1"], on_ca=cas.append, now=now)
    context = tls.start()
    kube, accepted = FakeKube(), []
    server = ProgressServer(
        kube,  # type: ignore[arg-type]
        AUDIENCE,
        accepted.append,
        host="127.0.0.1",
        port=0,
        monotonic=Clock(),
        ssl_context=context,
    )
    server.start()
    server.tls, server.accepted, server.now, server.cas = tls, accepted, now, cas  # type: ignore[attr-defined]
    yield server
    server.stop()
    tls.stop()


def client(ca_pem: bytes | str) -> ssl.SSLContext:
    """What our runner and the KubeflowCallback do: ssl.create_default_context(cafile=the CA)."""
    return ssl.create_default_context(cadata=ca_pem.decode() if isinstance(ca_pem, bytes) else ca_pem)


def send(
    url: str, body: dict[str, Any] | bytes, token: str | None = "good", context: ssl.SSLContext | None = None
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        text = error.read()
        return error.code, json.loads(text) if text.startswith(b"{") else {"message": text.decode()}


def fresh_kubeflow(**overrides: Any) -> dict[str, Any]:
    body = mid_run(**overrides)
    body["trainerStatus"]["lastUpdatedTime"] = datetime.now(UTC).isoformat()
    return body


def test_both_protocols_answer_over_https_verified_against_the_operators_ca(tls_server):
    base = f"https://127.0.0.1:{tls_server.port}"
    trusted = client(tls_server.tls.ca_pem)
    assert tls_server.cas == [tls_server.tls.ca_pem.decode()]  # handed to render's settings
    assert b"PRIVATE KEY" not in tls_server.tls.ca_pem
    code, answer = send(base + kubeflow_path("ml", "demo"), fresh_kubeflow(), context=trusted)
    assert (code, answer["message"]) == (200, "accepted")  # the callback wants 200
    [report] = tls_server.accepted
    assert (report.job_name, report.step, report.loss, report.job_uid) == ("demo", 3, 1.25, "axj-uid")
    ours = {"jobName": "demo", "jobNamespace": "ml", "step": 4, "timestamp": datetime.now(UTC).isoformat()}
    assert send(base + "/progress", ours, context=trusted)[0] == 202  # ours keeps 202


def test_the_kubeflow_route_checks_what_ours_checks_in_the_same_order(tls_server):
    base, trusted = f"https://127.0.0.1:{tls_server.port}", client(tls_server.tls.ca_pem)
    url = base + kubeflow_path("ml", "demo")
    assert send(url, fresh_kubeflow(), token=None, context=trusted)[0] == 401
    assert send(url, fresh_kubeflow(), token="unknown", context=trusted)[0] == 401
    assert send(url, b"{" + b" " * MAX_BODY_BYTES + b"}", context=trusted)[0] == 413
    assert send(url, b"{nope", context=trusted)[0] == 400
    code, answer = send(base + kubeflow_path("ml", "Bad_Name"), fresh_kubeflow(), context=trusted)
    assert code == 400 and "job name" in answer["message"]
    assert send(base + kubeflow_path("ml", "other"), fresh_kubeflow(), context=trusted)[0] == 403
    assert send(base + kubeflow_path("other-ns", "demo"), fresh_kubeflow(), context=trusted)[0] == 403
    assert send(url, fresh_kubeflow(), token="broken", context=trusted)[0] == 503
    assert send(url + "/more", fresh_kubeflow(), context=trusted)[0] == 404
    assert tls_server.accepted == []


def test_plain_http_and_a_wrong_ca_never_get_an_answer(tls_server):
    port = tls_server.port
    # a client speaking plain HTTP (a token in cleartext) is not answered
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        connection.request("POST", "/progress", body=b"{}", headers={"Authorization": "Bearer good"})
        connection.getresponse()
    connection.close()
    # a client that trusts another CA refuses the certificate before it sends anything
    stranger = certs.new_ca("stranger", datetime.now(UTC))
    url = f"https://127.0.0.1:{port}{kubeflow_path('ml', 'demo')}"
    with pytest.raises(urllib.error.URLError) as error:
        send(url, fresh_kubeflow(), context=client(stranger.cert_pem))
    assert isinstance(error.value.reason, ssl.SSLCertVerificationError)
    # nor does one that checks the system's CAs only
    with pytest.raises(urllib.error.URLError):
        send(url, fresh_kubeflow(), context=ssl.create_default_context())
    assert tls_server.accepted == []


def test_a_renewed_certificate_serves_from_the_next_connection_without_a_restart(tls_server):
    port, trusted = tls_server.port, client(tls_server.tls.ca_pem)

    def serial() -> int:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            trusted.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).serial_number

    before = serial()
    tls_server.tls.refresh()  # nothing due: the same certificate
    assert serial() == before
    tls_server.now.now = datetime.now(UTC)  # 65 of 365 days left: less than a third
    tls_server.tls.refresh()
    after = serial()
    assert after != before  # served without a restart, signed by the same CA (still trusted)
    assert len(tls_server.cas) == 1
    url = f"https://127.0.0.1:{port}{kubeflow_path('ml', 'demo')}"
    assert send(url, fresh_kubeflow(), context=trusted)[0] == 200
