"""spec.notebook: validation, the objects it renders, where it may run, its status, and the keeper that
creates, moves and removes it (against the in-memory API)."""

from __future__ import annotations

from typing import Any

import pytest
from axolotl_operator.api import SpecError, parse_job
from axolotl_operator.api.status import NotebookPlacement, Reason
from axolotl_operator.kube import ApiError
from axolotl_operator.notebook import desired, placement_for, plan, training_active
from axolotl_operator.notebook_keeper import NotebookKeeper
from axolotl_operator.render import render
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.status import compute_status, facts_of
from conftest import manifest
from fake_kube import FakeKube

NS, NAME, UID = "ml", "demo", "u-1"
TOKEN = {"name": "nb-token", "key": "token"}
SETTINGS = OperatorSettings()
T0 = "2026-01-01T00:00:00Z"


def notebook_job(storage: dict[str, Any] | None = None, **notebook: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "notebook": {"enabled": True, "tokenSecret": TOKEN, **notebook},
        "secrets": {"hfToken": {"name": "hf", "key": "token"}},
        "env": [{"name": "WANDB_PROJECT", "value": "demo"}],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "nodeSelector": {"gpu": "h100"},
    }
    if storage is not None:
        spec["storage"] = storage
    obj = manifest(**spec)
    obj["metadata"].update(uid=UID, generation=1)
    return obj


def facts(obj: dict[str, Any]):
    return facts_of(parse_job(obj), SETTINGS)


def training_job(*conditions: str, suspend: bool = False, started: bool = True) -> dict[str, Any]:
    conds = [{"type": c, "status": "True"} for c in conditions]
    status: dict[str, Any] = {"conditions": conds}
    if started:
        status["startTime"] = "2026-12-03T05:00:00Z"
    return {"metadata": {"name": NAME, "uid": "j-1"}, "spec": {"suspend": suspend}, "status": status}


def notebook_pod(ready: bool = False, **status: Any) -> dict[str, Any]:
    conditions = [{"type": "Ready", "status": "True"}] if ready else []
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "demo-notebook-abc",
            "namespace": NS,
            "labels": {"axolotl.ai/job": NAME, "app.kubernetes.io/component": "notebook"},
        },
        "status": {"phase": "Running" if ready else "Pending", "conditions": conditions, **status},
    }


# ---------------------------------------------------------------- validation


def test_enabled_without_a_token_secret_is_refused_naming_the_field_and_the_fix():
    obj = manifest(notebook={"enabled": True})
    with pytest.raises(SpecError) as raised:
        parse_job(obj)
    message = str(raised.value)
    assert "spec.notebook.tokenSecret" in message and "kubectl create secret" in message


def test_a_job_name_that_cannot_name_a_service_is_refused_with_the_notebook_on():
    obj = manifest(notebook={"enabled": True, "tokenSecret": TOKEN})
    obj["metadata"]["name"] = "7b-lora"
    with pytest.raises(SpecError) as raised:
        parse_job(obj)
    assert "metadata.name" in str(raised.value) and "job-7b-lora" in str(raised.value)
    obj["spec"]["notebook"]["enabled"] = False
    assert parse_job(obj).name == "7b-lora"  # without a notebook the name is fine


def test_a_disabled_notebook_needs_no_token_and_renders_nothing():
    assert facts(manifest(notebook={"enabled": False})).notebook is None


def test_jupyter_token_in_env_is_refused_pointing_at_the_token_secret():
    ref = {"secretKeyRef": {"name": "other", "key": "token"}}
    obj = manifest(env=[{"name": "JUPYTER_TOKEN", "valueFrom": ref}])
    with pytest.raises(SpecError) as raised:
        parse_job(obj)
    assert "spec.env[0].name: JUPYTER_TOKEN comes from spec.notebook.tokenSecret" in str(raised.value)


def test_an_inline_token_field_is_not_part_of_the_api():
    obj = manifest(notebook={"enabled": True, "token": "abc", "tokenSecret": TOKEN})
    with pytest.raises(SpecError, match=r"spec\.notebook\.token"):
        parse_job(obj)


# ---------------------------------------------------------------- what it renders


def test_the_notebook_pod_gets_the_jobs_volume_config_secrets_and_restrictions():
    obj = notebook_job()
    nb = facts(obj).notebook
    assert nb is not None
    deployment, service = desired(nb, NotebookPlacement.ANYWHERE, NS, obj)
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {var["name"]: var for var in container["env"]}
    assert env["JUPYTER_TOKEN"]["valueFrom"] == {"secretKeyRef": TOKEN}
    assert env["JUPYTER_ENABLE_LAB"]["value"] == "yes"
    assert env["HF_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["HF_HOME"]["value"] == "/workspace/data/.cache/huggingface"
    assert env["WANDB_PROJECT"]["value"] == "demo"
    assert all(
        "value" not in var or var["name"] not in {"JUPYTER_TOKEN", "HF_TOKEN"} for var in container["env"]
    )
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/workspace/data"]]["persistentVolumeClaim"]["claimName"] == "demo-data"
    assert volumes[mounts["/src/config"]]["configMap"]["name"] == "demo-config"
    # As restricted as the training pod, whose settings it shares.
    training = render(parse_job(obj), SETTINGS, NS, owner=obj).job["spec"]["template"]["spec"]
    assert container["securityContext"] == training["containers"][0]["securityContext"]
    for key in ("securityContext", "automountServiceAccountToken", "enableServiceLinks"):
        assert pod[key] == training[key]
    assert pod["automountServiceAccountToken"] is False
    # CPU only by default; tolerations follow the training pod, its GPU nodeSelector does not.
    assert "nvidia.com/gpu" not in str(container["resources"])
    assert pod["tolerations"] == training["tolerations"] and "nodeSelector" not in pod
    assert container["image"] == training["containers"][0]["image"]
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two pods on one claim
    # Owned by the AxolotlJob (deleting the job deletes it); reachable in-cluster only.
    for obj_ in (deployment, service):
        assert obj_["metadata"]["ownerReferences"][0]["uid"] == UID
        assert obj_["metadata"]["namespace"] == NS and obj_["metadata"]["name"] == "demo-notebook"
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8888, "targetPort": 8888}]
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


def test_gpus_resources_and_image_of_the_notebook_are_its_own():
    obj = notebook_job(gpus=1, image="jupyter:1", resources={"requests": {"cpu": "2"}})
    deployment, _ = desired(facts(obj).notebook, NotebookPlacement.ANYWHERE, NS, obj)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "2"}, "limits": {"nvidia.com/gpu": "1"}}
    assert container["image"] == "jupyter:1"


# ---------------------------------------------------------------- where it may run


@pytest.mark.parametrize(
    ("modes", "job", "expected"),
    [
        (("ReadWriteMany",), training_job(), NotebookPlacement.ANYWHERE),
        (("ReadOnlyMany",), training_job(), NotebookPlacement.ANYWHERE),
        (("ReadWriteOnce",), training_job(), NotebookPlacement.WITH_TRAINING_POD),
        (("ReadWriteOnce",), training_job("Complete"), NotebookPlacement.ANYWHERE),
        (("ReadWriteOnce",), training_job("Failed"), NotebookPlacement.ANYWHERE),
        (("ReadWriteOnce",), training_job(suspend=True), NotebookPlacement.ANYWHERE),
        (("ReadWriteOnce",), None, NotebookPlacement.ANYWHERE),
        (("ReadWriteOncePod",), training_job(), NotebookPlacement.AFTER_TRAINING),
        (("ReadWriteOncePod",), training_job("Complete"), NotebookPlacement.ANYWHERE),
    ],
)
def test_placement_follows_the_claims_sharing_and_whether_training_runs(modes, job, expected):
    assert placement_for(modes, training_active(job)) == expected


def test_with_the_training_pod_is_required_pod_affinity_and_after_training_is_zero_replicas():
    obj = notebook_job()
    nb = facts(obj).notebook
    anywhere, _ = desired(nb, NotebookPlacement.ANYWHERE, NS, obj)
    together, _ = desired(nb, NotebookPlacement.WITH_TRAINING_POD, NS, obj)
    after, _ = desired(nb, NotebookPlacement.AFTER_TRAINING, NS, obj)
    term = together["spec"]["template"]["spec"]["affinity"]["podAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ][0]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "training"
    assert term["labelSelector"]["matchLabels"]["axolotl.ai/job"] == NAME
    assert "affinity" not in anywhere["spec"]["template"]["spec"]
    assert (anywhere["spec"]["replicas"], after["spec"]["replicas"]) == (1, 0)
    hashes = {d["metadata"]["annotations"]["axolotl.ai/notebook-spec"] for d in (anywhere, together, after)}
    assert len(hashes) == 3  # each placement is a different spec, so a move is seen


def test_the_created_claims_modes_are_known_without_reading_the_cluster():
    assert facts(notebook_job()).notebook.claim_modes == ("ReadWriteOnce",)
    shared = notebook_job(storage={"accessModes": ["ReadWriteMany"]})
    assert facts(shared).notebook.claim_modes == ("ReadWriteMany",)
    assert facts(notebook_job(storage={"existingClaim": "data"})).notebook.claim_modes is None


# ---------------------------------------------------------------- the keeper and the status


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


def sync(kube: FakeKube, obj: dict[str, Any], job: dict[str, Any] | None):
    view = NotebookKeeper(kube).sync(obj, facts(obj), job)
    return view, compute_status(obj, job, [], facts(obj), T0, notebook=view)


def condition(result, type_: str) -> dict[str, Any]:
    return next(c for c in result.status["conditions"] if c["type"] == type_)


def test_no_notebook_before_the_training_job_exists(kube):
    view, result = sync(kube, notebook_job(), None)
    assert kube.find("apps/v1", "Deployment", NS, "demo-notebook") is None
    assert view.problem[0] == Reason.NOTEBOOK_STARTING
    assert condition(result, "NotebookReady")["status"] == "False"


def test_created_with_the_training_pod_then_moved_when_training_ends_and_ready_in_status(kube):
    obj = notebook_job()
    _, result = sync(kube, obj, training_job())
    deployment = kube.find("apps/v1", "Deployment", NS, "demo-notebook")
    assert "podAffinity" in deployment["spec"]["template"]["spec"]["affinity"]
    assert kube.find("v1", "Service", NS, "demo-notebook") is not None
    shown = result.status["notebook"]
    assert shown["placement"] == "WithTrainingPod" and shown["ready"] is False
    assert shown["portForward"] == "kubectl port-forward -n ml service/demo-notebook 8888:8888"
    # The scheduler waits for the training pod's node: the status says why.
    unschedulable = {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": "affinity",
    }
    kube.put(notebook_pod(conditions=[unschedulable]))
    _, result = sync(kube, obj, training_job())
    assert condition(result, "NotebookReady")["reason"] == "WaitingForTrainingPod"
    # Training ends: the notebook may run anywhere (a new spec, replaced in place), and it is ready.
    kube.put(notebook_pod(ready=True))
    _, result = sync(kube, obj, training_job("Complete"))
    moved = kube.find("apps/v1", "Deployment", NS, "demo-notebook")
    assert "affinity" not in moved["spec"]["template"]["spec"]
    assert moved["metadata"]["uid"] == deployment["metadata"]["uid"]
    ready = condition(result, "NotebookReady")
    assert (ready["status"], ready["reason"]) == ("True", "NotebookRunning")
    assert result.status["notebook"]["ready"] is True and "message" not in result.status["notebook"]
    # Nothing changed: nothing is written.
    kube.calls.clear()
    sync(kube, obj, training_job("Complete"))
    assert "replace" not in kube.calls and "create" not in kube.calls


def test_an_existing_read_write_once_pod_claim_keeps_the_notebook_at_zero_until_training_ends(kube):
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "namespace": NS},
            "spec": {"accessModes": ["ReadWriteOncePod"]},
        }
    )
    obj = notebook_job(storage={"existingClaim": "data"})
    _, result = sync(kube, obj, training_job())
    assert kube.find("apps/v1", "Deployment", NS, "demo-notebook")["spec"]["replicas"] == 0
    assert condition(result, "NotebookReady")["reason"] == "WaitingForClaim"
    sync(kube, obj, training_job("Complete"))
    assert kube.find("apps/v1", "Deployment", NS, "demo-notebook")["spec"]["replicas"] == 1


def test_a_foreign_deployment_of_that_name_is_left_untouched_and_named_in_the_status(kube):
    foreign = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "demo-notebook", "namespace": NS},
        "spec": {"replicas": 3},
    }
    kube.put(foreign)
    _, result = sync(kube, notebook_job(), training_job())
    assert kube.find("apps/v1", "Deployment", NS, "demo-notebook")["spec"] == {"replicas": 3}
    ready = condition(result, "NotebookReady")
    assert ready["reason"] == "ChildNameConflict" and "left untouched" in ready["message"]


def test_a_refused_create_is_a_status_not_a_retry_loop(kube):
    kube.fail("create", 422)
    _, result = sync(kube, notebook_job(), training_job())
    assert condition(result, "NotebookReady")["reason"] == "CreateRejected"
    assert "spec.notebook" in result.status["notebook"]["message"]


def test_a_queued_or_suspended_job_that_never_ran_keeps_its_exclusive_claim_for_the_training_pod(kube):
    """The first pod to use a WaitForFirstConsumer claim binds it to its node: not the notebook's."""
    view, result = sync(kube, notebook_job(), training_job(suspend=True, started=False))
    assert kube.find("apps/v1", "Deployment", NS, "demo-notebook") is None
    assert view.problem[0] == Reason.WAITING_FOR_TRAINING_POD
    assert condition(result, "NotebookReady")["reason"] == "WaitingForTrainingPod"
    # A shared claim has no such node: the notebook may start at once.
    shared = notebook_job(storage={"size": "1Gi", "accessModes": ["ReadWriteMany"]})
    view, _ = sync(kube, shared, training_job(suspend=True, started=False))
    assert view.problem is None and kube.find("apps/v1", "Deployment", NS, "demo-notebook") is not None


def test_a_forbidden_object_is_shown_in_the_status_and_the_status_still_written(kube):
    kube.fail("get", 403)
    view, result = sync(kube, notebook_job(), training_job())
    assert view.problem[0] == Reason.CREATE_REJECTED and "forbids" in view.problem[1]
    assert condition(result, "NotebookReady")["status"] == "False"
    assert result.status["phase"]  # the training's own status is computed as usual


def test_a_transient_error_is_raised_for_the_status_queue_to_retry(kube):
    kube.fail("get", 503)
    with pytest.raises(ApiError):
        sync(kube, notebook_job(), training_job())


def test_turning_it_off_deletes_the_object_it_read_not_one_made_since(kube):
    obj = notebook_job()
    _, result = sync(kube, obj, training_job())
    obj["status"] = result.status
    obj["spec"]["notebook"]["enabled"] = False
    deleted: list[str | None] = []
    real_delete = kube.delete

    def delete(api_version, kind, namespace, name, uid=None):
        deleted.append(uid)
        real_delete(api_version, kind, namespace, name, uid=uid)

    kube.delete = delete  # type: ignore[method-assign]
    sync(kube, obj, training_job())
    assert len(deleted) == 2 and all(deleted)  # both with the uid precondition


def test_turning_it_off_deletes_the_notebook_only_and_drops_it_from_the_status(kube):
    obj = notebook_job()
    _, result = sync(kube, obj, training_job())
    obj["status"] = result.status
    obj["spec"]["notebook"]["enabled"] = False
    view, result = sync(kube, obj, training_job())
    assert view is None and "notebook" not in result.status
    assert "NotebookReady" not in {c["type"] for c in result.status["conditions"]}
    assert kube.find("apps/v1", "Deployment", NS, "demo-notebook") is None
    assert kube.find("v1", "Service", NS, "demo-notebook") is None


def test_turning_it_off_never_deletes_a_namesake_the_operator_did_not_make(kube):
    obj = notebook_job()
    obj["status"] = {"notebook": {"serviceName": "demo-notebook"}}
    obj["spec"]["notebook"]["enabled"] = False
    foreign = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "demo-notebook", "namespace": NS}}
    kube.put(foreign)
    NotebookKeeper(kube).sync(obj, facts(obj), training_job())
    assert kube.find("v1", "Service", NS, "demo-notebook") is not None


def test_no_notebook_costs_no_api_call(kube):
    obj = manifest()
    obj["metadata"].update(uid=UID, generation=1)
    assert NotebookKeeper(kube).sync(obj, facts(obj), training_job()) is None
    assert kube.calls == []


def test_plan_is_none_without_a_token_even_if_validation_was_bypassed():
    parsed = parse_job(manifest())
    assert plan(parsed, SETTINGS, ("ReadWriteOnce",)) is None

