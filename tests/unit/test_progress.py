"""Progress reports from trainer pods: parsing, the status.progress shape, ordering, authorization,
and the HTTP endpoint's answers (real server on 127.0.0.1; an in-memory API stands in for Kubernetes).
How accepted reports are written (rate limit, field manager) is tested with the Operator
(test_controller.py)."""

from __future__ import annotations

import importlib.util
import json
import logging
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
    Bucket,
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
    take,
    to_progress,
)
from axolotl_operator.progress_server import Expiring, Limit, ProgressServer, RateLimiter

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
    optional = {"lossNonFinite", "resumedFromStep", "checkpointStep"}  # only when they apply
    assert tuple(progress) == tuple(key for key in PROGRESS_KEYS if key not in optional)


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
    assert to_progress(parsed)["lossNonFinite"] is True  # NaN is no JSON; the flag carries it


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


def nested(depth: int, inside: bytes = b"1") -> bytes:
    return b"[" * depth + inside + b"]" * depth


@pytest.mark.parametrize(
    "body",
    [
        nested(8000),  # the deepest that fits in 16 KiB: json.loads raises RecursionError
        b'{"jobName": "demo", "deep": ' + nested(8000) + b"}",
        b'{"a":' * 2500 + b"1" + b"}" * 2500,
    ],
)
def test_a_deeply_nested_body_is_a_payload_error_not_a_crash(body):
    assert len(body) <= MAX_BODY_BYTES
    with pytest.raises(PayloadError, match="nested too deeply"):
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
    """An AxolotlJob, its Job and one of the Job's pods as a cluster has them: linked by controller
    references; the Job's pod template labels as the API server defaults them; the pod as the Job
    controller creates it (those labels, the tracking finalizer, the template's ServiceAccount)."""
    axj = {"metadata": {"name": job_name, "namespace": namespace, "uid": "axj-uid", "resourceVersion": "1"}}
    template_labels = {
        "axolotl.ai/job": job_name,
        "app.kubernetes.io/component": "training",
        "batch.kubernetes.io/controller-uid": "job-uid",
        "batch.kubernetes.io/job-name": job_name,
        "controller-uid": "job-uid",
        "job-name": job_name,
    }
    job = {
        "metadata": {
            "name": job_name,
            "namespace": namespace,
            "uid": "job-uid",
            "ownerReferences": [{"kind": "AxolotlJob", "uid": "axj-uid", "controller": True}],
        },
        "spec": {"template": {"metadata": {"labels": dict(template_labels)}, "spec": {}}},
    }
    pod = {
        "metadata": {
            "name": "demo-0-abcde",
            "namespace": namespace,
            "uid": "pod-uid",
            "labels": {**template_labels, "extra": "added-by-a-webhook"},
            "finalizers": ["batch.kubernetes.io/job-tracking"],
            "ownerReferences": [
                {"kind": "Job", "uid": "job-uid", "controller": True, "blockOwnerDeletion": True}
            ],
        },
        "spec": {"serviceAccountName": "default"},
        "status": {"phase": "Running"},
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
    # the ServiceAccount the Job's template names (not only "default")
    for obj in (linked["pod"], linked["job"]["spec"]["template"]):
        obj["spec"]["serviceAccountName"] = "trainer"
    trainer = identity_of(review(username="system:serviceaccount:ml:trainer"), AUDIENCE)
    authorize(trainer, report(), linked["pod"], linked["job"], linked["axj"])


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
    elif what == "pod without the Job's controller-uid label":
        del pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"]
        job["spec"]["template"]["metadata"]["labels"].pop("batch.kubernetes.io/controller-uid")
    elif what == "pod with another Job's controller-uid label":
        pod["metadata"]["labels"]["batch.kubernetes.io/controller-uid"] = "other-job-uid"
    elif what == "pod without a label of the Job's pod template":
        del pod["metadata"]["labels"]["app.kubernetes.io/component"]
    elif what == "pod without the Job controller's tracking finalizer":
        del pod["metadata"]["finalizers"]
    elif what == "finished pod":
        pod["status"]["phase"] = "Succeeded"
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
        "pod without the Job's controller-uid label",
        "pod with another Job's controller-uid label",
        "pod without a label of the Job's pod template",
        "pod without the Job controller's tracking finalizer",
        "finished pod",
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


def test_a_pod_the_job_controller_is_deleting_may_still_report_its_checkpoint():
    """On suspend the Job controller removes its tracking finalizer, then deletes the pod; the trainer
    saves a checkpoint on that SIGTERM and reports it (checkpointStep) before it exits."""
    linked = objects()
    del linked["pod"]["metadata"]["finalizers"]
    linked["pod"]["metadata"]["deletionTimestamp"] = "2026-11-28T03:00:00Z"
    authorize(identity_of(review(), AUDIENCE), report(), linked["pod"], linked["job"], linked["axj"])


def test_a_pod_running_as_another_service_account_than_the_jobs_template_is_403():
    """A pod of the namespace running as (and with a token of) a ServiceAccount the Job does not use,
    otherwise dressed as the Job's pod."""
    linked = objects()
    linked["pod"]["spec"]["serviceAccountName"] = "builder"
    builder = identity_of(review(username="system:serviceaccount:ml:builder"), AUDIENCE)
    with pytest.raises(Denied, match="ServiceAccount") as denied:
        authorize(builder, report(), linked["pod"], linked["job"], linked["axj"])
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


# ---------------------------------------------------------------- rate limit (token bucket)


def test_a_token_bucket_lets_a_burst_through_then_the_rate():
    bucket, wait = take(None, 100.0, rate=4, burst=3)
    assert (bucket, wait) == (Bucket(2, 100.0), 0)
    bucket, _ = take(bucket, 100.0, rate=4, burst=3)
    bucket, _ = take(bucket, 100.0, rate=4, burst=3)
    bucket, wait = take(bucket, 100.0, rate=4, burst=3)
    assert wait == 0.25  # empty: the next request in 1/rate s
    bucket, wait = take(bucket, 100.125, rate=4, burst=3)
    assert wait == 0.125  # a refused request took nothing
    bucket, wait = take(bucket, 100.25, rate=4, burst=3)
    assert wait == 0
    assert take(bucket, 200.0, rate=4, burst=3)[0].tokens == 2  # refilled to the burst, never beyond


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
        if token.startswith("echo"):  # a client library that puts the request into its error
            raise ValueError(f"cannot send {{'spec': {{'token': '{token}'}}}}\nTraceback: line 2\nline 3")
        return self.reviews.get(token, {"authenticated": False})

    def get_pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pod if (namespace, name) == ("ml", self.pod["metadata"]["name"]) else None

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.job if (namespace, name) == ("ml", "demo") else None

    def get_axolotljob(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self.lock:
            return json.loads(json.dumps(self.axj)) if (namespace, name) == ("ml", "demo") else None


class Clock:
    """A monotonic clock the test moves (cache lifetimes, rate limits)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_server():
    made: list[ProgressServer] = []

    def make(**options: Any) -> ProgressServer:
        kube = FakeKube()
        accepted: list[Report] = []
        clock = Clock()
        srv = ProgressServer(
            kube,  # type: ignore[arg-type]
            AUDIENCE,
            accepted.append,
            host="127.0.0.1",
            port=0,
            monotonic=clock,
            **options,
        )
        srv.start()
        made.append(srv)
        srv.fake = kube  # type: ignore[attr-defined]
        srv.accepted = accepted  # type: ignore[attr-defined]
        srv.monotonic_clock = clock  # type: ignore[attr-defined]
        return srv

    yield make
    for srv in made:
        srv.stop()


@pytest.fixture
def server(make_server):
    return make_server()


def send(
    srv: ProgressServer, body: bytes | dict, token: str | None = "good"
) -> tuple[int, dict, dict[str, str]]:
    """POST a report: (status, JSON answer, headers)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{srv.port}/progress", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}"), dict(error.headers)


def post(srv: ProgressServer, body: bytes | dict, token: str | None = "good") -> tuple[int, dict]:
    code, answer, _ = send(srv, body, token)
    return code, answer


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
    assert server.fake.review_calls == 1  # cached per token
    assert post(server, fresh(jobName="other"))[0] == 403  # another job: the same identity, no review
    assert server.fake.review_calls == 1
    server.monotonic_clock.now += 61  # a positive review is kept a minute
    assert post(server, fresh(step=40))[0] == 202
    assert server.fake.review_calls == 2


def test_a_junk_token_costs_one_token_review_per_ten_seconds(server):
    for _ in range(5):
        assert post(server, fresh(), token="unknown")[0] == 401
    assert server.fake.review_calls == 1  # the refusal is cached too
    server.monotonic_clock.now += 11
    assert post(server, fresh(), token="unknown")[0] == 401
    assert server.fake.review_calls == 2
    assert post(server, fresh(), token="broken")[0] == 503  # an API error is not an answer: not cached
    assert post(server, fresh(), token="broken")[0] == 503
    assert server.fake.review_calls == 4


def test_the_token_is_checked_before_the_body_is_read(server):
    """Who sends comes first: a stranger's body is never parsed, whatever it holds."""
    for body in (b"{nope", nested(8000), b"\xff\xfe"):
        code, answer = post(server, body, token="unknown")
        assert code == 401, answer
    assert post(server, b"{nope", token=None)[0] == 401


def test_a_deeply_nested_body_is_400_and_logs_no_traceback(server, caplog):
    caplog.set_level(logging.DEBUG)
    code, answer = post(server, nested(8000))
    assert code == 400 and "nested too deeply" in answer["message"]
    assert post(server, b"[" * 100_000 + b"]" * 100_000)[0] == 413  # 100,000 levels are over 16 KiB
    assert post(server, fresh())[0] == 202  # and the endpoint still works
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


def test_requests_are_rate_limited_per_address(make_server):
    server = make_server(per_address=Limit(rate=1, burst=3))
    answers = [send(server, fresh(), token=None) for _ in range(4)]
    assert [code for code, _, _ in answers] == [401, 401, 401, 429]
    _, answer, headers = answers[-1]
    assert headers["Retry-After"] == "1" and "too many" in answer["message"]
    assert send(server, fresh())[0] == 429  # a good token from the same address waits too
    server.monotonic_clock.now += 1
    assert send(server, fresh())[0] == 202


def test_requests_are_rate_limited_per_token(make_server):
    server = make_server(per_token=Limit(rate=0.5, burst=2))
    assert [post(server, fresh(step=step))[0] for step in (1, 2, 3)] == [202, 202, 429]
    code, _, headers = send(server, fresh(step=4))
    assert code == 429 and headers["Retry-After"] == "2"
    assert post(server, fresh(), token="unknown")[0] == 401  # another token has its own bucket
    assert [r.step for r in server.accepted] == [1, 2]
    assert server.fake.review_calls == 2  # a limited request costs no TokenReview


def test_the_caches_and_rate_limits_hold_a_bounded_number_of_entries():
    cache: Expiring[str, int] = Expiring(size=8)
    for index in range(40):
        cache.put(f"token-{index}", index, expires=100.0)
    assert len(cache) == 8  # the oldest went first
    assert cache.get("token-0", now=50.0) is None and cache.get("token-39", now=50.0) == 39
    assert cache.get("token-39", now=100.0) is None  # expired
    limiter = RateLimiter(Limit(rate=1, burst=1), size=8)
    assert [limiter.take(f"10.0.0.{index}", now=0.0) for index in range(40)] == [0.0] * 40
    assert len(limiter) == 8
    assert limiter.take("10.0.0.39", now=0.0) == 1.0  # the newest sources are still limited


def test_tokens_and_bodies_are_never_logged_and_errors_take_one_line(server, caplog):
    caplog.set_level(logging.DEBUG)
    secret = "echo-s3cr3t-t0ken"
    marker = "BODY-MARKER-9f2"
    assert post(server, fresh(), token=secret)[0] == 503
    assert post(server, fresh(padding=marker), token="unknown")[0] == 401
    assert post(server, b'{"jobName": "' + marker.encode() + b'"}')[0] == 400
    assert post(server, fresh(jobName="other", padding=marker))[0] == 403
    assert post(server, fresh(padding=marker), token="broken")[0] == 503
    messages = [record.getMessage() for record in caplog.records]
    assert messages, "the refusals and errors are logged"
    for message in messages:
        assert secret not in message and "s3cr3t" not in message and marker not in message, message
        assert "\n" not in message, message
    assert not [r for r in caplog.records if r.exc_info]


def test_a_busy_port_fails_the_start(server):
    other = ProgressServer(server.fake, AUDIENCE, list.append, host="127.0.0.1", port=server.port)
    try:
        with pytest.raises(OSError):
            other.start()
    finally:
        other.stop()
