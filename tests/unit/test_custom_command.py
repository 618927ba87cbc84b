"""spec.command/args: a custom image built on the Hugging Face Trainer runs without our runner."""

from __future__ import annotations

import pytest
from axolotl_operator.api import SpecError, parse_job
from axolotl_operator.render import render
from axolotl_operator.settings import OperatorSettings
from conftest import manifest

SETTINGS = OperatorSettings(progress_url="https://op.ops.svc:8081/progress", progress_ca="-----CA-----\n")


def _job(obj):
    return render(parse_job(obj), SETTINGS, "ml").job


def test_the_runner_is_the_default_with_its_exit_code_rules():
    job = _job(manifest())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["axolotl-job-runner"] and "args" not in container
    codes = [
        r["onExitCodes"]["values"] for r in job["spec"]["podFailurePolicy"]["rules"] if "onExitCodes" in r
    ]
    assert codes == [[78], [75]]


def test_a_custom_command_runs_with_the_kubeflow_environment_and_only_the_disruption_rule():
    job = _job(
        manifest(image="registry.example/me/hf-trainer:1", command=["python", "/app/train.py"], args=["--x"])
    )
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "/app/train.py"] and container["args"] == ["--x"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KUBEFLOW_TRAINER_SERVER_URL"].startswith("https://op.ops.svc:8081/kubeflow/namespaces/ml/")
    assert env["KUBEFLOW_TRAINER_SERVER_TOKEN"] and env["KUBEFLOW_TRAINER_SERVER_CA_CERT"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules == [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    ]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"args": ["--x"]}, "spec.args"),
        ({"command": []}, "spec.command"),
        ({"command": ["x"] * 65}, "spec.command"),
        ({"command": ["x" * 5000]}, "spec.command"),
        ({"command": "python train.py"}, "spec.command"),
    ],
)
def test_bad_commands_are_refused_naming_the_field(spec, field):
    with pytest.raises(SpecError) as caught:
        parse_job(manifest(**spec))
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("command", "where"),
    [
        (["python", "train.py", "--push", "hf_" + "a" * 34], "spec.command[3]"),
        (["python", "train.py", "--hf-token", "abcdef123"], "spec.command[3]"),
        (["python", "train.py", "--api-key=abcdef123"], "spec.command[2]"),
    ],
)
def test_a_token_in_the_command_is_refused_like_anywhere_in_the_spec(command, where):
    with pytest.raises(SpecError) as caught:
        parse_job(manifest(command=command))
    text = str(caught.value)
    assert where in text and "abcdef123" not in text and "hf_aaaa" not in text


def test_flags_that_only_mention_tokens_are_fine():
    parse_job(manifest(command=["python", "train.py", "--hf-token-file", "/var/run/t", "--pad-token", "x"]))
    parse_job(manifest(command=["python", "train.py", "--token"], args=["--epochs", "2"]))
