"""The watch cache: a status sync fed by the watches reads nothing from the API server and computes the
same status as one that reads everything; an older delivery never replaces a newer object; deleted and
orphaned objects leave it."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from axolotl_operator.constants import CONTROLLER_UID_LABEL, JOB_LABEL
from axolotl_operator.controller import Operator
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.watch_cache import LAST_APPLIED, WatchCache, slim
from fake_kube import FakeKube
from test_controller import NAME, NS, kube_job, settle, status_of, stored_axj

READS = ("get_axolotljob", "get_job", "list_pods")


def running_pod(job: dict[str, Any], name: str = f"{NAME}-0-abcde") -> dict[str, Any]:
    labels = {CONTROLLER_UID_LABEL: job["metadata"]["uid"], JOB_LABEL: NAME}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"nodeName": "gpu-node-1", "containers": [{"name": "trainer"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True"}],
            "containerStatuses": [{"name": "trainer", "ready": True, "state": {"running": {}}}],
        },
    }


def running_job(kube: FakeKube, axj: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    job = kube.put({**kube_job(axj), "status": {"active": 1, "ready": 1}})
    return job, kube.put(running_pod(job))


@pytest.fixture
def operators(kube):
    made: list[Operator] = []

    def make() -> Operator:
        options = {"workers": 1, "resync_seconds": 0, "retry_base_delay": 0.001, "retry_max_delay": 0.01}
        operator = Operator(OperatorSettings(), kube, **options).start()
        made.append(operator)
        return operator

    yield make
    for operator in made:
        operator.stop()


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def feed(cache: WatchCache, *objects: dict[str, Any]) -> None:
    """Deliver objects as the index handlers do, then as the first handler does."""
    for obj in objects:
        {"AxolotlJob": cache.put_axolotljob, "Job": cache.put_job, "Pod": cache.put_pod}[obj["kind"]](obj)
    cache.mark_ready()


def test_a_sync_fed_by_the_watches_reads_nothing_and_agrees_with_one_that_reads_everything(kube, operators):
    axj = stored_axj(kube)
    job, pod = running_job(kube, axj)
    reading = operators()  # never marked ready: every sync reads the API server
    reading.enqueue(NS, NAME)
    settle(reading)
    read_status = status_of(kube)
    assert (read_status["phase"], read_status["reason"]) == ("Running", "Training")
    assert {c for c in kube.calls if c in READS} == set(READS)

    # A second operator sees the same objects only through its watches: it must reach the same status
    # from a blank one, and ask the API server nothing.
    blank = kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)
    blank = {**blank, "status": {}}
    kube.put(blank)
    cached = operators()
    feed(cached.cache, kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME), job, pod)
    kube.calls.clear()
    cached.enqueue(NS, NAME)
    settle(cached)
    assert [c for c in kube.calls if c in READS] == []
    written = status_of(kube)
    for key in ("phase", "reason", "message", "podNames"):
        assert written.get(key) == read_status.get(key), key


def test_an_older_delivery_after_the_operators_own_write_announces_nothing_twice(kube, operators):
    axj = stored_axj(kube)
    job, pod = running_job(kube, axj)
    operator = operators()
    feed(operator.cache, axj, job, pod)
    operator.enqueue(NS, NAME)
    settle(operator)
    applies, events = len(kube.applies), len(kube.events)
    assert events >= 1  # Running was announced
    # The watch now delivers the version from before the write (it was in flight): the cache keeps the
    # write's answer, so the next sync sees the status it wrote and writes and announces nothing.
    operator.cache.put_axolotljob(axj)
    operator.enqueue(NS, NAME)
    settle(operator)
    assert (len(kube.applies), len(kube.events)) == (applies, events)


def test_a_newer_object_replaces_the_kept_one_and_a_namesake_always_does():
    cache = WatchCache(FakeKube())
    old = {"kind": "Job", "metadata": {"name": "a", "namespace": NS, "uid": "u1", "resourceVersion": "9"}}
    cache.put_job(old)
    cache.put_job({**old, "metadata": {**old["metadata"], "resourceVersion": "10"}, "spec": {"x": 1}})
    cache.mark_ready()
    assert cache.get_job(NS, "a")["spec"] == {"x": 1}
    cache.put_job(old)  # older: ignored
    assert cache.get_job(NS, "a")["metadata"]["resourceVersion"] == "10"
    namesake = {**old, "metadata": {**old["metadata"], "uid": "u2", "resourceVersion": "3"}}
    cache.put_job(namesake)  # another object of that name: its versions are not comparable
    assert cache.get_job(NS, "a")["metadata"]["uid"] == "u2"
    cache.drop_job(old)  # the deletion of the first object leaves the namesake
    assert cache.get_job(NS, "a")["metadata"]["uid"] == "u2"
    cache.drop_job(namesake)
    assert cache.sizes()["jobs"] == 0


def test_pods_are_kept_per_job_and_orphans_are_pruned():
    kube = FakeKube()
    cache = WatchCache(kube)
    job = {"kind": "Job", "metadata": {"name": NAME, "namespace": NS, "uid": "job-1", "resourceVersion": "1"}}
    first, second = running_pod(job, "p0"), running_pod(job, "p1")
    orphan = running_pod({"metadata": {"uid": "job-gone"}}, "p2")
    unlabelled = {"kind": "Pod", "metadata": {"name": "p3", "namespace": NS}}
    feed(cache, job, first, second, orphan, unlabelled)
    assert sorted(p["metadata"]["name"] for p in cache.job_pods(NS, "job-1")) == ["p0", "p1"]
    assert cache.sizes() == {"axolotljobs": 0, "jobs": 1, "pods": 3}
    assert cache.prune_pods() == 1  # the pods of a Job no longer kept (a deletion the watch missed)
    cache.drop_pod(first)
    assert [p["metadata"]["name"] for p in cache.job_pods(NS, "job-1")] == ["p1"]
    assert kube.calls == []  # ready: nothing was asked


def test_before_the_watches_listed_everything_reads_go_to_the_api_server():
    kube = FakeKube()
    cache = WatchCache(kube)
    cache.put_job(
        {"kind": "Job", "metadata": {"name": "a", "namespace": NS, "uid": "u", "resourceVersion": "1"}}
    )
    assert cache.get_job(NS, "a") is None  # the fake API server has no such Job: not the cached one
    assert cache.job_pods(NS, "u") == []
    assert cache.get_axolotljob(NS, "a") is None
    assert kube.calls == ["get_job", "list_pods", "get_axolotljob"]


def test_kept_objects_lose_only_the_api_servers_bookkeeping():
    obj = {
        "kind": "AxolotlJob",
        "metadata": {
            "name": "a",
            "managedFields": [{"manager": "kubectl"}],
            "annotations": {LAST_APPLIED: "{...}", "keep": "me"},
        },
        "spec": {"x": 1},
    }
    before = copy.deepcopy(obj)
    kept = slim(obj)
    assert kept == {
        "kind": "AxolotlJob",
        "metadata": {"name": "a", "annotations": {"keep": "me"}},
        "spec": {"x": 1},
    }
    assert obj == before  # the delivered object is not changed


@pytest.mark.parametrize("ended", ["Complete", "SuccessCriteriaMet"])
def test_a_finished_jobs_pods_are_read_afresh_for_the_final_summary(kube, operators, ended):
    axj = stored_axj(kube)
    complete = {"type": ended, "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}
    job = kube.put({**kube_job(axj), "status": {"succeeded": 1, "conditions": [complete]}})
    stale = running_pod(job)  # the pod watch has not delivered the pod's exit yet
    summary = {"outcome": "succeeded", "exitCode": 0, "steps": 12, "totalSteps": 12, "finalLoss": 0.5}
    exited = {"name": "trainer", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    exited["state"]["terminated"]["message"] = json.dumps(summary)
    kube.put({**stale, "status": {"phase": "Succeeded", "containerStatuses": [exited]}})
    operator = operators()
    feed(operator.cache, axj, job, stale)
    kube.calls.clear()
    operator.enqueue(NS, NAME)
    settle(operator)
    assert [c for c in kube.calls if c in READS] == ["list_pods"]
    status = status_of(kube)
    assert status["phase"] == "Succeeded"
    assert status["progress"]["step"] == 12
