"""spec.cache: one claim shared by many jobs for Hugging Face's cache and Axolotl's prepared datasets."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from axolotl_operator.api import SpecError, parse_job
from axolotl_operator.render import render
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.status.model import facts_of
from conftest import manifest

NO_DEFAULT = OperatorSettings()
WITH_DEFAULT = OperatorSettings(cache_claim="team-cache")


def _pod(children) -> dict[str, Any]:
    return children.job["spec"]["template"]["spec"]


def _mounts_and_env(obj: dict[str, Any], settings: OperatorSettings) -> tuple[dict, dict, dict, dict]:
    children = render(parse_job(obj), settings, "ml")
    pod = _pod(children)
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    config = yaml.safe_load(children.config_map["data"]["config.yaml"])
    return mounts, volumes, env, config


def test_no_cache_anywhere_keeps_everything_on_the_jobs_volume():
    mounts, volumes, env, config = _mounts_and_env(manifest(), NO_DEFAULT)
    assert "/workspace/cache" not in mounts and "cache" not in volumes
    assert env["HF_HOME"] == "/workspace/data/.cache/huggingface"
    assert config["dataset_prepared_path"] == "/workspace/data/prepared"


@pytest.mark.parametrize(
    ("settings", "spec", "claim"),
    [
        (WITH_DEFAULT, None, "team-cache"),  # the operator's default
        (NO_DEFAULT, {"claimName": "my-cache"}, "my-cache"),  # the job's own
        (WITH_DEFAULT, {"claimName": "my-cache"}, "my-cache"),  # the job's wins
        (WITH_DEFAULT, {"enabled": True}, "team-cache"),
    ],
)
def test_the_cache_claim_is_mounted_with_hf_home_and_prepared_datasets_on_it(settings, spec, claim):
    obj = manifest(**({"cache": spec} if spec is not None else {}))
    mounts, volumes, env, config = _mounts_and_env(obj, settings)
    assert mounts["/workspace/cache"] == "cache"
    assert volumes["cache"] == {"name": "cache", "persistentVolumeClaim": {"claimName": claim}}
    assert env["HF_HOME"] == "/workspace/cache/huggingface"
    assert config["dataset_prepared_path"] == "/workspace/cache/prepared"
    assert mounts["/workspace/data"] == "data"  # outputs and checkpoints stay on the job's own volume


def test_enabled_false_opts_out_of_the_operators_default():
    _, volumes, env, _ = _mounts_and_env(manifest(cache={"enabled": False}), WITH_DEFAULT)
    assert "cache" not in volumes and env["HF_HOME"] == "/workspace/data/.cache/huggingface"


def test_a_users_dataset_prepared_path_wins():
    obj = manifest({"dataset_prepared_path": "/workspace/data/mine"}, cache={"claimName": "c"})
    assert _mounts_and_env(obj, NO_DEFAULT)[3]["dataset_prepared_path"] == "/workspace/data/mine"


def test_the_cache_claim_is_never_a_child_of_the_job():
    """Deleting a job never deletes the cache: the operator neither creates nor owns it."""
    owner = {"metadata": {"name": "demo", "uid": "u-1"}}
    children = render(parse_job(manifest(cache={"claimName": "c"})), NO_DEFAULT, "ml", owner)
    names = [m["metadata"]["name"] for m in children.manifests()]
    assert "c" not in names
    assert all(
        m["kind"] != "PersistentVolumeClaim" or m["metadata"]["name"] != "c" for m in children.manifests()
    )


@pytest.mark.parametrize(
    ("cache", "field", "words"),
    [
        ({"enabled": False, "claimName": "c"}, "spec.cache", "not both"),
        ({"claimName": "Not_A_Name"}, "spec.cache.claimName", ""),
        ({"claimName": "c", "size": "1Gi"}, "spec.cache.size", ""),
    ],
)
def test_bad_cache_specs_are_refused_naming_the_field(cache, field, words):
    with pytest.raises(SpecError) as caught:
        parse_job(manifest(cache=cache))
    text = str(caught.value)
    assert field in text and words in text


def test_the_notebook_shares_the_cache():
    obj = manifest(
        cache={"claimName": "c"}, notebook={"enabled": True, "tokenSecret": {"name": "t", "key": "token"}}
    )
    obj["metadata"]["uid"] = "u-1"
    notebook = facts_of(parse_job(obj), NO_DEFAULT).notebook
    assert notebook is not None
    pod = notebook.deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert {"name": "cache", "mountPath": "/workspace/cache"} in container["volumeMounts"]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "c"}} in pod["volumes"]
    assert {"name": "HF_HOME", "value": "/workspace/cache/huggingface"} in container["env"]
