"""The security issue's attacks on the spec, each refused with the field named and the value never
repeated: the operator's own environment, values the API server would refuse (422 on every create),
infinities, an oversized config, credentials outside spec.secrets, hostile sizes and nesting; and the
rendered pod's restrictions. Takeover by name is in test_controller.py, the endpoint in test_progress.py,
the CLI's input in test_security_cli.py."""

from __future__ import annotations

import time

import pytest
from axolotl_operator.api import SpecError, parse_job
from axolotl_operator.api.secrets_guard import MAX_ISSUES, find_spec_secrets
from axolotl_operator.render import render
from axolotl_operator.settings import OperatorSettings
from conftest import manifest

HF = "hf_" + "aB3" * 12


def refused(m) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(m)
    text = str(caught.value) + " ".join(str(w) for w in caught.value.warnings)
    assert HF not in text, "a refusal must not repeat the secret"
    return caught.value


def paths(error: SpecError) -> list[str]:
    return [issue.path for issue in error.errors]


@pytest.mark.parametrize(
    "name, hint",
    [
        ("AXOLOTL_PROGRESS_URL", "set by the operator"),
        ("AXOLOTL_PROGRESS_TOKEN_FILE", "set by the operator"),
        ("AXOLOTL_PROGRESS_CA_FILE", "set by the operator"),
        ("KUBEFLOW_TRAINER_SERVER_URL", "set by the operator"),  # would send the pod's token elsewhere
        ("KUBEFLOW_TRAINER_SERVER_CA_CERT", "set by the operator"),
        ("KUBEFLOW_TRAINER_SERVER_TOKEN", "set by the operator"),
        ("AXOLOTL_CONFIG_DIR", "set by the operator"),
        ("HF_HOME", "set by the operator"),
        ("AXOLOTL_JOB_NAME", "set by the operator"),
        ("LD_PRELOAD", "set by the operator"),
        ("HF_TOKEN", "spec.secrets.hfToken"),
        ("WANDB_API_KEY", "spec.secrets.wandbApiKey"),
    ],
)
def test_the_operators_own_environment_cannot_be_overridden(name, hint):
    env = [{"name": name, "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]
    error = refused(manifest(env=env))
    assert paths(error) == ["spec.env[0].name"] and hint in error.errors[0].message


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"queueName": "my queue!"}, "spec.queueName"),
        ({"env": [{"name": "1BAD NAME", "value": "x"}]}, "spec.env[0].name"),
        ({"storage": {"size": "-5Gi"}}, "spec.storage.size"),
        ({"storage": {"size": "1.2.3Gi"}}, "spec.storage.size"),
        ({"resources": {"limits": {"memory": "64K"}}}, "spec.resources.limits.memory"),
        ({"nodeSelector": {"gpu type": "h100"}}, "spec.nodeSelector"),
        ({"podMetadata": {"labels": {"team": "n" * 64}}}, "spec.podMetadata.labels.team"),
        ({"serviceAccountName": "Trainer_SA"}, "spec.serviceAccountName"),
        ({"secrets": {"hfToken": {"name": "hf", "key": "a/b"}}}, "spec.secrets.hfToken.key"),
        ({"image": "bad image"}, "spec.image"),
    ],
)
def test_values_the_api_server_would_refuse_are_refused_offline(spec, path):
    error = refused(manifest(**spec))
    assert any(p.startswith(path) for p in paths(error)), paths(error)


@pytest.mark.parametrize("key", ["learning_rate", "num_epochs"])
def test_infinity_and_nan_are_refused(key):
    for value in (float("inf"), float("nan")):
        assert paths(refused(manifest({key: value}))) == [f"spec.config.{key}"]


def test_a_config_over_the_configmap_limit_is_refused_naming_the_fix():
    error = refused(manifest({"chat_template_jinja": "x" * 1_100_000}))
    assert paths(error) == ["spec.config"] and "ConfigMap" in error.errors[0].message


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"podMetadata": {"annotations": {"note": HF}}}, "spec.podMetadata.annotations.note"),
        ({"podMetadata": {"labels": {"t": HF[:40]}}}, "spec.podMetadata.labels.t"),
        ({"nodeSelector": {"pool": HF[:40]}}, "spec.nodeSelector.pool"),
        ({"queueName": HF[:40]}, "spec.queueName"),
        ({"config": {"comet_api_key": "c0met"}}, "spec.config.comet_api_key"),
        (
            {"config": {"mlflow_tracking_uri": "https://user:pa55@mlflow.example"}},
            "spec.config.mlflow_tracking_uri",
        ),
        ({"env": [{"name": "MY_SECRET", "value": "s3cret"}]}, "spec.env[0].value"),
        ({"env": [{"name": "DB_PASSWORD", "value": "pw"}]}, "spec.env[0].value"),
        ({"env": [{"name": "OPENAI_API_KEY", "value": "sk"}]}, "spec.env[0].value"),
        ({"env": [{"name": "GH_TOKEN", "value": "ghp"}]}, "spec.env[0].value"),
    ],
)
def test_credentials_outside_spec_secrets_are_refused(spec, path):
    m = manifest()
    config = spec.pop("config", None)
    if config:
        m["spec"]["config"].update(config)
    m["spec"].update(spec)
    error = refused(m)
    assert paths(error) == [path]


def test_a_token_used_as_a_config_key_is_refused_without_repeating_it():
    m = manifest({HF: "x"})
    error = refused(m)
    assert paths(error) == ["spec.config.<key>"]


def test_ordinary_token_keys_of_axolotl_are_not_credentials():
    parsed = parse_job(manifest({"special_tokens": {"pad_token": "<|pad|>", "eos_token": "</s>"}}))
    assert parsed.config["special_tokens"]["pad_token"] == "<|pad|>"


def test_the_secret_scan_is_linear_and_bounded():
    # 30,000 token-like strings took 78 s (each found issue was compared with every later path).
    spec = {"config": {"datasets": [{"path": "x", "hf_token": f"hf_{i:032d}"} for i in range(30_000)]}}
    started = time.process_time()
    issues = find_spec_secrets(spec)
    assert len(issues) == MAX_ISSUES + 1 and f"{30_000 - MAX_ISSUES} more" in issues[-1].message
    assert time.process_time() - started < 20  # CPU time, generous: the old scan needed minutes


def test_deep_nesting_is_an_error_in_status_not_a_crash_loop():
    deep: dict = {}
    cursor = deep
    for _ in range(500):
        cursor["k"] = {}
        cursor = cursor["k"]
    error = refused(manifest({"overrides_of_model_config": deep}))
    assert paths(error) == ["spec"] and "nested more than" in error.errors[0].message


def test_rendered_pods_are_restricted():
    children = render(parse_job(manifest()), OperatorSettings(), "ml")
    pod = children.job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"] == {"seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


@pytest.mark.parametrize(
    "config, path",
    [
        ({"datasets": -1}, "spec.config.datasets"),
        ({"fsdp": 1}, "spec.config.fsdp"),
        ({"fsdp": [[]]}, "spec.config.fsdp"),
    ],
)
def test_odd_shapes_are_refused_naming_the_field_not_crashing(config, path):
    error = refused(manifest(config))
    assert path in paths(error), paths(error)


def test_thousands_of_unknown_keys_give_bounded_warnings():
    parsed = parse_job(manifest({f"unknown_key_{i}": i for i in range(5_000)}))
    assert len(parsed.warnings) == 51 and "4950 more" in parsed.warnings[-1].message


@pytest.mark.parametrize(
    "spec, path",
    [
        ({"backoffLimit": 2**31}, "spec.backoffLimit"),
        ({"activeDeadlineSeconds": 2**70}, "spec.activeDeadlineSeconds"),
        ({"storage": {"size": -1}}, "spec.storage.size"),
        (
            {"env": [{"name": "X", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}]},
            "spec.env[0]",
        ),
        ({"podMetadata": {"labels": {"batch.kubernetes.io/controller-uid": "x"}}}, "spec.podMetadata.labels"),
        ({"podMetadata": {"labels": {"axolotl.ai/job": "other"}}}, "spec.podMetadata.labels"),
    ],
)
def test_more_values_the_api_server_or_the_job_controller_would_refuse(spec, path):
    assert any(p.startswith(path) for p in paths(refused(manifest(**spec))))


@pytest.mark.parametrize(
    "spec",
    [
        {"podMetadata": {"annotations": {"git-commit": "3f786850e387550fdab836ed7e6dc881de23001b"}}},
        {"env": [{"name": "HF_HUB_DISABLE_IMPLICIT_TOKEN", "value": "1"}]},
        {"config": {"mlflow_tracking_uri": "https://mlflow.example.com"}},
    ],
)
def test_ordinary_values_are_not_mistaken_for_secrets(spec):
    m = manifest()
    m["spec"]["config"].update(spec.pop("config", {}))
    m["spec"].update(spec)
    parse_job(m)


@pytest.mark.parametrize(
    "spec, path",
    [
        (
            {"config": {"hub_model_id": "https://ghp_abcdefghijklmnop@github.com/x"}},
            "spec.config.hub_model_id",
        ),
        ({"env": [{"name": "TOKEN", "value": "abc"}]}, "spec.env[0].value"),
        ({"env": [{"name": "GITHUB_PAT", "value": "abc"}]}, "spec.env[0].value"),
    ],
)
def test_more_credentials_are_found(spec, path):
    m = manifest()
    m["spec"]["config"].update(spec.pop("config", {}))
    m["spec"].update(spec)
    assert paths(refused(m)) == [path]


def test_a_url_password_in_a_trainer_error_is_masked():
    from axolotl_operator.api.secrets_guard import redact

    masked = redact("MlflowException: https://user:s3cretPass@mlflow.example.com/api refused")
    assert "s3cretPass" not in masked and "mlflow.example.com" in masked
