"""spec.suspend over a Kueue admission: the Workload of the job's Job is deactivated while the user keeps
the job suspended and reactivated (only if the operator deactivated it) when the user resumes."""

from __future__ import annotations

from typing import Any

import pytest
from axolotl_operator.kueue_hold import (
    HELD_ANNOTATION,
    JOB_UID_LABEL,
    KueueHold,
    needs_look,
    workload_patches,
)
from fake_kube import FakeKube

NS, JOB_UID = "ml", "job-uid-1"


def job(suspend: bool, finished: bool = False) -> dict[str, Any]:
    conditions = [{"type": "Complete", "status": "True"}] if finished else []
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "demo", "namespace": NS, "uid": JOB_UID},
        "spec": {"suspend": suspend},
        "status": {"conditions": conditions},
    }


def workload(name: str = "job-demo-1", active: bool | None = None, held: bool = False, uid: str = JOB_UID):
    meta: dict[str, Any] = {
        "name": name,
        "namespace": NS,
        "labels": {JOB_UID_LABEL: uid},
        "ownerReferences": [{"kind": "Job", "name": "demo", "uid": uid, "controller": True}],
    }
    if held:
        meta["annotations"] = {HELD_ANNOTATION: "true"}
    spec = {} if active is None else {"active": active}
    return {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "Workload", "metadata": meta, "spec": spec}


def test_a_suspended_job_deactivates_its_admitted_workload_and_marks_it():
    (change,) = workload_patches([workload()], JOB_UID, suspend=True)
    assert change.patch == {"metadata": {"annotations": {HELD_ANNOTATION: "true"}}, "spec": {"active": False}}


def test_resuming_reactivates_only_a_workload_the_operator_held():
    (change,) = workload_patches([workload(active=False, held=True)], JOB_UID, suspend=False)
    assert change.patch == {"metadata": {"annotations": {HELD_ANNOTATION: None}}, "spec": {"active": True}}
    # An administrator's deactivation is theirs: the operator leaves it.
    assert workload_patches([workload(active=False)], JOB_UID, suspend=False) == []


def test_nothing_to_do_when_kueue_already_follows_the_spec():
    assert workload_patches([workload(active=False, held=True)], JOB_UID, suspend=True) == []
    assert workload_patches([workload()], JOB_UID, suspend=False) == []


def test_a_workload_of_another_job_is_never_touched():
    assert workload_patches([workload(uid="someone-else")], JOB_UID, suspend=True) == []


@pytest.mark.parametrize(
    "the_job, queue, suspend, look",
    [
        (job(suspend=False), "team", False, False),  # admitted and running as the user wants
        (job(suspend=True), "team", False, True),  # waiting, or held by us until now
        (job(suspend=False), "team", True, True),  # the user just suspended it
        (job(suspend=True), None, True, False),  # not queued: the Job's own suspend is enough
        (job(suspend=False, finished=True), "team", True, False),
        (None, "team", True, False),
    ],
)
def test_workloads_are_read_only_when_they_may_need_a_change(the_job, queue, suspend, look):
    assert needs_look(the_job, queue, suspend) is look


def test_the_hold_patches_through_the_api_and_resumes():
    kube = FakeKube()
    kube.put(workload())
    hold = KueueHold(kube)
    hold.sync(job(suspend=False), "team", suspend=True)
    stored = kube.find("kueue.x-k8s.io/v1beta2", "Workload", NS, "job-demo-1")
    assert stored and stored["spec"]["active"] is False
    assert stored["metadata"]["annotations"][HELD_ANNOTATION] == "true"
    hold.sync(job(suspend=True), "team", suspend=False)
    stored = kube.find("kueue.x-k8s.io/v1beta2", "Workload", NS, "job-demo-1")
    assert stored and stored["spec"]["active"] is True
    assert HELD_ANNOTATION not in (stored["metadata"].get("annotations") or {})


@pytest.mark.parametrize("status", [404, 403])
def test_no_kueue_or_no_permission_is_not_an_error(status, caplog):
    kube = FakeKube()
    kube.fail("list", status, times=2)
    hold = KueueHold(kube)
    hold.sync(job(suspend=False), "team", suspend=True)
    hold.sync(job(suspend=False), "team", suspend=True)
    warnings = [r for r in caplog.records if "Kueue Workloads" in r.getMessage()]
    assert len(warnings) == (1 if status == 403 else 0)  # said once, not per sync


def test_other_api_errors_are_logged_and_never_stop_the_status(caplog):
    kube = FakeKube()
    kube.fail("merge_patch", 500)
    kube.put(workload())
    KueueHold(kube).sync(job(suspend=False), "team", suspend=True)  # no exception
    assert any("500" in r.getMessage() for r in caplog.records)
