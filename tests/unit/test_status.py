"""The pure status module: every phase, every failure message, condition bookkeeping, transitions."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from axolotl_operator.api import SpecError, parse_job
from axolotl_operator.api.status import AxolotlJobStatus, ConditionType
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.status import (
    JobFacts,
    StatusResult,
    compute_status,
    facts_of,
    facts_of_error,
    pod_failure,
)
from axolotl_operator.trainer_contract import parse_summary
from conftest import manifest

T0, T1, T2 = "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"
FACTS = JobFacts(
    output_dir="/workspace/data/outputs/demo",
    claim_name="demo-data",
    gpus=4,
    gpu_resource="nvidia.com/gpu",
    backoff_limit=3,
)


def axj(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    obj = manifest()
    obj["metadata"].update(uid="u-1", generation=generation, resourceVersion="7")
    if status is not None:
        obj["status"] = status
    return obj


def job(*conditions: tuple[str, str, str], suspend: bool = False, **status: Any) -> dict[str, Any]:
    conds = [
        {"type": t, "status": "True", "reason": r, "message": m, "lastTransitionTime": T1}
        for t, r, m in conditions
    ]
    return {
        "metadata": {"name": "demo", "uid": "j-1"},
        "spec": {"suspend": suspend, "backoffLimit": 3, "parallelism": 1, "activeDeadlineSeconds": 600},
        "status": {"conditions": conds, "startTime": T0, **status},
    }


def pod(
    phase: str = "Running",
    *,
    name: str = "demo-abcde",
    state: dict[str, Any] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    finished: str = T1,
    **status: Any,
) -> dict[str, Any]:
    if state is None:
        state = (
            {"running": {"startedAt": T0}}
            if phase == "Running"
            else {"waiting": {"reason": "ContainerCreating"}}
        )
    if "terminated" in state:
        state["terminated"].setdefault("finishedAt", finished)
    return {
        "metadata": {"name": name, "creationTimestamp": T0},
        "spec": {
            "nodeName": "gpu-0",
            "containers": [{"name": "trainer", "resources": {"limits": {"memory": "64Gi"}}}],
        },
        "status": {
            "phase": phase,
            "conditions": conditions or [],
            "containerStatuses": [{"name": "trainer", "image": "trainer:1", "state": state}],
            **status,
        },
    }


def terminated(code: int, message: str = "", reason: str = "Error", **kw: Any) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "message": message, **kw}}


def summary(**fields: Any) -> str:
    return json.dumps({"outcome": "failed", "exitCode": 1, "runtimeSeconds": 3.0, **fields})


def cond(result: StatusResult, type_: str) -> dict[str, Any]:
    return next(c for c in result.status["conditions"] if c["type"] == type_)


def run(
    job_obj: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    previous: dict[str, Any] | None = None,
    facts: JobFacts = FACTS,
    now: str = T2,
) -> StatusResult:
    return compute_status(axj(previous), job_obj, pods, facts, now)


# ---------------------------------------------------------------- phases


def test_no_job_yet_is_pending_creating_with_every_condition_type():
    result = run(None, [])
    assert result.status["phase"] == "Pending"
    assert result.status["reason"] == "Creating"
    optional = {ConditionType.NOTEBOOK_READY, ConditionType.GPU_MEMORY_FITS}  # a notebook; a known GPU size
    job_types = [t for t in ConditionType if t not in optional]
    assert [c["type"] for c in result.status["conditions"]] == job_types
    assert cond(result, "Created")["status"] == "False"
    assert all(c["observedGeneration"] == 1 for c in result.status["conditions"])
    assert result.status["jobName"] == "demo" and result.status["configMapName"] == "demo-config"
    assert result.status["claimName"] == "demo-data"


def test_status_validates_against_the_crd_model():
    result = run(job(), [pod()])
    AxolotlJobStatus.model_validate(result.status)


def test_running_pod_is_running_and_names_the_node():
    result = run(job(active=1), [pod()])
    assert result.status["phase"] == "Running"
    assert "gpu-0" in result.status["message"]
    assert cond(result, "Running")["status"] == "True"
    assert cond(result, "Created")["status"] == "True"
    assert cond(result, "Ready")["status"] == "False"
    assert result.status["startTime"] == T0
    assert result.status["attempts"] == 1


def test_starting_pod_is_pending_starting():
    result = run(job(active=1), [pod("Pending")])
    assert (result.status["phase"], result.status["reason"]) == ("Pending", "Starting")


def test_pod_succeeded_before_job_complete_stays_running():
    done = pod("Succeeded", state=terminated(0, reason="Completed"))
    result = run(job(succeeded=1), [done], previous={"phase": "Running", "reason": "Training"})
    assert result.status["phase"] == "Running"
    assert result.transitions == ()


def test_complete_job_is_succeeded_with_the_runner_summary():
    text = json.dumps(
        {
            "outcome": "succeeded",
            "exitCode": 0,
            "runtimeSeconds": 3600.2,
            "finalLoss": 1.2345,
            "steps": 500,
            "totalSteps": 500,
            "outputDir": "/workspace/data/out",
            "lastCheckpoint": "/workspace/data/out/checkpoint-500",
            "hubModelId": "me/model",
            "adapterPath": "/workspace/data/out",
            "hubUrl": "https://huggingface.co/me/model",
            "wandbUrl": "https://wandb.ai/me/proj/runs/abc123",
        }
    )
    done = pod("Succeeded", state=terminated(0, text, reason="Completed"))
    result = run(job(("Complete", "", ""), succeeded=1, completionTime=T1), [done])
    status = result.status
    assert status["phase"] == "Succeeded"
    assert "500/500 steps" in status["message"] and "1.234" in status["message"]
    assert "pushed to https://huggingface.co/me/model" in status["message"]
    assert status["outputs"] == {
        "result": "https://huggingface.co/me/model",
        "outputDir": "/workspace/data/out",
        "adapterPath": "/workspace/data/out",
        "lastCheckpoint": "/workspace/data/out/checkpoint-500",
        "hubModelId": "me/model",
        "hubUrl": "https://huggingface.co/me/model",
        "wandbUrl": "https://wandb.ai/me/proj/runs/abc123",
    }
    assert status["completionTime"] == T1
    assert "progress" not in status  # the progress field manager writes it
    assert result.progress == {
        "step": 500,
        "totalSteps": 500,
        "percent": 100,
        "loss": 1.2345,
        "etaSeconds": 0,
        "updatedAt": T1,
    }
    assert cond(result, "Ready")["status"] == "True"
    assert cond(result, "Succeeded")["status"] == "True"
    assert cond(result, "Stalled")["status"] == "False"


def test_a_finite_final_loss_clears_an_earlier_non_finite_one():
    text = summary(outcome="succeeded", exitCode=0, steps=10, totalSteps=10, finalLoss=0.75)
    done = pod("Succeeded", state=terminated(0, text, reason="Completed"))
    previous = {"phase": "Running", "progress": {"step": 9, "lossNonFinite": True}}
    result = run(job(("Complete", "", ""), succeeded=1, completionTime=T1), [done], previous=previous)
    assert result.progress["loss"] == 0.75 and "lossNonFinite" not in result.progress


def test_multi_node_success_takes_rank_zeros_numbers_whichever_pod_finished_last():
    rank0 = pod("Succeeded", name="demo-0-a", finished=T0,
                state=terminated(0, summary(outcome="succeeded", exitCode=0, steps=40, totalSteps=40,
                                            finalLoss=0.5), reason="Completed"))
    rank1 = pod("Succeeded", name="demo-1-b", finished=T1,
                state=terminated(0, summary(outcome="succeeded", exitCode=0), reason="Completed"))
    for index, obj in (("0", rank0), ("1", rank1)):
        obj["metadata"]["annotations"] = {"batch.kubernetes.io/job-completion-index": index}
    result = run(job(("Complete", "", ""), succeeded=2), [rank1, rank0])
    assert "40/40 steps" in result.status["message"]
    assert result.progress["step"] == 40 and result.progress["loss"] == 0.5


def test_a_trainer_that_just_exited_in_a_running_pod_keeps_the_job_running():
    # The container has terminated but the kubelet has not yet moved the pod out of Running.
    exited = pod("Running", state=terminated(0, summary(outcome="succeeded", exitCode=0), reason="Completed"))
    result = run(job(active=1), [exited], previous={"phase": "Running", "reason": "Training"})
    assert (result.status["phase"], result.status["reason"]) == ("Running", "Training")
    assert result.transitions == ()


def test_complete_without_summary_uses_the_configured_output_dir():
    done = pod("Succeeded", state=terminated(0, "some log text", reason="Completed"))
    result = run(job(("Complete", "", ""), succeeded=1), [done])
    assert result.status["outputs"]["outputDir"] == "/workspace/data/outputs/demo"
    assert result.status["message"] == "training finished; output in /workspace/data/outputs/demo"


def test_suspended_job_is_suspended():
    result = run(job(("Suspended", "JobSuspended", ""), suspend=True), [])
    assert result.status["phase"] == "Suspended"
    assert cond(result, "Suspended")["status"] == "True"
    assert "spec.suspend: false" in result.status["message"]


def test_queued_job_waits_for_kueue():
    facts = JobFacts(queue_name="team-a", claim_name="demo-data")
    result = run(job(suspend=True), [], facts=facts)
    assert (result.status["phase"], result.status["reason"]) == ("Pending", "Queued")
    assert "team-a" in result.status["message"]


def test_queued_job_suspended_by_the_user_is_suspended():
    facts = JobFacts(queue_name="team-a", suspend=True)
    assert run(job(suspend=True), [], facts=facts).status["phase"] == "Suspended"


# ---------------------------------------------------------------- truthful failures


def test_unschedulable_names_the_resource_and_the_scheduler_message():
    scheduled = [
        {
            "type": "PodScheduled",
            "status": "False",
            "reason": "Unschedulable",
            "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        }
    ]
    result = run(job(active=1), [pod("Pending", conditions=scheduled)])
    assert (result.status["phase"], result.status["reason"]) == ("Pending", "Unschedulable")
    assert "needs 4 nvidia.com/gpu" in result.status["message"]
    assert "0/2 nodes are available: 2 Insufficient nvidia.com/gpu" in result.status["message"]
    assert result.transitions[-1].type == "Warning"


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "InvalidImageName"])
def test_image_pull_errors(reason):
    waiting = {"waiting": {"reason": reason, "message": 'pull access denied for "trainer:1"'}}
    result = run(job(active=1), [pod("Pending", state=waiting)])
    assert result.status["reason"] == "ImagePullFailed"
    assert "trainer:1" in result.status["message"] and "imagePullSecrets" in result.status["message"]


def test_missing_secret_names_it():
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf-token" not found'}}
    result = run(job(active=1), [pod("Pending", state=waiting)])
    assert result.status["reason"] == "CreateContainerConfigError"
    assert 'secret "hf-token" not found' in result.status["message"]
    assert "spec.secrets" in result.status["message"]


def test_oom_killed_after_backoff():
    oom = pod("Failed", state=terminated(137, reason="OOMKilled"))
    result = run(
        job(("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit"), failed=1),
        [oom],
    )
    assert (result.status["phase"], result.status["reason"]) == ("Failed", "OOMKilled")
    assert "OOMKilled" in result.status["message"] and "64Gi" in result.status["message"]
    assert cond(result, "Stalled")["status"] == "True"
    assert cond(result, "Failed")["reason"] == "OOMKilled"
    assert result.status["completionTime"] == T1


def test_backoff_limit_exceeded_quotes_the_runner_error():
    failed = [
        pod(
            "Failed", name="demo-1", state=terminated(1, summary(error={"message": "old error"})), finished=T0
        ),
        pod("Failed", name="demo-2", state=terminated(1, summary(error={"message": "CUDA error: boom"}))),
    ]
    result = run(job(("Failed", "BackoffLimitExceeded", ""), failed=2), failed)
    status = result.status
    assert status["reason"] == "BackoffLimitExceeded"
    assert "failed 2 time(s)" in status["message"] and "backoffLimit 3" in status["message"]
    assert "demo-2 exited with code 1: CUDA error: boom" in status["message"]
    assert status["attempts"] == 2


def test_plain_text_termination_message_is_used_tolerantly():
    text = "loading model\nTraceback (most recent call last):\nValueError: no such dataset"
    reason, message = pod_failure(pod("Failed", state=terminated(1, text)))
    assert reason == "Error"
    assert "ValueError: no such dataset" in message


def test_invalid_config_exit_is_not_retried_and_names_the_key():
    text = json.dumps(
        {
            "outcome": "invalid_config",
            "exitCode": 78,
            "runtimeSeconds": 1,
            "error": {"message": "must be positive", "key": "learning_rate"},
        }
    )
    result = run(
        job(("Failed", "PodFailurePolicy", "Container trainer ... exit code 78"), failed=1),
        [pod("Failed", state=terminated(78, text))],
    )
    assert result.status["reason"] == "InvalidConfig"
    assert "spec.config.learning_rate: must be positive" in result.status["message"]
    assert "not retried" in result.status["message"]


def test_deadline_exceeded():
    result = run(job(("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")), [])
    assert result.status["reason"] == "DeadlineExceeded"
    assert "activeDeadlineSeconds (600 s)" in result.status["message"]


def test_failure_target_counts_as_failed_before_the_failed_condition():
    result = run(job(("FailureTarget", "BackoffLimitExceeded", "")), [pod("Failed", state=terminated(1))])
    assert result.status["phase"] == "Failed"


def test_eviction_is_not_a_failure_and_says_so():
    evicted = pod(
        "Failed",
        name="demo-old",
        state=terminated(137),
        reason="Evicted",
        message="The node was low on resource",
        conditions=[{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}],
    )
    result = run(job(active=1), [evicted, pod(name="demo-new")])
    assert result.status["phase"] == "Running"
    assert (
        "evicted" in result.status["message"]
        and "does not count against backoffLimit" in result.status["message"]
    )
    assert "after 0 failure(s)" in result.status["message"]
    assert result.status["attempts"] == 2


def test_retry_after_a_failure_mentions_it_while_running():
    first = pod("Failed", name="demo-1", state=terminated(1, summary(error={"message": "NCCL timeout"})))
    result = run(job(active=1, failed=1), [first, pod(name="demo-2")])
    assert result.status["phase"] == "Running"
    assert "1 failure(s) of backoffLimit 3" in result.status["message"]
    assert "NCCL timeout" in result.status["message"]


def test_invalid_spec():
    with pytest.raises(SpecError) as err:
        parse_job(manifest({"load_in_4bit": True, "adapter": None}))
    facts = facts_of_error(err.value)
    result = compute_status(axj(), None, [], facts, T2)
    status = result.status
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidSpec")
    assert "spec.config.load_in_4bit" in status["message"]
    assert "jobName" not in status and "claimName" not in status
    assert cond(result, "Created")["reason"] == "InvalidSpec"
    assert cond(result, "Stalled")["status"] == "True"
    assert result.transitions[-1].type == "Warning"
    assert status["completionTime"] == T2


# ---------------------------------------------------------------- bookkeeping


def test_last_transition_time_is_kept_while_a_condition_keeps_its_status():
    first = run(job(active=1), [pod()], now=T1)
    second = compute_status(axj(first.status), job(active=1), [pod()], FACTS, T2)
    assert not second.changed(first.status)
    assert second.transitions == ()
    assert cond(second, "Running")["lastTransitionTime"] == T1
    done = pod("Succeeded", state=terminated(0, reason="Completed"))
    third = compute_status(axj(second.status), job(("Complete", "", ""), succeeded=1), [done], FACTS, T2)
    assert cond(third, "Running")["lastTransitionTime"] == T2  # True -> False
    assert cond(third, "Failed")["lastTransitionTime"] == T1  # False all along
    assert [t.reason for t in third.transitions] == ["Succeeded"]


def test_observed_generation_follows_the_spec():
    result = compute_status(axj(generation=3), job(active=1), [pod()], FACTS, T2)
    assert result.status["observedGeneration"] == 3
    assert {c["observedGeneration"] for c in result.status["conditions"]} == {3}


def test_terminal_status_survives_the_job_being_deleted_by_ttl():
    done = pod("Succeeded", state=terminated(0, reason="Completed"))
    finished = run(job(("Complete", "", ""), succeeded=1, completionTime=T1), [done]).status
    after = compute_status(axj(finished), None, [], FACTS, T2)
    assert after.status["phase"] == "Succeeded"
    assert after.status["completionTime"] == T1
    assert after.transitions == ()
    assert cond(after, "Created")["reason"] == "JobDeleted"


def test_attempts_never_decrease_when_pods_are_gone():
    assert run(job(suspend=True), [], previous={"attempts": 3}).status["attempts"] == 3


def test_first_status_carries_spec_warnings_as_events():
    facts = JobFacts(warnings=("spec.config.foo: not a key Axolotl knows",))
    first = run(None, [], facts=facts)
    assert [(t.type, t.reason) for t in first.transitions] == [
        ("Warning", "SpecWarning"),
        ("Normal", "Creating"),
    ]
    again = compute_status(axj(first.status), job(active=1), [pod()], facts, T2)
    assert all(t.reason != "SpecWarning" for t in again.transitions)


def test_fields_no_longer_set_are_left_out_of_the_apply():
    # Server-side apply removes what the operator's field manager owned and no longer sends.
    result = run(job(active=1), [pod()], previous={"phase": "Succeeded", "completionTime": T1})
    assert "completionTime" not in result.status
    assert "progress" not in result.status and result.progress is None  # the reports' own field


def test_parse_summary_is_tolerant():
    assert parse_summary(None) is None
    assert parse_summary("") is None
    assert parse_summary("Traceback ...") is None
    assert parse_summary('{"outcome": "succ') is None  # truncated
    assert parse_summary('["outcome"]') is None
    assert parse_summary('{"outcome": "succeeded", "steps": 3}')["steps"] == 3


def test_facts_of_a_parsed_job():
    parsed = parse_job(
        manifest({"hub_model_id": "me/m"}, gpus=2, queueName="q", storage={"existingClaim": "mine"})
    )
    facts = facts_of(parsed, OperatorSettings(gpu_resource_name="amd.com/gpu"))
    assert facts.output_dir == "/workspace/data/outputs/demo"
    assert facts.hub_model_id == "me/m"
    assert facts.claim_name == "mine"
    assert (facts.gpus, facts.gpu_resource, facts.queue_name) == (2, "amd.com/gpu", "q")


def test_a_deleted_namesakes_job_is_waited_for():
    old = {
        "metadata": {
            "name": "demo",
            "ownerReferences": [{"kind": "AxolotlJob", "uid": "old-1", "controller": True}],
        }
    }
    result = compute_status(axj(), None, [], FACTS, T2, foreign_job=old)
    assert (result.status["phase"], result.status["reason"]) == ("Pending", "WaitingForCleanup")
    assert "old-1" in result.status["message"]


def test_failed_run_keeps_live_progress_and_adds_the_final_numbers():
    text = summary(steps=120, totalSteps=500, finalLoss=2.5, error={"message": "boom"})
    previous = {"phase": "Running", "progress": {"step": 110, "totalSteps": 500, "tokensPerSecond": 900.0}}
    result = run(
        job(("Failed", "BackoffLimitExceeded", ""), failed=1),
        [pod("Failed", state=terminated(1, text))],
        previous=previous,
    )
    progress = result.progress
    assert (progress["step"], progress["percent"], progress["loss"]) == (120, 24, 2.5)
    assert progress["tokensPerSecond"] == 900.0 and "etaSeconds" not in progress


def test_kstatus_conditions_follow_the_phase():
    """Flux's kstatus: Reconciling while in progress, Ready when done, Stalled when failed."""
    running = run(job(active=1), [pod()])
    assert [cond(running, t)["status"] for t in ("Reconciling", "Ready", "Stalled")] == [
        "True",
        "False",
        "False",
    ]
    failed = run(
        job(("Failed", "BackoffLimitExceeded", "")), [pod("Failed", state=terminated(1, "boom"))]
    )
    assert [cond(failed, t)["status"] for t in ("Reconciling", "Ready", "Stalled")] == [
        "False",
        "False",
        "True",
    ]
    assert cond(failed, "Stalled")["reason"] == "BackoffLimitExceeded"


def test_a_token_in_the_trainer_log_is_not_repeated():
    token = "hf_" + "Q" * 34
    text = f"Traceback (most recent call last):\nOSError: 401 Client Error for token {token}"
    _, message = pod_failure(pod("Failed", state=terminated(1, text)))
    assert token not in message and "[redacted]" in message and "401 Client Error" in message


# ---------------------------------------------------------------- checkpoint on SIGTERM


def _stopped_pod(step: int = 120) -> dict[str, Any]:
    checkpoint = f"/workspace/data/out/checkpoint-{step}"
    text = summary(outcome="preempted", exitCode=75, steps=step, lastCheckpoint=checkpoint)
    return pod("Failed", name="demo-first", state=terminated(75, text))


def test_a_pod_stopped_after_saving_a_checkpoint_is_preempted_not_a_failure():
    result = run(job(active=1), [_stopped_pod(), pod("Pending", name="demo-second")])
    assert (result.status["phase"], result.status["reason"]) == ("Pending", "Preempted")
    message = result.status["message"]
    assert "pod demo-first saved at step 120" in message and "failure" not in message


def test_after_the_stop_training_continues_from_that_step():
    result = run(job(active=1), [_stopped_pod(), pod("Running", name="demo-second")])
    assert (result.status["phase"], result.status["reason"]) == ("Running", "Training")
    assert "continuing from the checkpoint pod demo-first saved at step 120" in result.status["message"]


def test_a_suspended_job_says_which_step_its_checkpoint_holds():
    result = run(job(suspend=True), [_stopped_pod(77)], facts=replace(FACTS, suspend=True))
    assert (result.status["phase"], result.status["reason"]) == ("Suspended", "Suspended")
    assert result.status["message"].endswith("checkpoint saved at step 77")


def test_the_suspended_message_names_the_step_from_the_last_progress_report_once_the_pod_is_gone():
    previous = {"phase": "Running", "progress": {"step": 88, "checkpointStep": 88}}
    result = run(job(suspend=True), [], previous=previous, facts=replace(FACTS, suspend=True))
    assert result.status["phase"] == "Suspended"
    assert result.status["message"].endswith("checkpoint saved at step 88")


def test_a_resumed_run_says_where_it_started():
    previous = {"phase": "Pending", "progress": {"step": 90, "resumedFromStep": 88}}
    result = run(job(active=1), [pod("Running")], previous=previous)
    assert "resumed from the checkpoint at step 88" in result.status["message"]
