"""The product's chain, end to end on the real node: `kubectl apply` an AxolotlJob -> the in-cluster
operator creates the Job -> a pod from the trainer image runs real Axolotl on a CPU, with the claim
at /workspace/data, the config at /src/config and HF_TOKEN from a Secret -> live step/loss reach
`kubectl get axj` through the progress Service -> Succeeded, the adapter on the claim, the job's step
and loss on the operator's /metrics, and the token's value nowhere but in its Secret."""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    NODE_SELECTOR,
    ROOT,
    TOLERATION,
    Release,
    apply_yaml,
    from_a_pod,
    http_get,
    kubectl,
    kubectl_json,
    pod_phase,
    wait_for,
)

pytestmark = pytest.mark.e2e

TRAINER_SUPPORT = ROOT / "tests" / "trainer" / "trainer_support.py"
DATA = "/workspace/data"


def write_tiny_model(namespace: str, trainer_image: str, claim: str) -> None:
    """A one-off pod from the trainer image writes the tiny model and dataset onto the claim
    (tests/trainer's generator: no download)."""
    apply_yaml([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tiny-model-maker"},
         "data": {"trainer_support.py": TRAINER_SUPPORT.read_text()}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tiny-model-maker"},
         "spec": {
             "restartPolicy": "Never", "nodeSelector": NODE_SELECTOR, "tolerations": [TOLERATION],
             "containers": [{
                 "name": "main", "image": trainer_image, "imagePullPolicy": "Never",
                 "command": ["python", "-c", "import sys; from pathlib import Path;"
                             " sys.path.insert(0, '/opt/test'); from trainer_support import make_tiny_model;"
                             f" make_tiny_model(Path('{DATA}/tiny'))"],
                 "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
                 "volumeMounts": [{"name": "data", "mountPath": DATA},
                                  {"name": "code", "mountPath": "/opt/test"}],
             }],
             "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                         {"name": "code", "configMap": {"name": "tiny-model-maker"}}],
         }},
    ], namespace)
    pod = wait_for(lambda: pod_phase("tiny-model-maker", namespace), timeout=300, what="tiny model written")
    assert pod["status"]["phase"] == "Succeeded", kubectl("logs", "tiny-model-maker", "-n", namespace)[-3000:]


def cpu_job(name: str, claim: str, **config: Any) -> dict[str, Any]:
    """A CPU AxolotlJob on the real node training the tiny model (the trainer tier's settings)."""
    base = {
        "base_model": f"{DATA}/tiny/tiny-llama",
        "tokenizer_type": "PreTrainedTokenizerFast",
        "datasets": [{"path": f"{DATA}/tiny/alpaca.jsonl", "ds_type": "json", "type": "alpaca"}],
        "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_linear": True,
        "lora_mlp_kernel": False, "lora_qkv_kernel": False, "lora_o_kernel": False,
        "attn_implementation": "eager", "sequence_len": 64, "sample_packing": False,
        "micro_batch_size": 2, "gradient_accumulation_steps": 1, "num_epochs": 1, "max_steps": 300,
        "learning_rate": 0.001, "optimizer": "adamw_torch", "lr_scheduler": "cosine", "logging_steps": 1,
        "save_steps": 100, "bf16": False, "fp16": False, "tf32": False, "val_set_size": 0, "seed": 42,
        "special_tokens": {"pad_token": "<pad>"},
    }
    return {
        "apiVersion": "axolotl.ai/v1alpha1", "kind": "AxolotlJob", "metadata": {"name": name},
        "spec": {
            "gpus": 0, "backoffLimit": 0,
            "storage": {"existingClaim": claim},
            "secrets": {"hfToken": {"name": "hf-token", "key": "token"}},
            "env": [{"name": "HF_HUB_OFFLINE", "value": "1"}],
            "nodeSelector": NODE_SELECTOR, "tolerations": [TOLERATION],
            "config": {**base, **config},
        },
    }


def get_axj(name: str, namespace: str) -> dict[str, str]:
    """`kubectl get axj NAME` as the user sees it: column -> value."""
    header, row = kubectl("get", "axj", name, "-n", namespace).splitlines()[:2]
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    names = header.split()
    cells = [row[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    return dict(zip(names, cells, strict=True))


def test_cpu_job_trains_for_real_with_live_progress_and_metrics(
    release: Release, images: dict[str, str], namespace: str
) -> None:
    token = "hf_" + secrets.token_hex(17)
    apply_yaml([
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf-token"},
         "stringData": {"token": token}},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "train-data"},
         "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "2Gi"}}}},
    ], namespace)
    write_tiny_model(namespace, images["trainer"], "train-data")
    apply_yaml(cpu_job("tiny", "train-data"), namespace)

    # While it runs, `kubectl get axj` shows progress and loss from the live reports.
    def live() -> dict[str, str] | None:
        row = get_axj("tiny", namespace)
        assert row["PHASE"] not in ("Failed", "Succeeded"), f"finished before live progress was seen: {row}"
        return row if row["PHASE"] == "Running" and row["PROGRESS"] and row["LOSS"] else None

    running = wait_for(live, timeout=600, interval=1, what="live progress in kubectl get axj")
    assert 0 < int(running["PROGRESS"].rstrip("%")) <= 100 and float(running["LOSS"]) > 0

    def done() -> dict[str, Any] | None:
        job = kubectl_json("get", "axj", "tiny", "-n", namespace)
        phase = job.get("status", {}).get("phase")
        assert phase != "Failed", job["status"]
        return job if phase == "Succeeded" else None

    job = wait_for(done, timeout=600, interval=2, what="AxolotlJob Succeeded")
    progress = job["status"]["progress"]
    assert progress["step"] == progress["totalSteps"] == 300

    # The adapter is on the claim, under the job's output directory.
    claim = kubectl_json("get", "pvc", "train-data", "-n", namespace)
    volume = Path(kubectl_json("get", "pv", claim["spec"]["volumeName"])["spec"]["hostPath"]["path"])
    output = volume / "outputs" / "tiny"
    assert (output / "adapter_model.safetensors").stat().st_size > 0
    assert json.loads((output / "adapter_config.json").read_text())["r"] == 4

    # The operator's /metrics, scraped through its Service from inside the cluster.
    host = f"{release.fullname}-metrics.{release.namespace}.svc.cluster.local"
    metrics = from_a_pod(namespace, http_get(host, 9400, "/metrics"))
    labels = f'{{name="tiny",namespace="{namespace}"}}'
    step = re.search(rf"^axolotl_operator_job_step{re.escape(labels)} (\S+)$", metrics, re.M)
    loss = re.search(rf"^axolotl_operator_job_loss{re.escape(labels)} (\S+)$", metrics, re.M)
    assert step and float(step.group(1)) == 300, metrics[-2000:]
    assert loss and float(loss.group(1)) > 0

    # `kubectl logs` of the training pod shows Axolotl's own output.
    pods = kubectl_json("get", "pods", "-n", namespace, "-l", "batch.kubernetes.io/job-name=tiny")["items"]
    train_log = kubectl("logs", pods[0]["metadata"]["name"], "-n", namespace)
    assert "axolotl" in train_log.lower() and "'loss':" in train_log, train_log[-3000:]

    # The token's value is in its Secret only.
    operator_pods = kubectl_json("get", "pods", "-n", release.namespace,
                                 "-l", "app.kubernetes.io/name=axolotl-operator")["items"]
    places = {
        "training log": train_log,
        "operator log": kubectl("logs", operator_pods[0]["metadata"]["name"], "-n", release.namespace),
        "configmaps": kubectl("get", "configmaps", "-n", namespace, "-o", "yaml"),
        "axolotljob": kubectl("get", "axj", "tiny", "-n", namespace, "-o", "yaml"),
        "events": kubectl("get", "events", "-n", namespace, "-o", "yaml"),
        "pods": kubectl("get", "pods", "-n", namespace, "-o", "yaml"),
    }
    assert [where for where, text in places.items() if token in text] == []
