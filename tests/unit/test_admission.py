"""The webhook's verdict (admission.review) and its configuration; messages a person can act on.

The integration tier (tests/integration/operator/test_operator_webhook.py) sends the same manifests
through `kubectl apply` against a real API server."""

from __future__ import annotations

import copy
import re

import pytest
from axolotl_operator.admission import (
    MAX_WARNING_CHARS,
    MAX_WARNINGS,
    WEBHOOK_NAME,
    WEBHOOK_PATH,
    review,
    webhook_configuration,
)
from axolotl_operator.api import SpecError, parse_job
from axolotl_operator.api.messages import bound_example, example_from
from axolotl_operator.yamlio import load_all
from conftest import EXAMPLES, manifest


def errors_of(m) -> list[str]:
    with pytest.raises(SpecError) as caught:
        parse_job(m)
    return [str(e) for e in caught.value.errors]


def test_create_of_a_valid_job_is_allowed_without_warnings():
    verdict = review("CREATE", manifest(), None)
    assert verdict.allowed and verdict.warnings == ()


@pytest.mark.parametrize(
    "config, path",
    [
        ({"lora_r": 0}, "spec.config.lora_r"),
        ({"load_in_4bit": True, "adapter": None}, "spec.config.load_in_4bit"),
        ({"learning_rate": -1}, "spec.config.learning_rate"),
        ({"sample_packing": "yes"}, "spec.config.sample_packing"),
    ],
)
def test_create_of_an_invalid_job_is_denied_naming_the_field(config, path):
    verdict = review("CREATE", manifest(config), None)
    assert not verdict.allowed
    assert any(error.startswith(f"{path}: ") for error in verdict.errors), verdict.errors
    assert path in verdict.message and verdict.message.startswith("the AxolotlJob spec is invalid")


def test_every_problem_is_in_the_denial_not_only_the_first():
    verdict = review("CREATE", manifest({"lora_r": 0, "lora_alpha": 0, "micro_batch_size": "x"}), None)
    assert len(verdict.errors) == 3
    for key in ("lora_r", "lora_alpha", "micro_batch_size"):
        assert f"spec.config.{key}:" in verdict.message


def test_a_stale_key_is_allowed_with_a_warning_naming_the_new_key():
    # The reference's quickstart pasted under spec.config as it is, with its `epochs: 3`.
    (akash_config,) = load_all((EXAMPLES / "akash" / "quickstart.yaml").read_text())
    assert akash_config["epochs"] and "num_epochs" not in akash_config
    akash_config["epochs"] = 3
    akash = {**manifest(), "spec": {"config": akash_config}}
    verdict = review("CREATE", akash, None)
    assert verdict.allowed, verdict.errors
    assert any("epochs" in w and "num_epochs" in w for w in verdict.warnings), verdict.warnings


def test_warnings_are_capped_in_count_and_length_and_kept_on_one_line():
    unknown = {f"made_up_key_{i}\nsecond line": i for i in range(3 * MAX_WARNINGS)}
    unknown["x" * 600] = 1
    verdict = review("CREATE", manifest(unknown), None)
    assert verdict.allowed
    assert len(verdict.warnings) == MAX_WARNINGS + 1
    assert "more" in verdict.warnings[-1]
    assert all(len(w) <= MAX_WARNING_CHARS and "\n" not in w for w in verdict.warnings)


def test_an_update_that_leaves_the_spec_alone_is_not_judged():
    stored = manifest({"lora_r": 0})  # stored while the webhook was off (or set to Ignore)
    relabelled = copy.deepcopy(stored)
    relabelled["metadata"]["annotations"] = {"axolotl.ai/last-handled-configuration": "{}"}
    assert review("UPDATE", relabelled, stored).allowed


def test_an_update_is_denied_only_for_what_it_introduces():
    stored = manifest({"lora_r": 0})
    suspended = copy.deepcopy(stored)
    suspended["spec"]["suspend"] = True
    assert review("UPDATE", suspended, stored).allowed  # the old config error is not this update's
    broken = copy.deepcopy(stored)
    broken["spec"]["backoffLimit"] = -1
    verdict = review("UPDATE", broken, stored)
    assert not verdict.allowed
    assert [e.split(":")[0] for e in verdict.errors] == ["spec.backoffLimit"]


def test_delete_and_connect_pass():
    assert review("DELETE", None, manifest({"lora_r": 0})).allowed
    assert review("CONNECT", manifest({"lora_r": 0}), None).allowed


def test_a_secret_in_the_spec_is_denied_without_repeating_it():
    token = "hf_" + "Zq7" * 12
    verdict = review("CREATE", manifest(env=[{"name": "HF_TOKEN_X", "value": token}]), None)
    assert not verdict.allowed
    assert token not in verdict.message and all(token not in w for w in verdict.warnings)


@pytest.mark.parametrize(
    "spec",
    [
        {"secrets": {"hfToken": "hf_" + "Zq7" * 12}},
        {"secrets": "hf_" + "Zq7" * 12},
        {"env": [{"name": "HF", "valueFrom": "hf_" + "Zq7" * 12}]},
        {"secrets": {"wandbApiKey": "0123456789abcdef" * 2 + "01234567"}},
        {"config": {**manifest()["spec"]["config"], "lora_r": "hf_" + "Zq7" * 12}},
    ],
)
def test_a_token_pasted_where_something_else_belongs_is_never_repeated(spec):
    body = manifest()
    body["spec"].update(spec)
    verdict = review("CREATE", body, None)
    assert not verdict.allowed
    for fragment in ("Zq7Zq7", "0123456789abcdef"):
        assert fragment not in verdict.message and all(fragment not in w for w in verdict.warnings)


def test_hostile_shapes_are_denied_not_crashed():
    for body in ({"spec": "x"}, {"metadata": [], "spec": {}}, {"spec": {"config": []}}, {}):
        assert not review("CREATE", body, None).allowed


# ---------------------------------------------------------------- messages


@pytest.mark.parametrize(
    "config, expected",
    [
        ({"lora_r": 0}, "spec.config.lora_r: must be at least 1, got 0; e.g. lora_r: 16"),
        ({"lora_dropout": 2}, "spec.config.lora_dropout: must be less than 1"),
        ({"micro_batch_size": "x"}, "spec.config.micro_batch_size: must be a whole number, got 'x'"),
        ({"learning_rate": "fast"}, "spec.config.learning_rate: must be a number, got 'fast'; e.g. 0.0002"),
        ({"datasets": "alpaca"}, "spec.config.datasets: must be a list"),
        ({"sample_packing": "maybe"}, "spec.config.sample_packing: must be true or false"),
    ],
)
def test_range_and_type_errors_say_the_constraint_and_a_value_that_works(config, expected):
    messages = [e.replace("e.g. learning_rate: ", "e.g. ") for e in errors_of(manifest(config))]
    assert any(m.startswith(expected) for m in messages), messages


def test_pydantic_wording_never_reaches_the_user():
    messages = errors_of(manifest({"lora_r": 0, "learning_rate": [1], "warmup_ratio": 5, "lora_alpha": "x"}))
    assert not any("Input should" in m for m in messages), messages


def test_yaml_1_1_traps_are_explained_where_kubernetes_would_refuse_them():
    # PyYAML (YAML 1.1) reads `yes` as true and kubectl (YAML 1.2) as the string "yes", which the CRD
    # refuses; a quoted number is a string to both. The CLI and the webhook say so instead of coercing.
    quoted = errors_of(manifest({"learning_rate": "2e-4", "sample_packing": "yes"}))
    assert any("learning_rate: must be a number, got the string '2e-4'" in m for m in quoted)
    assert any("sample_packing: must be true or false, got the string 'yes'" in m for m in quoted)
    # Unquoted 2e-4 is a string to PyYAML but a number to Kubernetes; the CLI's reader agrees with the latter.
    (doc,) = load_all("learning_rate: 2e-4\nbf16: auto\n")
    assert doc == {"learning_rate": 0.0002, "bf16": "auto"}
    parse_job(manifest(doc))  # and a literal such as bf16: auto stays a string


def test_examples_come_from_descriptions_and_bounds():
    assert example_from("Peak learning rate, e.g. 0.0002.") == "0.0002"
    assert example_from("LoRA rank, e.g. 16.") == "16"
    assert example_from("No example here.") is None
    assert bound_example("greater_than_equal", 1) == 1
    assert bound_example("greater_than", 0) == 1
    assert bound_example("less_than", 1.0) == 0.5


# ---------------------------------------------------------------- configuration


def test_the_configuration_covers_axolotljobs_create_and_update_but_not_status():
    config = webhook_configuration("axolotl-operator", {"url": "https://127.0.0.1:1/x"})
    (webhook,) = config["webhooks"]
    assert webhook["name"] == WEBHOOK_NAME
    assert webhook["rules"] == [
        {
            "apiGroups": ["axolotl.ai"],
            "apiVersions": ["v1alpha1"],
            "operations": ["CREATE", "UPDATE"],
            "resources": ["axolotljobs"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["failurePolicy"] == "Fail" and webhook["sideEffects"] == "None"
    assert webhook["timeoutSeconds"] <= 10
    assert "namespaceSelector" not in webhook
    assert WEBHOOK_PATH.startswith("/")


def test_the_configuration_is_scoped_to_watched_namespaces():
    config = webhook_configuration("x", {"url": "https://127.0.0.1:1/x"}, "Ignore", ("b", "a"))
    (webhook,) = config["webhooks"]
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["a", "b"]}
    ]
    with pytest.raises(ValueError, match="failure policy"):
        webhook_configuration("x", {}, "Sometimes")


# ---------------------------------------------------------------- the invalid examples

INVALID = sorted((EXAMPLES.parent / "tests" / "examples" / "invalid").glob("*.yaml"))


def expected_path(path) -> str:
    """Each invalid example names the field it must be refused for in a `# expect:` line."""
    match = re.search(r"^# expect: (\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path} has no '# expect: <field path>' line"
    return match.group(1)


def test_there_are_invalid_examples():
    assert len(INVALID) >= 5


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_each_invalid_example_is_denied_for_the_field_it_names(path):
    (document,) = load_all(path.read_text())
    verdict = review("CREATE", document, None)
    assert not verdict.allowed
    assert any(error.startswith(expected_path(path) + ": ") for error in verdict.errors), verdict.errors


def test_local_runs_never_register_under_the_charts_name():
    from axolotl_operator.admission import LOCAL_CONFIGURATION
    from axolotl_operator.cli import build_parser

    assert build_parser().parse_args(["run"]).webhook_configuration == LOCAL_CONFIGURATION
    assert LOCAL_CONFIGURATION != "axolotl-operator"  # the chart's name after `helm install axolotl-operator`
