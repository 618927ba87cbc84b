"""A spec that carries a credential is refused, and the refusal never repeats the value."""

from __future__ import annotations

import pytest
from axolotl_operator.api import SpecError, parse_job
from conftest import manifest

HF = "hf_" + "aB3" * 12
WANDB = "0123456789abcdef" * 2 + "01234567"


def _refusal(m) -> SpecError:
    with pytest.raises(SpecError) as caught:
        parse_job(m)
    text = str(caught.value) + " ".join(str(w) for w in caught.value.warnings)
    assert HF not in text and WANDB not in text
    return caught.value


@pytest.mark.parametrize(
    ("config", "path"),
    [
        ({"hf_token": "anything"}, "spec.config.hf_token"),
        ({"wandb_api_key": "anything"}, "spec.config.wandb_api_key"),
        ({"credentials": {"hf_token": "x"}}, "spec.config.credentials"),
        ({"hub_model_id": HF}, "spec.config.hub_model_id"),
        ({"wandb_entity": WANDB}, "spec.config.wandb_entity"),
        ({"datasets": [{"path": "x", "token": HF}]}, "spec.config.datasets[0].token"),
    ],
)
def test_inline_credentials_are_refused(config, path):
    error = _refusal(manifest(config))
    assert [e.path for e in error.errors] == [path]
    assert "spec.secrets" in error.errors[0].message


@pytest.mark.parametrize(
    "env",
    [
        [{"name": "HF_TOKEN", "value": "whatever"}],
        [{"name": "WANDB_API_KEY", "value": "whatever"}],
        [{"name": "MY_TOKEN", "value": HF}],
    ],
)
def test_literal_secret_env_is_refused(env):
    error = _refusal(manifest(env=env))
    assert error.errors[0].path == "spec.env[0].value"


def test_commit_sha_revision_is_not_a_secret():
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert parse_job(manifest({"revision_of_model": sha})).config["revision_of_model"] == sha


def test_secret_references_are_fine():
    secrets = {"hfToken": {"name": "hf", "key": "token"}, "wandbApiKey": {"name": "wandb", "key": "key"}}
    env = [{"name": "COMET_API_KEY", "valueFrom": {"secretKeyRef": {"name": "comet", "key": "key"}}}]
    parsed = parse_job(manifest(secrets=secrets, env=env))
    assert parsed.job.spec.secrets.hf_token.name == "hf"


def test_redact_masks_tokens_in_text_the_operator_repeats():
    from axolotl_operator.api.secrets_guard import redact

    log = f"Traceback ...\nHTTPError 401 for token {HF} (wandb key {WANDB})\nstep 3 loss 1.2"
    masked = redact(log)
    assert HF not in masked and WANDB not in masked
    assert masked.count("[redacted]") == 2 and "step 3 loss 1.2" in masked
