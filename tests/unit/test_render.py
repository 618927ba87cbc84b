"""render: the children an AxolotlJob gets, exactly and deterministically."""

from __future__ import annotations

import os

import pytest
import yaml
from axolotl_operator.api import SpecError, parse_job
from axolotl_operator.render import render
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.trainer_contract import EXIT_INVALID_CONFIG
from axolotl_operator.yamlio import dump_all, load_all
from conftest import EXAMPLES, REPO, manifest

SETTINGS = OperatorSettings()
SNAPSHOT = REPO / "tests" / "unit" / "snapshots" / "quickstart.rendered.yaml"


def _render(m, settings=SETTINGS, namespace="ml", owner=None):
    return render(parse_job(m), settings, namespace, owner)


def _container(children):
    return children.job["spec"]["template"]["spec"]["containers"][0]


def _env(children):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in _container(children)["env"]}


def _quickstart():
    return next(d for d in load_all((EXAMPLES / "quickstart.yaml").read_text()) if d["kind"] == "AxolotlJob")


def test_quickstart_snapshot():
    """The rendered children equal the committed golden file. To regenerate it after an intended change,
    run `UPDATE_SNAPSHOTS=1 make unit` (or `UPDATE_SNAPSHOTS=1 .venv/bin/pytest tests/unit/test_render.py`):
    a differing golden is then rewritten and the test still fails ("snapshot updated"), so a run that
    rewrote it never passes; review the diff, commit it and re-run without the variable."""
    rendered = dump_all(_render(_quickstart(), namespace="default").manifests())
    golden = SNAPSHOT.read_text() if SNAPSHOT.exists() else None
    if rendered == golden:
        return
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(rendered)
        pytest.fail(f"snapshot updated: {SNAPSHOT.relative_to(REPO)}; review the diff, re-run without "
                    "UPDATE_SNAPSHOTS")
    assert golden is not None, f"{SNAPSHOT.relative_to(REPO)} is missing; UPDATE_SNAPSHOTS=1 writes it"
    assert rendered == golden, "rendering changed; if intended, UPDATE_SNAPSHOTS=1 rewrites the golden file"


def test_render_is_deterministic():
    first = dump_all(_render(_quickstart()).manifests())
    assert all(dump_all(_render(_quickstart()).manifests()) == first for _ in range(3))


def test_configmap_holds_the_translated_config_plus_defaults():
    m = manifest({"epochs": 2, "optimizer": "adamw_hf", "learning_rate": 2e-4})
    parsed = parse_job(m)
    config = yaml.safe_load(render(parsed, SETTINGS, "ml").config_map["data"]["config.yaml"])
    defaults = {
        "output_dir": "/workspace/data/outputs/demo",
        "dataset_prepared_path": "/workspace/data/prepared",
        "auto_resume_from_checkpoints": True,
    }
    assert config == {**parsed.config, **defaults}
    assert config["num_epochs"] == 2 and config["optimizer"] == "adamw_torch" and "epochs" not in config


def test_user_values_beat_defaults():
    config = {"output_dir": "/workspace/data/mine", "auto_resume_from_checkpoints": False}
    rendered = yaml.safe_load(_render(manifest(config)).config_map["data"]["config.yaml"])
    assert rendered["output_dir"] == "/workspace/data/mine"
    assert rendered["auto_resume_from_checkpoints"] is False


def test_pod_layout_follows_the_design():
    children = _render(
        manifest(
            secrets={"hfToken": {"name": "hf", "key": "token"}, "wandbApiKey": {"name": "wb", "key": "k"}}
        )
    )
    pod = children.job["spec"]["template"]["spec"]
    container = _container(children)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"data": "/workspace/data", "config": "/src/config", "dshm": "/dev/shm"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "demo-data"
    assert volumes["config"]["configMap"]["name"] == "demo-config"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    env = _env(children)
    assert env["BASE_VOLUME"] == "/workspace/data"
    assert env["AXOLOTL_CONFIG_DIR"] == "/src/config"
    assert env["HF_HOME"] == "/workspace/data/.cache/huggingface"
    assert env["AXOLOTL_DO_NOT_TRACK"] == "1"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wb", "key": "k"}}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["restartPolicy"] == "Never"
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"


def test_failure_policy_ignores_disruptions_and_fails_fast_on_invalid_config():
    spec = _render(manifest(backoffLimit=5)).job["spec"]
    assert spec["backoffLimit"] == 5
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"] == {
        "containerName": "trainer",
        "operator": "In",
        "values": [EXIT_INVALID_CONFIG],
    }
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }


def test_cpu_job_has_no_gpu_and_gpu_resource_name_is_configurable():
    assert "limits" not in _container(_render(manifest(gpus=0)))["resources"]
    amd = OperatorSettings(gpu_resource_name="amd.com/gpu")
    children = _render(manifest(gpus=4, resources={"requests": {"cpu": 8, "memory": "64Gi"}}), settings=amd)
    resources = _container(children)["resources"]
    assert resources == {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"amd.com/gpu": "4"}}


def test_existing_claim_creates_no_claim():
    children = _render(manifest(storage={"existingClaim": "team-data"}))
    assert children.claim is None
    volumes = children.job["spec"]["template"]["spec"]["volumes"]
    assert volumes[0]["persistentVolumeClaim"]["claimName"] == "team-data"
    assert [m["kind"] for m in children.manifests()] == ["ConfigMap", "Job"]


def test_claim_defaults_and_overrides():
    default = _render(manifest()).claim
    assert default["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "100Gi"}},
    }
    assert "ownerReferences" not in default["metadata"]  # outputs outlive the job
    custom = _render(
        manifest(storage={"size": "20Gi", "storageClassName": "fast"}),
        settings=OperatorSettings(default_storage_class="slow"),
    ).claim
    assert custom["spec"]["resources"]["requests"]["storage"] == "20Gi"
    assert custom["spec"]["storageClassName"] == "fast"


def test_multi_node_is_an_indexed_job_with_rendezvous():
    children = _render(manifest(nodes=3, gpus=8))
    spec = children.job["spec"]
    assert (spec["completions"], spec["parallelism"], spec["completionMode"]) == (3, 3, "Indexed")
    assert children.service["spec"]["clusterIP"] == "None"
    assert children.service["spec"]["selector"] == {"axolotl.ai/job": "demo"}
    assert spec["template"]["spec"]["subdomain"] == "demo"
    env = _env(children)
    assert env["NNODES"] == "3" and env["NPROC_PER_NODE"] == "8"
    assert env["MASTER_ADDR"] == "demo-0.demo.ml.svc" and env["MASTER_PORT"] == "29500"
    assert "job-completion-index" in env["NODE_RANK"]["fieldRef"]["fieldPath"]
    assert children.claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_multi_node_refuses_a_read_write_once_claim():
    with pytest.raises(SpecError) as caught:
        parse_job(manifest(nodes=2, storage={"accessModes": ["ReadWriteOnce"]}))
    assert caught.value.errors[0].path == "spec.storage.accessModes"
    assert "ReadWriteMany" in caught.value.errors[0].message


def test_inline_deepspeed_becomes_a_file():
    children = _render(manifest({"deepspeed": {"zero_optimization": {"stage": 3}}}))
    data = children.config_map["data"]
    assert yaml.safe_load(data["config.yaml"])["deepspeed"] == "/src/config/deepspeed.json"
    assert yaml.safe_load(data["deepspeed.json"]) == {"zero_optimization": {"stage": 3}}


def test_kubernetes_fields_reach_the_pod():
    m = manifest(
        suspend=True,
        activeDeadlineSeconds=3600,
        ttlSecondsAfterFinished=600,
        nodeSelector={"gpu": "h100"},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}],
        priorityClassName="training",
        serviceAccountName="trainer",
        imagePullSecrets=[{"name": "regcred"}],
        podMetadata={"labels": {"team": "nlp"}, "annotations": {"a": "b"}},
        image="example.org/axolotl:custom",
        env=[{"name": "NCCL_DEBUG", "value": "INFO"}],
    )
    children = _render(m)
    spec = children.job["spec"]
    pod = spec["template"]["spec"]
    assert (
        spec["suspend"] is True
        and spec["activeDeadlineSeconds"] == 3600
        and spec["ttlSecondsAfterFinished"] == 600
    )
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["priorityClassName"] == "training"
    assert pod["serviceAccountName"] == "trainer" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert spec["template"]["metadata"]["labels"]["team"] == "nlp"
    assert spec["template"]["metadata"]["annotations"] == {"a": "b"}
    container = _container(children)
    assert container["image"] == "example.org/axolotl:custom"
    assert _env(children)["NCCL_DEBUG"] == "INFO" and container["env"][-1]["name"] == "NCCL_DEBUG"


def test_queue_name_creates_the_job_suspended_for_kueue():
    job = _render(manifest(queueName="team-a")).job
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True


def test_a_workload_priority_class_labels_the_job_for_kueue():
    job = _render(manifest(queueName="team-a", workloadPriorityClassName="urgent")).job
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "urgent"
    assert "kueue.x-k8s.io/priority-class" not in job["spec"]["template"]["metadata"]["labels"]


def test_a_workload_priority_class_without_a_queue_is_refused_naming_both_fields():
    with pytest.raises(SpecError) as raised:
        parse_job(manifest(workloadPriorityClassName="urgent"))
    message = str(raised.value)
    assert "spec.workloadPriorityClassName" in message and "spec.queueName" in message


def test_owner_references_on_owned_children_only():
    owner = {"metadata": {"name": "demo", "uid": "1234"}}
    children = _render(manifest(nodes=2), owner=owner)
    for child in (children.config_map, children.job, children.service):
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == "1234" and ref["controller"] is True and ref["kind"] == "AxolotlJob"
    assert "ownerReferences" not in children.claim["metadata"]


def test_progress_reporting_uses_a_projected_token():
    settings = OperatorSettings(progress_url="http://axolotl-operator.system.svc:8081/progress")
    children = _render(manifest(), settings=settings)
    env = _env(children)
    assert env["AXOLOTL_PROGRESS_URL"] == settings.progress_url
    token_file = env["AXOLOTL_PROGRESS_TOKEN_FILE"]
    volume = next(
        v for v in children.job["spec"]["template"]["spec"]["volumes"] if v["name"] == "progress-token"
    )
    source = volume["projected"]["sources"][0]["serviceAccountToken"]
    assert source["audience"] == "axolotl-operator" and token_file.endswith("/" + source["path"])
    # transformers' KubeflowCallback (an image without our runner) gets the job's own URL and the same token
    assert env["KUBEFLOW_TRAINER_SERVER_URL"] == (
        "http://axolotl-operator.system.svc:8081/kubeflow/namespaces/ml/axolotljobs/demo"
    )
    assert env["KUBEFLOW_TRAINER_SERVER_TOKEN"] == token_file
    assert "AXOLOTL_PROGRESS_CA_FILE" not in env and "KUBEFLOW_TRAINER_SERVER_CA_CERT" not in env  # http


def test_an_https_progress_url_mounts_the_operators_ca_from_the_jobs_config_map():
    ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    url = "https://op-progress.system.svc:8081/progress"
    children = _render(manifest(), settings=OperatorSettings(progress_url=url, progress_ca=ca))
    env = _env(children)
    ca_file = "/var/run/secrets/axolotl.ai/progress/progress-ca.crt"
    assert env["AXOLOTL_PROGRESS_CA_FILE"] == env["KUBEFLOW_TRAINER_SERVER_CA_CERT"] == ca_file
    assert env["KUBEFLOW_TRAINER_SERVER_URL"] == (
        "https://op-progress.system.svc:8081/kubeflow/namespaces/ml/axolotljobs/demo"
    )
    assert children.config_map["data"]["progress-ca.crt"] == ca  # the public certificate, never a key
    spec = children.job["spec"]["template"]["spec"]
    volume = next(v for v in spec["volumes"] if v["name"] == "progress-token")
    config = volume["projected"]["sources"][1]["configMap"]
    assert config == {
        "name": children.config_map["metadata"]["name"],
        "items": [{"key": "progress-ca.crt", "path": "progress-ca.crt"}],
        "optional": True,  # never blocks a pod from starting; only live progress would be missing
    }
    mount = next(m for m in _container(children)["volumeMounts"] if m["name"] == "progress-token")
    assert mount["readOnly"] and ca_file.startswith(mount["mountPath"] + "/")
    # a CA for an http URL is pointless and stays out
    plain_settings = OperatorSettings(progress_url=url.replace("https", "http"), progress_ca=ca)
    plain = _render(manifest(), settings=plain_settings)
    assert "progress-ca.crt" not in plain.config_map["data"]
    assert "AXOLOTL_PROGRESS_CA_FILE" not in _env(plain)
