"""The operator converges after faults, each made for real on a real control plane:

1. the API server is unreachable from the operator for 30 s while a job's pod completes;
2. the operator is SIGKILLed while 20 pods complete, then started again;
3. API Priority and Fairness rejects the operator's requests (the server's own 429s);
4. etcd compaction makes the operator's watches fail with 410 Gone, so Kopf relists.

This module runs on a control plane of its own (``faults_control_plane``: ``<KUBEENV_STATE_DIR>-faults``,
started here and stopped at the end), because two of these faults need kube-apiserver flags the shared
control plane does not have and should not pay for: APF on (test 3) and the watch cache off (test 4; see
``FAULTS_APISERVER_ARGS`` for why compaction yields no 410 through the watch cache). Compaction and a
throttling FlowSchema would also disturb other tests sharing a control plane. Each test starts its own
operator processes and stops them; nothing here mocks Kubernetes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from faults_support import (
    FAULTS_APISERVER_ARGS,
    LOOPBACK,
    Etcd,
    TcpProxy,
    assert_one_event_per_transition,
    ca_pem,
    children_by_job,
    faults_control_plane,
    flow_control_counts,
    http_get,
    kubeconfig_for,
    listening_addresses,
    metric_samples,
    raw_watch,
    ready_info,
    response_headers,
    server_of,
    transition_events,
    verified_peer_cert,
)
from operator_support import (
    HOLD,
    RELEASE,
    ROOT,
    OperatorProcess,
    apply_yaml,
    children,
    get_axj,
    kubectl,
    kubectl_json,
    make_axj,
    pods_of,
    wait_for,
    wait_phase,
)

pytestmark = pytest.mark.integration

CUT_SECONDS = 30
SUMMARY = {
    "outcome": "succeeded",
    "exitCode": 0,
    "runtimeSeconds": 812.4,
    "finalLoss": 0.8731,
    "steps": 500,
    "totalSteps": 500,
}


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def kubeenv() -> Iterator[Any]:
    """This module's own control plane (overrides the session's for these tests only)."""
    yield from faults_control_plane()


@pytest.fixture(scope="module")
def kubeconfig(kubeenv: Any) -> Path:
    return kubeenv.kubeconfig


@pytest.fixture
def operators(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operator processes (``start(name, kubeconfig=None, verbose=False)``); all stop afterwards."""
    log_dir = Path(os.environ.get("AXOLOTL_OPERATOR_TEST_LOG_DIR") or tmp_path)
    log_dir.mkdir(parents=True, exist_ok=True)
    started: list[OperatorProcess] = []

    def start(
        name: str, kubeconfig: Path | None = None, verbose: bool = False, resync: float | None = None
    ) -> OperatorProcess:
        env = {"KUBECONFIG": str(kubeconfig)} if kubeconfig else {}
        extra = ("--verbose",) if verbose else ()
        extra += ("--resync-seconds", str(resync)) if resync is not None else ()
        proc = OperatorProcess(log_dir / f"{request.node.name}-{name}.log", extra_args=extra, env=env)
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        if proc.running():
            try:
                proc.stop(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def api_proxy(kubeconfig: Path) -> Iterator[TcpProxy]:
    """A loopback TCP proxy in front of this control plane's API server."""
    proxy = TcpProxy(server_of(kubeconfig)).start()
    yield proxy
    proxy.close()


def proxied_kubeconfig(kubeconfig: Path, proxy: TcpProxy, path: Path) -> Path:
    """The admin kubeconfig, but through the proxy; checks first that TLS through it verifies for
    127.0.0.1 (the apiserver's certificate carries 127.0.0.1 as an IP SAN: the operator connects to
    127.0.0.1:<proxy port> and still verifies the server's identity)."""
    cert = verified_peer_cert(proxy.port, ca_pem(kubeconfig))
    assert ("IP Address", LOOPBACK) in cert["subjectAltName"], cert["subjectAltName"]
    return kubeconfig_for(kubeconfig, path, server=f"https://{LOOPBACK}:{proxy.port}")


# ---------------------------------------------------------------- containment (read, not probed)


def test_the_fault_control_plane_and_proxy_stay_on_loopback(kubeconfig, api_proxy):
    """The extra apiserver flags change nothing about where this control plane listens, and the proxy
    in front of it is loopback-only too: every socket it or the test opens is on 127.0.0.0/8."""
    pid = int((kubeconfig.parent / "pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
    assert [a for a in cmdline if a.startswith("--apiserver-arg=")] == [
        f"--apiserver-arg={flag}" for flag in FAULTS_APISERVER_ARGS.split()
    ]
    addresses = listening_addresses(pid)
    assert len(addresses) >= 3 and all(a.is_loopback for a in addresses), addresses
    ours = listening_addresses(os.getpid())  # the proxy listens in this test process
    assert ours and all(a.is_loopback for a in ours), ours
    assert Etcd(ready_info(kubeconfig)["etcd"]).url.startswith(f"http://{LOOPBACK}:")


# ---------------------------------------------------------------- helpers


def phases(namespace: str) -> Counter[str]:
    items = kubectl_json("get", "axolotljobs", "-n", namespace)["items"]
    return Counter((i.get("status") or {}).get("phase") or "None" for i in items)


def all_in_phase(namespace: str, count: int, phase: str) -> Callable[[], list[dict[str, Any]] | None]:
    def check() -> list[dict[str, Any]] | None:
        items = kubectl_json("get", "axolotljobs", "-n", namespace)["items"]
        seen = [(i.get("status") or {}).get("phase") for i in items]
        if "Failed" in seen:
            raise AssertionError(f"a job failed: {[i.get('status') for i in items]}")
        return items if len(items) == count and seen.count(phase) == count else None

    return check


def job_complete(namespace: str, name: str) -> bool:
    job = kubectl_json("get", "job", name, "-n", namespace)
    return any(
        c["type"] == "Complete" and c["status"] == "True"
        for c in job.get("status", {}).get("conditions") or []
    )


def assert_one_job_each(namespace: str, items: list[dict[str, Any]]) -> None:
    """Each AxolotlJob has one Job it controls, one pod and attempts 1."""
    jobs, pods = children_by_job(namespace, "jobs"), children_by_job(namespace, "pods")
    for item in items:
        name, uid = item["metadata"]["name"], item["metadata"]["uid"]
        assert len(jobs[name]) == 1, f"{name}: {len(jobs[name])} Jobs"
        assert jobs[name][0]["metadata"]["ownerReferences"][0]["uid"] == uid
        assert len(pods[name]) == 1, f"{name}: {len(pods[name])} training pods"
        assert item["status"]["attempts"] == 1, f"{name}: {item['status']}"


def report(line: str) -> None:
    """Measurements for the record (pytest -s shows them; a failing test shows them too)."""
    print(f"[faults] {line}")


# ---------------------------------------------------------------- 1. API server unreachable


def test_api_unreachable_for_30s_while_the_pod_completes(
    namespace, kubeconfig, api_proxy, operators, tmp_path
):
    """The operator loses the API server for 30 s; meanwhile the job's pod completes and the Job
    controller marks the Job Complete; once the API is back the AxolotlJob says Succeeded.

    Only the operator is cut off: it reaches the API through a loopback TCP proxy, and the proxy resets
    its connections and refuses new ones. The rest of the control plane (apiserver, etcd, scheduler,
    controller-manager, kwok's fake kubelet) keeps running, which is why this is a proxy and not a
    stopped apiserver: the pod has to be able to complete, and the Job controller has to see it, while the
    operator cannot. The test reads the cluster with its own kubeconfig (not through the proxy).
    """
    op = operators("proxied", proxied_kubeconfig(kubeconfig, api_proxy, tmp_path / "proxied.kubeconfig"))
    assert api_proxy.accepted > 0, "the operator does not talk through the proxy"
    apply_yaml(make_axj("cut", HOLD), namespace)
    wait_phase(namespace, "cut", "Running", timeout=60)
    (job,) = children(namespace, "cut", "jobs")
    (pod,) = pods_of(namespace, "cut")
    offset = len(op.log())

    api_proxy.cut()
    cut_at = time.monotonic()
    try:
        assert api_proxy.refuses(), "the proxy still accepts connections after cut()"
        assert api_proxy.resets > 0, "cut() reset no connection: the operator had no watch open?"
        kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, RELEASE)
        wait_for(lambda: job_complete(namespace, "cut"), timeout=CUT_SECONDS - 10, what="the Job Complete")
        failed = re.compile(rf"Request attempt #\d+\S* failed; .*{re.escape(LOOPBACK)}:{api_proxy.port}/")
        wait_for(lambda: failed.search(op.log(), offset), timeout=20, what="the operator's failed requests")
        time.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
        during = get_axj(namespace, "cut")["status"]
        assert during["phase"] == "Running", f"the operator wrote status while cut off: {during}"
        assert job_complete(namespace, "cut")
    finally:
        api_proxy.restore()
    restored_at = time.monotonic()

    obj = wait_phase(namespace, "cut", "Succeeded", timeout=90)
    report(
        f"test 1: cut {restored_at - cut_at:.1f} s; Succeeded {time.monotonic() - restored_at:.1f} s after"
    )
    jobs = children(namespace, "cut", "jobs")
    assert [j["metadata"]["uid"] for j in jobs] == [job["metadata"]["uid"]], "the Job was replaced"
    assert obj["status"]["attempts"] == 1
    assert len(pods_of(namespace, "cut")) == 1
    assert_one_event_per_transition(transition_events(namespace), "cut", "Training", "Succeeded")
    assert op.running(), f"the operator died:\n{op.log()[-3000:]}"


# ---------------------------------------------------------------- 2. SIGKILL while pods complete

COUNT = 20


def test_sigkill_while_twenty_pods_complete_then_restart(namespace, operators):
    op = operators("killed")
    # CPU-only: 20 held pods at once would need more than the 16 fake GPUs.
    apply_yaml([make_axj(f"sk-{i:02d}", HOLD, gpus=0) for i in range(COUNT)], namespace)
    wait_for(all_in_phase(namespace, COUNT, "Running"), timeout=150, interval=0.5, what="20 jobs Running")

    offset = len(op.log())
    first = re.compile(rf"{re.escape(namespace)}/sk-\d+: Succeeded: ")
    kubectl("annotate", "pods", "--all", "-n", namespace, RELEASE)  # all 20 pods complete now
    wait_for(lambda: first.search(op.log(), offset), timeout=60, interval=0.005, what="the first Succeeded")
    assert op.kill() == -9
    at_kill = phases(namespace)
    report(f"test 2: at SIGKILL {dict(at_kill)}")
    assert at_kill["Succeeded"] < COUNT, "the operator finished before it was killed; the test proves nothing"
    wait_for(
        lambda: all(job_complete(namespace, f"sk-{i:02d}") for i in range(COUNT)),
        timeout=60,
        what="all 20 Jobs Complete while the operator is down",
    )
    # Read once the dead operator's last requests have surely been served (the Jobs took longer).
    before = {
        i["metadata"]["name"]
        for i in kubectl_json("get", "axolotljobs", "-n", namespace)["items"]
        if (i.get("status") or {}).get("phase") == "Succeeded"
    }

    started = time.monotonic()
    op.start()
    items = wait_for(
        all_in_phase(namespace, COUNT, "Succeeded"), timeout=120, interval=0.5, what="20 Succeeded"
    )
    report(f"test 2: all {COUNT} Succeeded {time.monotonic() - started:.1f} s after the restart")
    assert_one_job_each(namespace, items)
    events = transition_events(namespace)
    for item in items:
        name = item["metadata"]["name"]
        # Finished after the kill: the restarted operator records the transition exactly once. Finished
        # before: at most once (a kill between the status write and the Event loses the Event).
        required = () if name in before else ("Succeeded",)
        assert_one_event_per_transition(events, name, *required)
    lost = sorted(n for n in before if events[n]["Succeeded"] == 0)
    report(f"test 2: Succeeded before the kill: {len(before)}; of them without a Succeeded Event: {lost}")


# ---------------------------------------------------------------- 3. API Priority and Fairness

JOBS_AT_ONCE = 15


def chart_rbac(helm: Path, release: str, namespace: str) -> list[dict[str, Any]]:
    rendered = subprocess.run(
        [
            str(helm),
            "template",
            release,
            str(ROOT / "charts" / "axolotl-operator"),
            "--namespace",
            namespace,
            "--show-only",
            "templates/rbac.yaml",
            "--show-only",
            "templates/serviceaccount.yaml",
            "--set=webhook.enabled=false",
            "--set=progress.port=0",  # no progress endpoint here: no Role for its certificate Secret
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    assert {o["kind"] for o in objects} == {"ClusterRole", "ClusterRoleBinding", "ServiceAccount"}
    return objects


def throttle(level: str, namespace: str, account: str) -> list[dict[str, Any]]:
    """A priority level with one nominal share, nothing to lend or borrow, and Reject beyond it; a
    FlowSchema sending every request of the operator's ServiceAccount there (before every default one
    but exempt and probes)."""
    plc = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "PriorityLevelConfiguration",
        "metadata": {"name": level},
        "spec": {
            "type": "Limited",
            "limited": {
                "nominalConcurrencyShares": 1,
                "lendablePercent": 0,
                "borrowingLimitPercent": 0,
                "limitResponse": {"type": "Reject"},
            },
        },
    }
    schema = {
        "apiVersion": "flowcontrol.apiserver.k8s.io/v1",
        "kind": "FlowSchema",
        "metadata": {"name": level},
        "spec": {
            "matchingPrecedence": 50,
            "priorityLevelConfiguration": {"name": level},
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [
                {
                    "subjects": [
                        {
                            "kind": "ServiceAccount",
                            "serviceAccount": {"name": account, "namespace": namespace},
                        }
                    ],
                    "resourceRules": [
                        {
                            "verbs": ["*"],
                            "apiGroups": ["*"],
                            "resources": ["*"],
                            "clusterScope": True,
                            "namespaces": ["*"],
                        }
                    ],
                    "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                }
            ],
        },
    }
    return [plc, schema]


def test_flow_control_rejects_the_operator_and_every_job_converges(
    namespace, kubeconfig, helm, operators, tmp_path
):
    suffix = uuid.uuid4().hex[:6]
    rbac = chart_rbac(helm, f"apf{suffix}", namespace)
    level = f"axolotl-faults-{suffix}"
    account = next(o["metadata"]["name"] for o in rbac if o["kind"] == "ServiceAccount")
    cluster_scoped = [o for o in rbac if o["kind"] != "ServiceAccount"] + throttle(level, namespace, account)
    op: OperatorProcess | None = None
    try:
        apply_yaml(rbac, namespace)
        token = kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
        config = kubeconfig_for(kubeconfig, tmp_path / "operator-sa.kubeconfig", token=token)
        applied = apply_yaml(throttle(level, namespace, account))
        schema_uid = next(o["metadata"]["uid"] for o in applied if o["kind"] == "FlowSchema")
        _, port = server_of(kubeconfig)
        # The server classifies the ServiceAccount's requests into our level (APF says so in headers).
        wait_for(
            lambda: (
                response_headers(port, ca_pem(kubeconfig), token).get("x-kubernetes-pf-flowschema-uid")
                == schema_uid
            ),
            timeout=30,
            what=f"the ServiceAccount's requests classified by FlowSchema {level}",
        )
        before = flow_control_counts(level)

        op = operators("throttled", config)
        started = time.monotonic()
        apply_yaml([make_axj(f"apf-{i:02d}") for i in range(JOBS_AT_ONCE)], namespace)
        try:
            items = wait_for(
                all_in_phase(namespace, JOBS_AT_ONCE, "Succeeded"),
                timeout=120,
                interval=0.5,
                what="15 Succeeded",
            )
            stuck: Exception | None = None
        except TimeoutError as exc:
            items, stuck = [], exc
        took = time.monotonic() - started
        after = flow_control_counts(level)
        rejected = after.get("rejected", 0) - before.get("rejected", 0)
        dispatched = after.get("dispatched", 0) - before.get("dispatched", 0)
        seen_429 = len(re.findall(r"\b429\b|TooManyRequests|Too Many Requests", op.log()))
        report(
            f"test 3: level {level} ({after.get('nominal_seats')} nominal seats): "
            f"rejected {rejected:.0f}, dispatched {dispatched:.0f} "
            f"({ {k: v for k, v in after.items() if k.startswith('rejected:')} }); "
            f"429s in the operator's log: {seen_429}; converged: {stuck is None} after {took:.1f} s; "
            f"phases {dict(phases(namespace))}"
        )
        assert dispatched > 0, "no request of the operator went through our priority level"
        assert rejected > 0, f"the API server rejected none of the operator's requests: {after}"
        assert stuck is None, (
            f"{stuck}\nphases {dict(phases(namespace))}; operator log tail:\n{op.log()[-3000:]}"
        )
        assert_one_job_each(namespace, items)
        events = transition_events(namespace)
        for item in items:
            assert_one_event_per_transition(events, item["metadata"]["name"], "Succeeded")
        assert "forbidden" not in op.log().lower(), "the chart's RBAC is not enough"
    finally:
        if op is not None and op.running():
            op.stop()  # before its RBAC goes
        for obj in reversed(cluster_scoped):
            kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], "--ignore-not-found", check=False)
        kubectl("delete", "serviceaccount", account, "-n", namespace, "--ignore-not-found", check=False)
    assert not kubectl("get", "flowschema", level, "--ignore-not-found", "-o", "name")


# ---------------------------------------------------------------- 4. 410 Gone: Kopf relists

WATCHED = {  # what the operator watches, as Kopf asks for it (cluster-wide; Kopf filters labels itself)
    "pods.v1": "/api/v1/pods",
    "jobs.v1.batch": "/apis/batch/v1/jobs",
    "axolotljobs.v1alpha1.axolotl.ai": "/apis/axolotl.ai/v1alpha1/axolotljobs",
}


def operator_phase_gauge(op: OperatorProcess) -> dict[str, float]:
    return {
        labels["phase"]: value
        for labels, value in metric_samples(
            http_get(f"http://{LOOPBACK}:{op.metrics_port}/metrics"), "axolotl_operator_jobs"
        )
        if value
    }


def test_compaction_gone_watch_relists_and_statuses_are_right(
    namespace, kubeconfig, api_proxy, operators, tmp_path
):
    """Kopf resumes a broken watch from the last resourceVersion it saw and lists again only when the
    server answers 410 Gone. Here the operator is cut off (proxy), pods complete, one AxolotlJob is
    deleted and another created, etcd is compacted at its current revision, and only then may the
    operator reconnect: every watch it resumes gets 410, it relists, and the statuses come out right."""
    etcd = Etcd(ready_info(kubeconfig)["etcd"])
    # The operator's phase gauge is compared with the cluster below: no other test's AxolotlJobs around.
    wait_for(
        lambda: (
            {i["metadata"]["namespace"] for i in kubectl_json("get", "axolotljobs", "-A")["items"]}
            <= {namespace}
        ),
        timeout=120,
        what="earlier tests' AxolotlJobs gone",
    )
    # A resync every 2 s (300 s by default) so the check of the operator's own view below is quick.
    op = operators(
        "relist",
        proxied_kubeconfig(kubeconfig, api_proxy, tmp_path / "proxied.kubeconfig"),
        verbose=True,
        resync=2,
    )
    knobs = {**HOLD, "kwok.axolotl.ai/termination-message": json.dumps(SUMMARY)}
    finishing, gone, new = ["relist-a", "relist-b"], "relist-gone", "relist-new"
    apply_yaml([make_axj(n, knobs) for n in [*finishing, gone]], namespace)
    for name in [*finishing, gone]:
        wait_phase(namespace, name, "Running", timeout=60)
    job_uids = {n: children(namespace, n, "jobs")[0]["metadata"]["uid"] for n in finishing}
    # Live progress as a trainer's report leaves it mid-training: the final status must replace it.
    stale = {"step": 40, "totalSteps": 500, "percent": 8, "loss": 2.5, "etaSeconds": 3600}
    for name in finishing:
        patch = {
            "status": {"progress": {**stale, "updatedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
        }
        kubectl(
            "patch",
            "axolotljob",
            name,
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(patch),
        )
    wait_for(lambda: operator_phase_gauge(op) == {"Running": 3.0}, timeout=30, what="the operator's gauge")
    offset = len(op.log())

    api_proxy.cut()
    try:
        at_cut = etcd.revision()  # >= every resourceVersion the operator can have seen
        for name in finishing:
            (pod,) = pods_of(namespace, name)
            kubectl("annotate", "pod", pod["metadata"]["name"], "-n", namespace, RELEASE)
        kubectl("delete", "axolotljob", gone, "-n", namespace, "--wait=false")
        apply_yaml(make_axj(new, {"kwok.axolotl.ai/termination-message": json.dumps(SUMMARY)}), namespace)
        for name in finishing:
            wait_for(lambda name=name: job_complete(namespace, name), timeout=30, what=f"job/{name} Complete")
        wait_for(
            lambda: (
                not kubectl("get", "axolotljob", gone, "-n", namespace, "--ignore-not-found", "-o", "name")
            ),
            timeout=30,
            what=f"{gone} deleted",
        )
        revision = etcd.revision()
        assert revision > at_cut + 1, f"nothing changed during the cut ({at_cut} -> {revision})"
        etcd.compact(revision)
        # The precondition, from the server itself: a watch resumed from before the cut is Gone.
        for resource, path in WATCHED.items():
            events = raw_watch(path, at_cut)
            assert events, f"{resource}: the watch from {at_cut} got nothing, not 410"
            assert (events[0]["type"], events[0]["object"].get("code")) == ("ERROR", 410), (resource, events)
        assert get_axj(namespace, finishing[0])["status"]["phase"] == "Running"  # the operator saw nothing
        assert "status" not in get_axj(namespace, new)
    finally:
        api_proxy.restore()
    restored_at = time.monotonic()

    done = {n: wait_phase(namespace, n, "Succeeded", timeout=90) for n in [*finishing, new]}
    report(
        f"test 4: compacted at {revision} (cut at {at_cut}); Succeeded "
        f"{time.monotonic() - restored_at:.1f} s after the restore"
    )
    log = op.log()[offset:]
    for resource in WATCHED:
        line = f"Restarting the watch-stream for {resource} cluster-wide."
        assert line in log, f"no relist of {resource} after the 410 (expected Kopf's '{line}')"

    def with_progress(name: str) -> dict[str, Any] | None:  # written right after the phase, separately
        obj = get_axj(namespace, name)
        return obj if obj["status"].get("progress") else None

    final = [wait_for(lambda n=name: with_progress(n), what=f"the final progress of {name}") for name in done]
    assert_one_job_each(namespace, final)
    jobs, events = children_by_job(namespace, "jobs"), transition_events(namespace)
    for obj in final:
        name, status = obj["metadata"]["name"], obj["status"]
        assert status["phase"] == "Succeeded", f"{name}: {status}"
        assert status["progress"] == {
            "step": 500,
            "totalSteps": 500,
            "percent": 100,
            "loss": 0.8731,
            "etaSeconds": 0,
            "updatedAt": status["completionTime"],
        }, f"{name}: stale progress {status['progress']}"
        assert "500/500 steps" in status["message"], status["message"]
        assert next(c for c in status["conditions"] if c["type"] == "Running")["status"] == "False"
        if name in job_uids:
            assert jobs[name][0]["metadata"]["uid"] == job_uids[name], f"{name}: the Job was replaced"
        assert_one_event_per_transition(
            events, name, "Succeeded", *(("Training",) if name in job_uids else ())
        )
    assert not kubectl("get", "axolotljob", gone, "-n", namespace, "--ignore-not-found", "-o", "name")
    assert op.running(), f"the operator died:\n{op.log()[-3000:]}"

    # The operator's own view: its phase gauge counts what exists. The AxolotlJob deleted during the cut
    # has no DELETED event to come (the relist only lists what exists); the operator's resync lists the
    # AxolotlJobs and forgets the ones that are gone.
    truth = {"Succeeded": 3.0}
    wait_for(lambda: operator_phase_gauge(op).get("Succeeded") == 3.0, timeout=30, what="gauge Succeeded 3")
    assert operator_phase_gauge(op) == truth, (
        f"the operator's axolotl_operator_jobs gauge {operator_phase_gauge(op)} != the cluster's {truth}: "
        f"it still counts {namespace}/{gone}, deleted while it was cut off"
    )
