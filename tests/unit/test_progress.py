"""Progress reports from trainer pods: parsing, the status.progress shape, ordering, authorization,
and the HTTP endpoint's answers (real server on 127.0.0.1; an in-memory API stands in for Kubernetes).
How accepted reports are written (rate limit, field manager) is tested with the Operator
(test_controller.py)."""

from __future__ import annotations

import importlib.util
import json
import sys
import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from axolotl_operator.api.status import PROGRESS_KEYS, Progress
from axolotl_operator.kube import ApiError
from axolotl_operator.progress import (
    MAX_BODY_BYTES,
    Denied,
    Identity,
    PayloadError,
    Report,
    authorize,
    bearer_token,
    identity_of,
    is_newer,
    newest,
    parse_report,
    to_progress,
)
from axolotl_operator.progress_server import ProgressServer

NOW = datetime(2026, 11, 28, 3, 0, 0, tzinfo=UTC)
AUDIENCE = "axolotl-operator"


def payload(**overrides: Any) -> dict[str, Any]:
    """What trainer-image's contract.ProgressReport.to_payload() sends."""
    body = {
        "jobName": "demo",
        "jobNamespace": "ml",
        "timestamp": "2026-11-28T02:59:55Z",
        "step": 120,
        "totalSteps": 500,
        "epoch": 0.24,
        "loss": 1.23,
        "learningRate": 0.0002,
        "gradNorm": 0.8,
        "tokensPerSecond": 5400.0,
        "etaSeconds": 900.4,
        "final": False,
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not ...}


def report(**overrides: Any) -> Report:
    return parse_report(json.dumps(payload(**overrides)), NOW)


# ---------------------------------------------------------------- parsing


def test_the_trainers_payload_becomes_the_api_models_progress():
    progress = to_progress(report())
    assert progress == {
        "step": 120,
        "totalSteps": 500,
        "percent": 24,
        "epoch": 0.24,
        "loss": 1.23,
        "learningRate": 0.0002,
        "gradNorm": 0.8,
        "tokensPerSecond": 5400.0,
        "etaSeconds": 900,
        "updatedAt": "2026-11-28T02:59:55Z",
    }
    assert Progress.model_validate(progress).model_dump(by_alias=True, exclude_none=True) == progress
    assert tuple(progress) == PROGRESS_KEYS


def test_the_contracts_own_encoder_is_accepted():
    path = Path(__file__).resolve().parents[2] / "trainer-image/src/axolotl_job_runner/contract.py"
    spec = importlib.util.spec_from_file_location("trainer_contract", path)
    assert spec and spec.loader
    contract = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = contract  # dataclasses look their module up
    spec.loader.exec_module(contract)
    sent = contract.ProgressReport(
        step=7, total_steps=10, loss=float("nan"), job_name="demo", job_namespace="ml", final=True
    ).to_payload()
    parsed = parse_report(json.dumps(sent, allow_nan=False), datetime.now(UTC) + timedelta(seconds=5))
    assert (parsed.step, parsed.total_steps, parsed.loss, parsed.final) == (7, 10, None, True)
    assert to_progress(parsed)["etaSeconds"] == 0


@pytest.mark.parametrize(
    "body, why",
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (json.dumps(payload(jobName=...)).encode(), "jobName"),
        (json.dumps(payload(jobName="Bad_Name")).encode(), "jobName"),
        (json.dumps(payload(jobNamespace="a" * 64)).encode(), "jobNamespace"),
        (json.dumps(payload(jobNamespace=3)).encode(), "jobNamespace"),
        (json.dumps(payload(step=...)).encode(), "step"),
        (json.dumps(payload(step=-1)).encode(), "step"),
        (json.dumps(payload(step=True)).encode(), "step"),
        (json.dumps(payload(step="12")).encode(), "step"),
        (json.dumps(payload(step=10**16)).encode(), "step"),
        (b"{" + b" " * MAX_BODY_BYTES + b"}", "16384"),
    ],
)
def test_bad_payloads_are_refused_with_the_reason(body, why):
    with pytest.raises(PayloadError, match=why):
        parse_report(body, NOW)


def test_optional_numbers_are_tolerated_but_only_finite_and_sane():
    parsed = report(
        totalSteps=0,
        epoch=-1,
        loss="low",
        learningRate=-0.1,
        gradNorm=None,
        tokensPerSecond=1e400,  # inf: Python's json writes Infinity
        etaSeconds=-5,
        final="yes",
        extra={"ignored": True},
    )
    assert parsed.total_steps is None and parsed.epoch is None and parsed.loss is None
    assert parsed.learning_rate is None and parsed.grad_norm is None and parsed.tokens_per_second is None
    assert parsed.eta_seconds is None and parsed.final is False
    assert to_progress(parsed) == {"step": 120, "updatedAt": "2026-11-28T02:59:55Z"}
    assert report(step=120.0, totalSteps=500.0).step == 120
    assert report(loss=-0.5).loss == -0.5  # some objectives go below zero


def test_nan_and_infinity_literals_become_unknown():
    body = json.dumps(payload(loss=float("nan"), gradNorm=float("inf")))  # Python writes NaN, Infinity
    parsed = parse_report(body, NOW)
    assert parsed.loss is None and parsed.grad_norm is None


def test_timestamp_missing_bad_or_in_the_future_is_the_receivers_clock():
    assert report(timestamp=...).timestamp == NOW
    assert report(timestamp="yesterday").timestamp == NOW
    assert report(timestamp="2026-11-28T02:00:00").timestamp == NOW  # no zone
    assert report(timestamp="2030-01-01T00:00:00Z").timestamp == NOW
    assert report(timestamp="2026-11-28T04:59:00+02:00").timestamp == datetime(
        2026, 11, 28, 2, 59, tzinfo=UTC
    )


def test_percent_is_capped_and_final_has_no_time_left():
    assert to_progress(report(step=600, totalSteps=500))["percent"] == 100
    final = to_progress(report(step=500, etaSeconds=12.0, final=True))
    assert final["etaSeconds"] == 0 and final["percent"] == 100


# ---------------------------------------------------------------- ordering


def status(updated_at: str | None, step: int = 100, phase: str = "Running") -> dict[str, Any]:
    progress = {"step": step} if updated_at is None else {"step": step, "updatedAt": updated_at}
    return {"phase": phase, "progress": progress}


def test_a_later_sample_replaces_the_status():
    assert is_newer(report(), None)
    assert is_newer(report(), {"phase": "Running"})
    assert is_newer(report(), status(None))
    assert is_newer(report(), status("2026-11-28T02:59:50Z", step=200))  # resumed from an earlier checkpoint
    assert not is_newer(report(), status("2026-11-28T02:59:58Z", step=10))


def test_within_one_second_the_higher_step_or_the_final_report_wins():
    same = "2026-11-28T02:59:55Z"
    assert is_newer(report(step=120), status(same, step=120))
    assert not is_newer(report(step=119), status(same, step=120))
    assert is_newer(report(step=119, final=True), status(same, step=120))


def test_a_finished_job_keeps_its_summarys_numbers():
    for phase in ("Succeeded", "Failed"):
        assert not is_newer(report(final=True), status("2026-11-28T02:00:00Z", phase=phase))
    assert is_newer(report(), status("2026-11-28T02:00:00Z", phase="Pending"))


def test_coalescing_keeps_what_is_newer_would_keep():
    old, new = report(timestamp="2026-11-28T02:59:00Z"), report(timestamp="2026-11-28T02:59:30Z")
    assert newest(None, old) is old
    assert newest(old, new) is new and newest(new, old) is new
    final = report(timestamp="2026-11-28T02:59:30Z", step=100, final=True)
    assert newest(new, final) is final and newest(final, new) is final
    assert newest(report(step=5), report(step=6)).step == 6
    assert newest(report(step=6), report(step=5)).step == 6


# ---------------------------------------------------------------- authorization


def review(
    username: str = "system:serviceaccount:ml:default",
    pod_name: str | None = "demo-0-abcde",
    pod_uid: str | None = "pod-uid",
    audiences: list[str] | None = None,
    authenticated: bool = True,
) -> dict[str, Any]:
    extra: dict[str, list[str]] = {}
    if pod_name:
        extra["authentication.kubernetes.io/pod-name"] = [pod_name]
    if pod_uid:
        extra["authentication.kubernetes.io/pod-uid"] = [pod_uid]
    return {
        "authenticated": authenticated,
        "user": {"username": username, "uid": "sa-uid", "groups": ["system:serviceaccounts"], "extra": extra},
        "audiences": [AUDIENCE] if audiences is None else audiences,
    }


def objects(job_name: str = "demo", namespace: str = "ml") -> dict[str, dict[str, Any]]:
    """An AxolotlJob, its Job and one of the Job's pods, linked by controller references."""
    axj = {"metadata": {"name": job_name, "namespace": namespace, "uid": "axj-uid", "resourceVersion": "1"}}
    job = {
        "metadata": {
            "name": job_name,
            "namespace": namespace,
            "uid": "job-uid",
            "ownerReferences": [{"kind": "AxolotlJob", "uid": "axj-uid", "controller": True}],
        }
    }
    pod = {
        "metadata": {
            "name": "demo-0-abcde",
            "namespace": namespace,
            "uid": "pod-uid",
            "labels": {"axolotl.ai/job": job_name},
            "ownerReferences": [{"kind": "Job", "uid": "job-uid", "controller": True}],
        },
        "spec": {"serviceAccountName": "default"},
    }
    return {"axj": axj, "job": job, "pod": pod}


def test_identity_of_a_pod_bound_service_account_token():
    assert identity_of(review(), AUDIENCE) == Identity("ml", "default", "demo-0-abcde", "pod-uid")
    assert identity_of(review(pod_name=None, pod_uid=None), AUDIENCE).pod_name is None


@pytest.mark.parametrize(
    "result",
    [
        review(authenticated=False),
        {"authenticated": True},
        review(audiences=["https://kubernetes.default.svc.cluster.local"]),
        review(username="alice"),
        review(username="system:serviceaccount:ml"),
        review(username="system:serviceaccount::default"),
        {},
    ],
)
def test_no_identity_is_401(result):
    with pytest.raises(Denied) as denied:
        identity_of(result, AUDIENCE)
    assert denied.value.status == 401


def test_the_jobs_own_pod_may_report():
    linked = objects()
    authorize(identity_of(review(), AUDIENCE), report(), linked["pod"], linked["job"], linked["axj"])


def _mutate(linked: dict[str, dict[str, Any]], what: str) -> None:
    pod, job = linked["pod"], linked["job"]
    if what == "pod of another job":
        pod["metadata"]["labels"]["axolotl.ai/job"] = "other"
    elif what == "unlabelled pod":
        del pod["metadata"]["labels"]
    elif what == "pod not controlled by the Job":
        pod["metadata"]["ownerReferences"] = [{"kind": "Job", "uid": "someone-else", "controller": True}]
    elif what == "Job not controlled by the AxolotlJob":
        job["metadata"]["ownerReferences"] = [{"kind": "AxolotlJob", "uid": "old-axj", "controller": True}]
    elif what == "Job owned but not controlled":
        job["metadata"]["ownerReferences"][0]["controller"] = False
    elif what == "other ServiceAccount":
        pod["spec"]["serviceAccountName"] = "trainer"
    elif what == "replaced pod":
        pod["metadata"]["uid"] = "new-uid"
    elif what == "pod in another namespace":
        pod["metadata"]["namespace"] = "other"
    elif what == "no pod":
        linked["pod"] = None  # type: ignore[assignment]
    elif what == "no Job":
        linked["job"] = None  # type: ignore[assignment]
    elif what == "no AxolotlJob":
        linked["axj"] = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    "what",
    [
        "pod of another job",
        "unlabelled pod",
        "pod not controlled by the Job",
        "Job not controlled by the AxolotlJob",
        "Job owned but not controlled",
        "other ServiceAccount",
        "replaced pod",
        "pod in another namespace",
        "no pod",
        "no Job",
        "no AxolotlJob",
    ],
)
def test_anything_but_the_jobs_own_pod_is_403(what):
    linked = objects()
    _mutate(linked, what)
    with pytest.raises(Denied) as denied:
        authorize(identity_of(review(), AUDIENCE), report(), linked["pod"], linked["job"], linked["axj"])
    assert denied.value.status == 403


def test_a_token_not_bound_to_a_pod_or_from_another_namespace_is_403():
    linked = objects()
    for identity in (
        identity_of(review(pod_name=None), AUDIENCE),
        identity_of(review(username="system:serviceaccount:other:default"), AUDIENCE),
    ):
        with pytest.raises(Denied) as denied:
            authorize(identity, report(), linked["pod"], linked["job"], linked["axj"])
        assert denied.value.status == 403


def test_a_report_for_another_job_with_a_valid_pod_token_is_403():
    linked = objects()
    with pytest.raises(Denied):
        authorize(
            identity_of(review(), AUDIENCE),
            report(jobName="other"),
            linked["pod"],
            linked["job"],
            linked["axj"],
        )


@pytest.mark.parametrize(
    "header, token",
    [
        ("Bearer abc.def.ghi", "abc.def.ghi"),
        ("bearer  abc ", "abc"),
        (None, None),
        ("", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer", None),
        ("Bearer a b", None),
        ("Bearer " + "x" * 9000, None),
    ],
)
def test_bearer_token(header, token):
    assert bearer_token(header) == token


# ---------------------------------------------------------------- the HTTP endpoint


class FakeKube:
    """The few API calls the endpoint makes, in memory: tokens map to TokenReview results."""

    def __init__(self) -> None:
        linked = objects()
        self.axj = {**linked["axj"], "status": {"phase": "Running"}}
        self.job, self.pod = linked["job"], linked["pod"]
        self.reviews = {"good": review(), "other-audience": review(authenticated=False)}
        self.review_calls = 0
        self.lock = threading.Lock()

    def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        assert audiences == [AUDIENCE]
        self.review_calls += 1
        if token == "broken":
            raise ApiError(500, "Internal Server Error", {"message": "etcd is down"})
        if token == "unreachable":
            raise ConnectionRefusedError("connection refused")
        return self.reviews.get(token, {"authenticated": False})

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pod if (namespace, name) == ("ml", self.pod["metadata"]["name"]) else None

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.job if (namespace, name) == ("ml", "demo") else None

    def get_axolotljob(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return json.loads(json.dumps(self.axj)) if (namespace, name) == ("ml", "demo") else None


@pytest.fixture
def server():
    kube = FakeKube()
    accepted: list[Report] = []
    srv = ProgressServer(kube, AUDIENCE, accepted.append, host="127.0.0.1", port=0)  # type: ignore[arg-type]
    srv.start()
    srv.fake = kube  # type: ignore[attr-defined]
    srv.accepted = accepted  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def post(srv: ProgressServer, body: bytes | dict, token: str | None = "good") -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{srv.port}/progress", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def fresh(**overrides: Any) -> dict[str, Any]:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return payload(timestamp=stamp, **overrides)


def test_endpoint_answers(server):
    assert post(server, fresh(), token=None)[0] == 401
    assert post(server, fresh(), token="unknown")[0] == 401
    assert post(server, fresh(), token="other-audience")[0] == 401
    assert post(server, b"{" + b" " * MAX_BODY_BYTES + b"}")[0] == 413
    code, answer = post(server, b"{nope")
    assert code == 400 and "not JSON" in answer["message"]
    assert post(server, fresh(jobName="other"))[0] == 403
    assert post(server, fresh(), token="broken")[0] == 503
    assert post(server, fresh(), token="unreachable")[0] == 503
    assert server.accepted == []
    assert post(server, fresh())[0] == 202
    [accepted] = server.accepted
    assert (accepted.job_namespace, accepted.job_name, accepted.step) == ("ml", "demo", 120)
    assert to_progress(accepted)["percent"] == 24 and to_progress(accepted)["etaSeconds"] == 900


def test_bodies_up_to_16_kib_are_read_whole_and_chunked_ones_are_capped(server):
    padded = fresh(padding="x" * (MAX_BODY_BYTES - 1000))
    assert len(json.dumps(padded)) <= MAX_BODY_BYTES
    assert post(server, padded)[0] == 202
    chunks = iter([b'{"jobName": "demo", "padding": "', b"x" * MAX_BODY_BYTES, b'"}'])
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/progress", data=chunks, headers={"Authorization": "Bearer good"}
    )
    with pytest.raises(urllib.error.HTTPError) as error:
        urllib.request.urlopen(request, timeout=10)
    assert error.value.code == 413


def test_a_pods_token_is_reviewed_once_for_many_reports(server):
    for step in (10, 20, 30):
        assert post(server, fresh(step=step))[0] == 202
    assert [r.step for r in server.accepted] == [10, 20, 30]
    assert server.fake.review_calls == 1  # cached per token and job


def test_a_busy_port_fails_the_start(server):
    other = ProgressServer(server.fake, AUDIENCE, list.append, host="127.0.0.1", port=server.port)
    try:
        with pytest.raises(OSError):
            other.start()
    finally:
        other.stop()
