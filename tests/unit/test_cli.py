"""The offline CLI: exit codes, messages on the right stream, and the documented pipelines."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import yaml
from axolotl_operator.crd import crd_yaml
from conftest import EXAMPLES, REPO, manifest

CLI = [sys.executable, "-m", "axolotl_operator.cli"]


def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60)


def test_validate_examples_exits_zero():
    result = run("validate", *sorted(str(p) for p in EXAMPLES.glob("*.yaml")))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": valid") == len(list(EXAMPLES.glob("*.yaml")))


def test_validate_names_the_bad_field_and_exits_one():
    result = run("validate", "-", stdin=yaml.safe_dump(manifest({"lora_r": 0})))
    assert result.returncode == 1
    assert "spec.config.lora_r" in result.stderr
    assert result.stdout == ""


def test_validate_warnings_go_to_stderr_and_do_not_fail():
    result = run("validate", "-", stdin=yaml.safe_dump(manifest({"epochs": 2})))
    assert result.returncode == 0
    assert "warning: spec.config.epochs" in result.stderr and "num_epochs" in result.stderr


def test_validate_reports_every_file(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump(manifest()))
    bad.write_text(yaml.safe_dump(manifest({"learning_rate": -1}, gpus=-1)))
    result = run("validate", str(good), str(bad), str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert f"{good}: demo: valid" in result.stdout
    assert "spec.config.learning_rate" in result.stderr and "spec.gpus" in result.stderr
    assert "missing.yaml" in result.stderr


def test_validate_rejects_malformed_yaml(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed")
    result = run("validate", str(broken))
    assert result.returncode == 1 and "broken.yaml" in result.stderr


def test_unknown_kubernetes_field_suggests_the_right_one():
    result = run("validate", "-", stdin=yaml.safe_dump(manifest(gpu=2)))
    assert result.returncode == 1
    assert "spec.gpu: unknown field (did you mean 'gpus'?)" in result.stderr
    nested = run("validate", "-", stdin=yaml.safe_dump(manifest(env=[{"name": "A", "valu": "b"}])))
    assert "spec.env[0].valu: unknown field (did you mean 'value'?)" in nested.stderr


def test_render_prints_what_the_operator_creates():
    result = run("render", str(EXAMPLES / "quickstart.yaml"), "-n", "team")
    assert result.returncode == 0, result.stderr
    documents = list(yaml.safe_load_all(result.stdout))
    assert [(d["kind"], d["metadata"]["name"], d["metadata"]["namespace"]) for d in documents] == [
        ("ConfigMap", "quickstart-config", "team"),
        ("PersistentVolumeClaim", "quickstart-data", "team"),
        ("Job", "quickstart", "team"),
    ]


def test_render_prints_the_notebook_as_it_runs_while_training():
    result = run("render", str(EXAMPLES / "notebook.yaml"), "-n", "team")
    assert result.returncode == 0, result.stderr
    documents = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(result.stdout)}
    deployment = documents[("Deployment", "notebook-quickstart-notebook")]
    assert documents[("Service", "notebook-quickstart-notebook")]["spec"]["type"] == "ClusterIP"
    assert "podAffinity" in deployment["spec"]["template"]["spec"]["affinity"]  # ReadWriteOnce, training
    assert "ownerReferences" not in deployment["metadata"]


def test_render_refuses_an_invalid_job():
    result = run("render", "-", stdin=yaml.safe_dump(manifest({"s2_attention": True})))
    assert result.returncode == 1 and "spec.config.s2_attention" in result.stderr and result.stdout == ""


def test_convert_then_render_translates_epochs():
    converted = run("convert", str(EXAMPLES / "akash" / "quickstart.yaml"), "--name", "quickstart")
    assert converted.returncode == 0, converted.stderr
    assert "spec.config.epochs" in converted.stderr and "num_epochs" in converted.stderr
    job = yaml.safe_load(converted.stdout)
    assert job["spec"]["config"]["num_epochs"] == 1 and "epochs" not in job["spec"]["config"]
    rendered = run("render", "-", stdin=converted.stdout)
    assert rendered.returncode == 0, rendered.stderr
    assert "epochs" not in rendered.stderr  # translated once, by convert
    config_map = next(yaml.safe_load_all(rendered.stdout))
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["num_epochs"] == 1 and "epochs" not in config
    assert config["learning_rate"] == 0.0002  # 2e-4 read as a number, as kubectl reads it


def test_convert_request_body_moves_credentials_to_a_secret(tmp_path):
    body = {
        "input": {
            "user_id": "user",
            "model_id": "model-name",
            "run_id": "Run_2026.11 #7",
            "credentials": {"wandb_api_key": "w" * 40, "hf_token": "hf_" + "x" * 34},
            "args": {"base_model": "NousResearch/Llama-3.2-1B", "adapter": "lora", "wandb_project": "p"},
        }
    }
    text = json.dumps(body, indent=2).replace('"args": {', '"args": {\n      // other options below')
    path = tmp_path / "body.json"
    path.write_text(text)
    result = run("convert", str(path), "--gpus", "2", "-n", "ml")
    assert result.returncode == 0, result.stderr
    secret, job = yaml.safe_load_all(result.stdout)
    name = "run-2026-11-7-" + hashlib.sha256(b"Run_2026.11 #7").hexdigest()[:8]  # sanitised: hash appended
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == f"{name}-credentials"
    assert secret["metadata"]["labels"] == {"axolotl.ai/job": name}
    assert secret["metadata"]["annotations"]["axolotl.ai/run-id"] == "Run_2026.11 #7"
    assert set(secret["stringData"]) == {"hf_token", "wandb_api_key"}
    assert job["metadata"]["name"] == name and job["metadata"]["namespace"] == "ml"
    assert job["metadata"]["annotations"]["axolotl.ai/run-id"] == "Run_2026.11 #7"
    assert job["spec"]["gpus"] == 2
    assert job["spec"]["secrets"]["hfToken"] == {"name": f"{name}-credentials", "key": "hf_token"}
    assert "credentials" not in json.dumps(job["spec"]["config"])
    assert "hf_" + "x" * 34 not in job.__repr__()
    assert f"Secret '{name}-credentials'" in result.stderr


def test_convert_without_a_name_asks_for_one():
    result = run("convert", "-", stdin="base_model: x\n")
    assert result.returncode == 1 and "--name" in result.stderr


def test_crd_command_prints_the_committed_crd():
    result = run("crd")
    assert result.returncode == 0
    assert result.stdout == crd_yaml() == (REPO / "crds" / "axolotl.ai_axolotljobs.yaml").read_text()
