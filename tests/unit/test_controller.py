"""The Operator (the shell) against an in-memory API: children, adoption, a foreign Job, a Job deleted
by its TTL, status retried after API errors, progress rate-limited under its own field manager."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from axolotl_operator.api.status import PROGRESS_FIELD_MANAGER, STATUS_FIELD_MANAGER
from axolotl_operator.controller import Operator, Stopped, Waits
from axolotl_operator.kube import ApiError
from axolotl_operator.progress import parse_report
from axolotl_operator.settings import OperatorSettings
from conftest import manifest
from fake_kube import FakeKube

NS, NAME = "ml", "demo"


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def make_operator(kube):
    made: list[Operator] = []

    def make(**kwargs: Any) -> Operator:
        options = {"workers": 2, "resync_seconds": 0, "retry_base_delay": 0.001, "retry_max_delay": 0.01}
        operator = Operator(OperatorSettings(), kube, **{**options, **kwargs}).start()
        made.append(operator)
        return operator

    yield make
    for operator in made:
        operator.stop()


def stored_axj(kube: FakeKube, status: dict[str, Any] | None = None) -> dict[str, Any]:
    obj = manifest()
    obj["metadata"]["generation"] = 1
    if status is not None:
        obj["status"] = status
    return kube.put(obj)


def status_of(kube: FakeKube) -> dict[str, Any]:
    return (kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME) or {}).get("status") or {}


def settle(operator: Operator) -> None:
    assert operator.queue.drain(10), "the status queue did not settle"


def test_reconcile_creates_the_children_and_the_status_once(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    for kind, name in (("ConfigMap", "demo-config"), ("PersistentVolumeClaim", "demo-data")):
        assert kube.find("v1", kind, NS, name) is not None
    job = kube.find("batch/v1", "Job", NS, NAME)
    assert job["metadata"]["ownerReferences"][0]["uid"] == axj["metadata"]["uid"]
    status = status_of(kube)
    assert (status["phase"], status["reason"]) == ("Pending", "Starting")
    assert {manager for _, manager, _ in kube.applies} == {STATUS_FIELD_MANAGER}
    # Reconciling again changes nothing: no second Job, no second status write, no second Event.
    applies, events = len(kube.applies), len(kube.events)
    operator.reconcile(kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME), NS, NAME)
    settle(operator)
    assert (len(kube.applies), len(kube.events)) == (applies, events)
    assert sum(1 for key in kube.objects if key[1] == "Job") == 1


def planted(kind: str, name: str, **meta: Any) -> dict[str, Any]:
    api = "v1"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, **meta},
        "data": {"x": "1"},
    }


def ours(uid: str) -> dict[str, Any]:
    """The labels and annotation the operator puts on a child it made for AxolotlJob `uid`."""
    labels = {"axolotl.ai/job": NAME, "app.kubernetes.io/managed-by": "axolotl-operator"}
    return {"labels": labels, "annotations": {"axolotl.ai/owner-uid": uid}}


@pytest.mark.parametrize("kind, name", [("ConfigMap", "demo-config"), ("PersistentVolumeClaim", "demo-data")])
def test_an_object_planted_under_a_childs_name_is_never_taken_over(kube, make_operator, kind, name):
    operator = make_operator()
    # Even with our labels: only the annotation with this AxolotlJob's uid (or our owner reference) proves it.
    before = kube.put(planted(kind, name, labels=ours("someone-else")["labels"]))
    axj = stored_axj(kube)
    with pytest.raises(Waits, match="left untouched"):
        operator.reconcile(axj, NS, NAME)
    settle(operator)
    assert kube.find("v1", kind, NS, name) == before  # not adopted, not patched
    assert kube.find("batch/v1", "Job", NS, NAME) is None  # no pod would mount it
    status = status_of(kube)
    assert (status["phase"], status["reason"]) == ("Pending", "ChildNameConflict")
    assert f"{kind} {name}" in status["message"]
    if kind == "PersistentVolumeClaim":
        assert "spec.storage.existingClaim: demo-data" in status["message"]
    assert ("demo", "Warning", "ChildNameConflict") in kube.events
    # The user removes it: the next reconcile creates the child and the job goes on.
    kube.delete("v1", kind, NS, name)
    operator.reconcile(kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME), NS, NAME)
    settle(operator)
    assert status_of(kube)["reason"] == "Starting"


def test_labels_and_the_public_uid_are_no_proof_of_ownership(kube, make_operator):
    # Anyone who can read the AxolotlJob can copy its uid into a planted object's annotation.
    operator = make_operator()
    axj = stored_axj(kube)
    forged = kube.put(planted("ConfigMap", "demo-config", **ours(axj["metadata"]["uid"])))
    with pytest.raises(Waits, match="left untouched"):
        operator.reconcile(axj, NS, NAME)
    assert kube.find("v1", "ConfigMap", NS, "demo-config") == forged
    assert kube.find("batch/v1", "Job", NS, NAME) is None


def test_the_claim_is_known_by_the_uid_recorded_when_it_was_created(kube, make_operator):
    first = make_operator()
    axj = stored_axj(kube)
    first.reconcile(axj, NS, NAME)
    claim = kube.find("v1", "PersistentVolumeClaim", NS, "demo-data")
    stored = kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)
    assert stored["metadata"]["annotations"]["axolotl.ai/claim-uid"] == claim["metadata"]["uid"]
    # A restarted operator (nothing in memory) recognises it from the annotation.
    second = make_operator()
    second.reconcile(stored, NS, NAME)
    settle(second)
    assert status_of(kube)["reason"] == "Starting"


def test_a_claim_from_before_uids_were_recorded_counts_only_with_the_jobs_own_job(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    uid = axj["metadata"]["uid"]
    claim = kube.put(planted("PersistentVolumeClaim", "demo-data", **ours(uid)))
    with pytest.raises(Waits, match="left untouched"):
        operator.reconcile(axj, NS, NAME)  # no Job of this AxolotlJob yet: could be planted
    kube.put(kube_job(axj))  # an older operator made the claim, then this job's Job that mounts it
    operator._unblock((NS, NAME))
    operator.reconcile(axj, NS, NAME)
    stored = kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)
    assert stored["metadata"]["annotations"]["axolotl.ai/claim-uid"] == claim["metadata"]["uid"]


def test_a_claim_made_just_before_the_operator_was_killed_is_its_own_after_restart(kube, make_operator):
    """Killed between creating the claim and recording its uid: the intent recorded before the create
    proves it (a claim made for this job since then)."""
    first = make_operator()
    axj = stored_axj(kube)
    first.reconcile(axj, NS, NAME)
    creates = [i for i, call in enumerate(kube.calls) if call == "create"]
    patches = [i for i, call in enumerate(kube.calls) if call == "merge_patch"]
    assert patches[0] < creates[1], "the intent is recorded before the claim (the second child) is created"
    # The state a kill right after the claim's create leaves: the intent, the claim, no uid, no Job.
    stored = kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)
    stored["metadata"]["annotations"]["axolotl.ai/claim-uid"] = "pending-since=2026-12-02T12:00:00Z"
    stored = kube.put(stored)
    claim = kube.find("v1", "PersistentVolumeClaim", NS, "demo-data")
    claim["metadata"]["creationTimestamp"] = "2026-12-02T12:00:01Z"
    claim = kube.put(claim)
    kube.delete("batch/v1", "Job", NS, NAME)
    second = make_operator()
    second.reconcile(stored, NS, NAME)
    recorded = kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)["metadata"]["annotations"]
    assert recorded["axolotl.ai/claim-uid"] == claim["metadata"]["uid"]
    assert kube.find("batch/v1", "Job", NS, NAME) is not None


def test_the_claims_uid_is_written_after_the_job_is_created_and_survives_a_failed_job_create(
    kube, make_operator, monkeypatch
):
    """The uid is written once the Job exists (one request less before it); when the Job's create fails,
    a restarted operator still proves the claim by the intent and writes its uid."""
    first = make_operator()
    first.reconcile(stored_axj(kube), NS, NAME)
    steps = [call for call in kube.calls if call in ("create", "merge_patch")]
    assert steps == ["create", "merge_patch", "create", "create", "merge_patch"]  # CM, intent, PVC, Job, uid

    kube.delete("batch/v1", "Job", NS, NAME)
    kube.delete("v1", "PersistentVolumeClaim", NS, "demo-data")
    kube.delete("v1", "ConfigMap", NS, "demo-config")
    kube.delete("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)
    axj = stored_axj(kube)  # a new AxolotlJob of that name
    create = kube.create

    def no_job(manifest: dict[str, Any]) -> Any:
        if manifest["kind"] == "Job":
            raise ApiError(500, "Injected", {"message": "the API server broke down"})
        return create(manifest)

    monkeypatch.setattr(kube, "create", no_job)
    with pytest.raises(ApiError):
        make_operator().reconcile(axj, NS, NAME)
    stored = kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)
    intent = stored["metadata"]["annotations"]["axolotl.ai/claim-uid"]
    assert intent.startswith("pending-since=")  # the uid was not written: the Job does not exist
    claim = kube.find("v1", "PersistentVolumeClaim", NS, "demo-data")
    claim["metadata"]["creationTimestamp"] = intent.removeprefix("pending-since=")
    claim = kube.put(claim)
    monkeypatch.setattr(kube, "create", create)
    make_operator().reconcile(stored, NS, NAME)  # restarted: nothing in memory
    recorded = kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)["metadata"]["annotations"]
    assert recorded["axolotl.ai/claim-uid"] == claim["metadata"]["uid"]
    assert kube.find("batch/v1", "Job", NS, NAME) is not None


def test_a_claim_planted_before_the_intent_is_not_taken(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    axj["metadata"]["annotations"] = {"axolotl.ai/claim-uid": "pending-since=2026-12-02T12:00:00Z"}
    axj = kube.put(axj)
    early = planted("PersistentVolumeClaim", "demo-data", **ours(axj["metadata"]["uid"]))
    early["metadata"]["creationTimestamp"] = "2026-12-02T11:58:00Z"  # two minutes before the intent
    kube.put(early)
    with pytest.raises(Waits, match="left untouched"):
        operator.reconcile(axj, NS, NAME)
    assert kube.find("batch/v1", "Job", NS, NAME) is None


def test_an_invalid_edit_of_a_running_job_does_not_fail_it(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    kube.merge_patch(
        "axolotl.ai/v1alpha1",
        "AxolotlJob",
        NS,
        NAME,
        {"spec": {"queueName": "bad queue!"}, "metadata": {"generation": 2}},
    )
    operator.enqueue(NS, NAME)
    settle(operator)
    status = status_of(kube)
    assert (status["phase"], status["reason"]) == ("Pending", "Starting")  # as its Job says
    assert "not applied" in status["message"] and "spec.queueName" in status["message"]
    assert status["jobName"] == NAME and status["claimName"] == "demo-data"


def test_a_namesakes_leftovers_never_reach_a_new_job_of_the_same_name(kube, make_operator):
    operator = make_operator()
    old = stored_axj(kube)
    operator.seen(NS, NAME, "Running", old["metadata"]["uid"])
    stale = report(900, second=30)
    operator.writer.offer(dataclasses.replace(stale, job_uid=old["metadata"]["uid"]))  # not yet written
    kube.delete("axolotl.ai/v1alpha1", "AxolotlJob", NS, NAME)
    new = stored_axj(kube)  # re-created: another uid
    operator.seen(NS, NAME, None, new["metadata"]["uid"])
    operator.forget(NS, NAME, old["metadata"]["uid"])  # the old one's DELETED event, arriving late
    with operator._guard:
        assert operator._uids[(NS, NAME)] == new["metadata"]["uid"]  # not forgotten
    operator.reconcile(new, NS, NAME)
    settle(operator)
    assert "progress" not in status_of(kube) and 900 not in progress_writes(kube)


def test_a_child_the_api_server_refuses_fails_the_job_without_retrying(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    kube.fail("create", 422)
    with pytest.raises(Stopped, match="refused"):
        operator.reconcile(axj, NS, NAME)
    settle(operator)
    status = status_of(kube)
    assert (status["phase"], status["reason"]) == ("Failed", "CreateRejected")
    assert "injected 422" in status["message"]


def test_a_job_of_a_deleted_namesake_is_waited_out(kube, make_operator):
    operator = make_operator()
    foreign_owner = {"apiVersion": "axolotl.ai/v1alpha1", "kind": "AxolotlJob", "name": NAME, "uid": "old"}
    kube.put(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": NAME,
                "namespace": NS,
                "ownerReferences": [{**foreign_owner, "controller": True}],
            },
        }
    )
    axj = stored_axj(kube)
    with pytest.raises(Waits, match="garbage-collected"):
        operator.reconcile(axj, NS, NAME)
    settle(operator)
    status = status_of(kube)
    assert (status["phase"], status["reason"]) == ("Pending", "WaitingForCleanup")
    assert "uid old" in status["message"]
    assert kube.find("batch/v1", "Job", NS, NAME)["metadata"]["ownerReferences"][0]["uid"] == "old"


def test_a_finished_job_whose_job_was_deleted_by_its_ttl_is_not_trained_again(kube, make_operator):
    operator = make_operator()
    finished = {"phase": "Succeeded", "reason": "Succeeded", "message": "training finished", "attempts": 1}
    axj = stored_axj(kube, finished)
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    assert kube.find("batch/v1", "Job", NS, NAME) is None
    assert "create" not in kube.calls
    status = status_of(kube)
    assert status["phase"] == "Succeeded"
    created = next(c for c in status["conditions"] if c["type"] == "Created")
    assert created["reason"] == "JobDeleted"


@pytest.mark.parametrize("method, code", [("apply_status", 500), ("get_axolotljob", 429), ("list_pods", 503)])
def test_status_is_retried_after_api_errors_until_written(kube, make_operator, method, code):
    operator = make_operator()
    axj = stored_axj(kube)
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    kube.delete("batch/v1", "Job", NS, NAME)  # the Job vanished: the status must say so
    kube.put({**kube_job(axj), "status": {"conditions": [cond("Complete")]}})
    kube.fail(method, code, times=4)
    operator.enqueue(NS, NAME)
    settle(operator)
    assert status_of(kube)["phase"] == "Succeeded"
    assert kube.calls.count(method) >= 5  # four refused, then the one that worked


def kube_job(axj: dict[str, Any]) -> dict[str, Any]:
    owner = {"apiVersion": "axolotl.ai/v1alpha1", "kind": "AxolotlJob", "name": NAME}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "ownerReferences": [{**owner, "uid": axj["metadata"]["uid"], "controller": True}],
        },
        "spec": {"parallelism": 1},
    }


def cond(type_: str) -> dict[str, str]:
    return {"type": type_, "status": "True", "lastTransitionTime": "2026-12-01T00:00:00Z"}


def report(step: int, final: bool = False, second: int = 0) -> Any:
    body = {"jobName": NAME, "jobNamespace": NS, "step": step, "totalSteps": 100, "final": final}
    body["timestamp"] = f"2026-12-01T00:00:{second:02d}Z"
    return parse_report(json.dumps(body), datetime(2026, 12, 2, tzinfo=UTC))


def progress_writes(kube: FakeKube) -> list[int]:
    return [
        status["progress"]["step"] for _, manager, status in kube.applies if manager == PROGRESS_FIELD_MANAGER
    ]


def wait_until(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_progress_is_written_by_its_own_manager_at_most_once_per_interval(kube, make_operator):
    operator = make_operator()
    operator.writer.progress_interval = 3600  # one write per hour: later reports wait, the final does not
    axj = stored_axj(kube)
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    operator.accept_progress(report(10, second=1))
    settle(operator)
    assert progress_writes(kube) == [10]
    reads = kube.calls.count("get_axolotljob")
    operator.accept_progress(report(20, second=2))
    wait_until(lambda: kube.calls.count("get_axolotljob") > reads and len(operator.queue) == 1, "the sync")
    assert progress_writes(kube) == [10]  # held back: the key waits for the window to open
    operator.accept_progress(report(40, final=True, second=4))
    settle(operator)
    assert progress_writes(kube) == [10, 40]
    assert status_of(kube)["progress"]["etaSeconds"] == 0
    assert status_of(kube)["phase"] == "Pending"  # progress leaves the operator's fields alone
    assert {manager for _, manager, _ in kube.applies} == {STATUS_FIELD_MANAGER, PROGRESS_FIELD_MANAGER}


def offer_and_sync(kube: FakeKube, operator: Operator, report: Any) -> None:
    """Hand one report to the operator and wait for the status sync it triggers to finish."""
    reads = kube.calls.count("get_axolotljob")
    operator.accept_progress(report)
    wait_until(
        lambda: kube.calls.count("get_axolotljob") > reads and not operator.queue._processing, "the sync"
    )


def test_a_flood_of_final_reports_gives_at_most_two_progress_writes(kube, make_operator):
    """A final report skips the wait at most once per interval; more finals (a broken or hostile sender)
    wait for the window like any report, and the newest of them is written when it opens."""
    operator = make_operator()
    operator.writer.progress_interval = 3600
    axj = stored_axj(kube)
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    for step in range(1, 51):
        offer_and_sync(kube, operator, report(step, final=True, second=step))
    assert progress_writes(kube) == [1, 2]  # the first report, then one final at once; 48 wait
    operator.writer.progress_interval = 0  # the window opens
    operator.enqueue(NS, NAME)
    settle(operator)
    assert progress_writes(kube) == [1, 2, 50]


def test_a_report_after_the_job_finished_is_dropped(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube, {"phase": "Succeeded", "reason": "Succeeded", "progress": {"step": 100}})
    kube.put({**kube_job(axj), "status": {"conditions": [cond("Complete")]}})
    operator.accept_progress(report(50, second=9))
    settle(operator)
    assert status_of(kube)["progress"]["step"] == 100
    assert 50 not in progress_writes(kube)


def test_the_resync_lists_forgets_the_gone_and_revisits_the_unfinished(kube, make_operator):
    from axolotl_operator import metrics

    stored_axj(kube)  # listed, never seen by a watch event: picked up
    operator = make_operator(resync_seconds=0.01)
    metrics.observe_job(NS, "deleted-while-away", {"phase": "Running"})
    operator.seen(NS, "deleted-while-away", "Running")  # seen once, then gone without a DELETED event
    wait_until(lambda: kube.calls.count("get_axolotljob") >= 3, "three resyncs of the listed job")
    with operator._guard:
        known = set(operator._phases)
    assert known == {(NS, NAME)}
    assert (NS, "deleted-while-away") not in metrics._phases  # its gauge series are dropped
    assert status_of(kube)["phase"] == "Pending"  # the job no event announced got its status


def test_an_event_refused_for_now_is_sent_again_after_the_status(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    kube.fail("event", 429, times=3)  # the API server throttles the Event posts
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    assert ("demo", "Normal", "Starting") in kube.events
    assert kube.calls.count("event") == 4  # three refused, then the one that landed
    assert len([a for a in kube.applies if a[1] == STATUS_FIELD_MANAGER]) == 1  # the status once


def test_an_event_refused_for_good_is_dropped_not_retried_forever(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    kube.fail("event", 403)  # e.g. the namespace is being deleted
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    assert kube.events == [] and kube.calls.count("event") == 1
    assert status_of(kube)["reason"] == "Starting"


def test_a_checkpoint_reported_by_a_stopped_pod_reaches_the_suspended_message(kube, make_operator):
    """The stopped pod's last report (checkpointStep) may be written after the last pod event: the writer
    computes the status again so the message names the step without waiting for the resync."""
    operator = make_operator()
    obj = manifest()
    obj["metadata"]["generation"] = 1
    obj["spec"]["suspend"] = True
    axj = kube.put(obj)
    operator.reconcile(axj, NS, NAME)
    settle(operator)
    assert status_of(kube)["phase"] == "Suspended"
    body = {
        "jobName": NAME,
        "jobNamespace": NS,
        "step": 42,
        "checkpointStep": 42,
        "final": False,
        "timestamp": "2026-12-01T00:00:05Z",
    }
    operator.accept_progress(parse_report(json.dumps(body), datetime(2026, 12, 2, tzinfo=UTC)))
    settle(operator)
    assert status_of(kube)["progress"]["checkpointStep"] == 42
    assert status_of(kube)["message"].endswith("checkpoint saved at step 42")


def test_each_generation_is_reconciled_once_from_the_watch(kube, make_operator):
    """The reconcile queue: an AxolotlJob event reconciles its generation once; the same generation
    again (a status write, a label) does nothing; an edit (a new generation) reconciles again."""
    operator = make_operator()
    axj = stored_axj(kube)
    operator.cache.put_axolotljob(axj)
    operator.cache.mark_ready()
    uid = axj["metadata"]["uid"]
    operator.changed(NS, NAME, uid, 1)
    assert operator.reconciles.drain(10)
    assert kube.find("batch/v1", "Job", NS, NAME) is not None
    creates = kube.calls.count("create")
    operator.changed(NS, NAME, uid, 1)
    assert operator.reconciles.drain(10)
    assert kube.calls.count("create") == creates  # this generation is done
    edited = {**axj, "metadata": {**axj["metadata"], "generation": 2, "resourceVersion": "999"}}
    operator.cache.put_axolotljob(edited)
    operator.changed(NS, NAME, uid, 2)
    assert operator.reconciles.drain(10)
    assert kube.calls.count("create") > creates


def test_a_waiting_reconcile_runs_again_and_a_stopped_one_waits_for_the_spec(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    kube.put(planted("ConfigMap", "demo-config"))  # a foreign object under a child's name
    operator.cache.put_axolotljob(axj)
    operator.cache.mark_ready()
    operator.changed(NS, NAME, axj["metadata"]["uid"], 1)
    wait_until(lambda: status_of(kube).get("reason") == "ChildNameConflict", "the conflict in the status")
    kube.delete("v1", "ConfigMap", NS, "demo-config")  # the user removes it: the next look creates ours
    wait_until(lambda: kube.find("batch/v1", "Job", NS, NAME) is not None, "the Job on the next look")
    assert kube.find("v1", "ConfigMap", NS, "demo-config")["metadata"]["ownerReferences"]

    # An invalid spec stops the reconcile: no retry loop, until the spec changes.
    bad = manifest({"load_in_4bit": True, "adapter": None})
    bad["metadata"] = {**bad["metadata"], "name": "bad", "generation": 1}
    bad = kube.put(bad)
    operator.cache.put_axolotljob(bad)
    operator.changed(NS, "bad", bad["metadata"]["uid"], 1)
    wait_until(lambda: status_of_named(kube, "bad").get("reason") == "InvalidSpec", "InvalidSpec")
    # Nothing is queued: a retry loop (even with backoff, capped at 0.01 s here) would never drain.
    assert operator.reconciles.drain(10) and len(operator.reconciles) == 0
    assert kube.find("v1", "ConfigMap", NS, "bad-config") is None
    fixed = {**bad, "metadata": {**bad["metadata"], "generation": 2, "resourceVersion": "999"}}
    fixed["spec"] = manifest()["spec"]
    kube.put(fixed)
    operator.cache.put_axolotljob(fixed)
    operator.changed(NS, "bad", bad["metadata"]["uid"], 2)
    wait_until(lambda: kube.find("batch/v1", "Job", NS, "bad") is not None, "the fixed job's Job")


def test_a_failed_reconcile_is_retried_with_backoff(kube, make_operator):
    operator = make_operator()
    axj = stored_axj(kube)
    operator.cache.put_axolotljob(axj)
    operator.cache.mark_ready()
    kube.fail("create", 500, times=2)
    operator.changed(NS, NAME, axj["metadata"]["uid"], 1)
    wait_until(lambda: kube.find("batch/v1", "Job", NS, NAME) is not None, "the Job after two failures")


def status_of_named(kube: FakeKube, name: str) -> dict[str, Any]:
    return (kube.find("axolotl.ai/v1alpha1", "AxolotlJob", NS, name) or {}).get("status") or {}
