"""Pure parts of the Kopf shell: which Job fields follow the AxolotlJob, ownership, Kopf settings."""

from __future__ import annotations

import argparse

import kopf
from axolotl_operator.manager import FINALIZER, NoDiffBase, configure_kopf, settings_from_args
from axolotl_operator.ownership import controlled_by
from axolotl_operator.render import job_updates


def job(finished: bool = False, **spec):
    conditions = [{"type": "Complete", "status": "True"}] if finished else []
    return {"spec": spec, "status": {"conditions": conditions}}


def test_suspend_deadline_and_ttl_follow_the_spec():
    have = job(suspend=False, activeDeadlineSeconds=60)
    want = job(suspend=True, activeDeadlineSeconds=120, ttlSecondsAfterFinished=30)
    assert job_updates(have, want, queue_name=None, suspend=True) == {
        "suspend": True,
        "activeDeadlineSeconds": 120,
        "ttlSecondsAfterFinished": 30,
    }


def test_removed_deadline_is_cleared():
    assert job_updates(job(activeDeadlineSeconds=60), job(), queue_name=None, suspend=False) == {
        "activeDeadlineSeconds": None
    }


def test_nothing_to_do_when_in_sync():
    assert job_updates(job(suspend=False), job(suspend=False), queue_name=None, suspend=False) == {}


def test_kueue_owns_unsuspend_of_a_queued_job():
    admitted = job(suspend=False)
    assert job_updates(admitted, job(suspend=True), queue_name="q", suspend=False) == {}
    waiting = job(suspend=True)
    assert job_updates(waiting, job(suspend=True), queue_name="q", suspend=False) == {}
    assert job_updates(admitted, job(suspend=True), queue_name="q", suspend=True) == {"suspend": True}


def test_a_finished_job_only_gets_its_ttl():
    have = job(finished=True, suspend=False)
    want = job(suspend=True, activeDeadlineSeconds=5, ttlSecondsAfterFinished=0)
    assert job_updates(have, want, queue_name=None, suspend=True) == {"ttlSecondsAfterFinished": 0}


def test_controlled_by():
    child = {"metadata": {"ownerReferences": [{"uid": "a", "controller": True}, {"uid": "b"}]}}
    assert controlled_by(child, "a")
    assert not controlled_by(child, "b")
    assert not controlled_by({"metadata": {}}, "a")


def test_kopf_keeps_its_state_in_our_annotations():
    settings = kopf.OperatorSettings()
    configure_kopf(settings)
    assert settings.persistence.finalizer == FINALIZER == "axolotl.ai/finalizer"
    assert isinstance(settings.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert settings.persistence.progress_storage.prefix == "axolotl.ai"
    # No change handlers, so no diff base: no deep copy per event, nothing stored on the objects.
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, NoDiffBase)
    body = kopf.Body({"metadata": {"name": "x"}, "spec": {"big": ["spec"] * 3}})
    assert storage.build(body=body) == {} and storage.fetch(body=body) is None
    assert settings.watching.server_timeout and settings.watching.client_timeout
    assert settings.posting.enabled is False


def test_flags_win_over_environment(monkeypatch):
    monkeypatch.setenv("AXOLOTL_OPERATOR_DEFAULT_IMAGE", "env:1")
    monkeypatch.setenv("AXOLOTL_OPERATOR_GPU_RESOURCE_NAME", "amd.com/gpu")
    args = argparse.Namespace(
        default_image="flag:2",
        gpu_resource_name=None,
        default_storage_size="1Gi",
        default_storage_class=None,
        progress_url=None,
    )
    settings = settings_from_args(args)
    assert settings.default_image == "flag:2"
    assert settings.gpu_resource_name == "amd.com/gpu"
    assert settings.default_storage_size == "1Gi"
