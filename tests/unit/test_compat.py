"""Stale options are translated (with a warning naming old and new) or rejected (naming the key)."""

from __future__ import annotations

import pytest
from axolotl_operator.api import SpecError, parse_job
from conftest import manifest


def _warnings(parsed) -> dict[str, str]:
    return {w.path: w.message for w in parsed.warnings}


def _errors(config) -> dict[str, str]:
    with pytest.raises(SpecError) as caught:
        parse_job(manifest(config))
    return {e.path: e.message for e in caught.value.errors}


def test_epochs_becomes_num_epochs_in_place():
    parsed = parse_job(manifest({"epochs": 3, "learning_rate": 1e-4}))
    assert parsed.config["num_epochs"] == 3
    assert "epochs" not in parsed.config
    keys = list(parsed.config)
    assert keys.index("num_epochs") < keys.index("learning_rate")  # the user's order survives
    assert "num_epochs" in _warnings(parsed)["spec.config.epochs"]


def test_epochs_conflicting_with_num_epochs_is_an_error():
    assert "keep only 'num_epochs'" in _errors({"epochs": 3, "num_epochs": 1})["spec.config.epochs"]


def test_epochs_equal_to_num_epochs_is_merged():
    parsed = parse_job(manifest({"epochs": 2, "num_epochs": 2}))
    assert parsed.config["num_epochs"] == 2 and "epochs" not in parsed.config


def test_dataset_processes_becomes_dataset_num_proc():
    parsed = parse_job(manifest({"dataset_processes": 8}))
    assert parsed.config["dataset_num_proc"] == 8 and "dataset_processes" not in parsed.config
    assert "dataset_num_proc" in _warnings(parsed)["spec.config.dataset_processes"]


@pytest.mark.parametrize(
    ("old", "new"), [("adamw_hf", "adamw_torch"), ("adamw_apex_fused", "adamw_torch_fused")]
)
def test_removed_optimizers_are_replaced(old, new):
    parsed = parse_job(manifest({"optimizer": old}))
    assert parsed.config["optimizer"] == new
    message = _warnings(parsed)["spec.config.optimizer"]
    assert old in message and new in message


@pytest.mark.parametrize(
    ("flag", "implementation"),
    [("flash_attention", "flash_attention_2"), ("sdp_attention", "sdpa"), ("xformers_attention", "xformers")],
)
def test_deprecated_attention_flags_become_attn_implementation(flag, implementation):
    parsed = parse_job(manifest({flag: True}))
    assert parsed.config["attn_implementation"] == implementation
    assert flag not in parsed.config
    assert implementation in _warnings(parsed)[f"spec.config.{flag}"]


def test_attention_flag_with_attn_implementation_is_an_error():
    errors = _errors({"flash_attention": True, "attn_implementation": "sdpa"})
    assert "remove the deprecated flag" in errors["spec.config.flash_attention"]


def test_two_attention_flags_are_an_error():
    errors = _errors({"flash_attention": True, "sdp_attention": True})
    assert any("several attention flags" in m for m in errors.values())


def test_false_attention_flags_are_dropped():
    parsed = parse_job(manifest({"flash_attention": False}))
    assert "flash_attention" not in parsed.config and "attn_implementation" not in parsed.config


def test_rope_scaling_type_becomes_rope_parameters():
    overrides = {"rope_scaling": {"type": "linear", "factor": 2.0}}
    parsed = parse_job(manifest({"overrides_of_model_config": overrides}))
    assert parsed.config["overrides_of_model_config"] == {
        "rope_parameters": {"rope_type": "linear", "factor": 2.0}
    }
    assert (
        "rope_parameters.rope_type" in _warnings(parsed)["spec.config.overrides_of_model_config.rope_scaling"]
    )


def test_top_level_rope_scaling_is_moved_and_translated():
    parsed = parse_job(manifest({"rope_scaling": {"type": "dynamic", "factor": 4.0}}))
    assert parsed.config["overrides_of_model_config"]["rope_parameters"] == {
        "rope_type": "dynamic",
        "factor": 4.0,
    }
    assert "rope_scaling" not in parsed.config


@pytest.mark.parametrize("flag", ["s2_attention", "flash_attn_rms_norm"])
def test_removed_flags_set_true_are_rejected(flag):
    assert "removed from Axolotl" in _errors({flag: True})[f"spec.config.{flag}"]


def test_family_flags_are_dropped():
    parsed = parse_job(manifest({"is_llama_derived_model": True}))
    assert "is_llama_derived_model" not in parsed.config
    assert "detects the model family" in _warnings(parsed)["spec.config.is_llama_derived_model"]


def test_fsdp_list_becomes_fsdp2_config():
    parsed = parse_job(
        manifest(
            {
                "fsdp": ["full_shard", "offload", "auto_wrap"],
                "fsdp_config": {"fsdp_state_dict_type": "FULL_STATE_DICT"},
            }
        )
    )
    assert "fsdp" not in parsed.config
    assert parsed.config["fsdp_version"] == 2
    assert parsed.config["fsdp_config"] == {
        "state_dict_type": "FULL_STATE_DICT",
        "reshard_after_forward": True,
        "offload_params": True,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    }
    assert "fsdp_version: 2" in _warnings(parsed)["spec.config.fsdp"]


def test_fsdp_version_1_is_rejected():
    assert "fsdp_version: 2" in _errors({"fsdp_version": 1})["spec.config.fsdp_version"]


def test_input_config_is_not_mutated():
    original = manifest({"epochs": 1, "optimizer": "adamw_hf"})
    snapshot = repr(original)
    parse_job(original)
    assert repr(original) == snapshot


@pytest.mark.parametrize(
    ("config", "path", "needle"),
    [
        ({"load_in_4bit": True, "adapter": None}, "spec.config.load_in_4bit", "adapter"),
        ({"load_in_8bit": True, "adapter": None}, "spec.config.load_in_8bit", "adapter"),
        ({"load_in_8bit": True, "load_in_4bit": True}, "spec.config.load_in_8bit", "exclude"),
        ({"adapter": "qlora"}, "spec.config.adapter", "load_in_4bit"),
        ({"warmup_steps": 10, "warmup_ratio": 0.1}, "spec.config.warmup_ratio", "exclude"),
        ({"gpu_memory_limit": "20GiB", "max_memory": {"0": "20GiB"}}, "spec.config.max_memory", "exclude"),
        ({"bf16": True, "fp16": True}, "spec.config.fp16", "keep one"),
        ({"save_steps": 10, "saves_per_epoch": 2}, "spec.config.saves_per_epoch", "exclude"),
        ({"eval_steps": 10, "evals_per_epoch": 2}, "spec.config.evals_per_epoch", "exclude"),
        ({"adapter": None, "lora_r": 8}, "spec.config.adapter", "no adapter"),
    ],
)
def test_cross_field_errors(config, path, needle):
    errors = _errors(config)
    assert needle in errors[path], errors
