"""Every option of the configuration reference is typed: accepted with a valid value, rejected when broken."""

from __future__ import annotations

from typing import Any

import pytest
from axolotl_operator.api import SpecError, parse_job
from axolotl_operator.api.config import AxolotlConfig, Dataset
from conftest import manifest

# The options the configuration reference lists (issue 2), with a valid value each.
VALID: dict[str, Any] = {
    "base_model": "NousResearch/Llama-3.2-1B",
    "base_model_config": "NousResearch/Llama-3.2-1B",
    "revision_of_model": "main",
    "tokenizer_config": "NousResearch/Llama-3.2-1B",
    "model_type": "AutoModelForCausalLM",
    "tokenizer_type": "AutoTokenizer",
    "hub_model_id": "user/repo",
    "is_falcon_derived_model": False,
    "is_llama_derived_model": True,
    "is_qwen_derived_model": False,
    "is_mistral_derived_model": False,
    "overrides_of_model_config": {"rope_parameters": {"rope_type": "linear", "factor": 2.0}},
    "load_in_8bit": True,
    "load_in_4bit": False,
    "bf16": "auto",
    "fp16": False,
    "tf32": True,
    "gpu_memory_limit": "20GiB",
    "lora_on_cpu": False,
    "device_map": "auto",
    "max_memory": {"0": "20GiB", "cpu": "64GiB"},
    "gradient_accumulation_steps": 8,
    "micro_batch_size": 2,
    "eval_batch_size": 4,
    "num_epochs": 3,
    "warmup_steps": 100,
    "warmup_ratio": 0.05,
    "learning_rate": 0.0002,
    "lr_quadratic_warmup": True,
    "logging_steps": 10,
    "eval_steps": 50,
    "evals_per_epoch": 4,
    "save_strategy": "steps",
    "save_steps": 100,
    "saves_per_epoch": 2,
    "save_total_limit": 3,
    "max_steps": 1000,
    "sequence_len": 2048,
    "output_dir": "/workspace/data/outputs/x",
    "datasets": [
        {
            "path": "vicgalle/alpaca-gpt4",
            "type": "alpaca",
            "ds_type": "json",
            "data_files": "a.json",
            "split": "train",
        }
    ],
    "chat_template": "chatml",
    "chat_template_jinja": "{{ messages }}",
    "default_system_message": "You are a helpful assistant.",
    "dataset_prepared_path": "/workspace/data/prepared",
    "push_dataset_to_hub": "user/prepared",
    "dataset_processes": 4,
    "dataset_keep_in_memory": False,
    "shuffle_merged_datasets": True,
    "shuffle_before_merging_datasets": False,
    "dataset_exact_deduplication": True,
    "adapter": "lora",
    "lora_model_dir": "/workspace/data/adapters/previous",
    "lora_r": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.05,
    "lora_target_modules": ["q_proj", "v_proj"],
    "lora_target_linear": False,
    "peft_layers_to_transform": [0, 1],
    "lora_modules_to_save": ["embed_tokens"],
    "lora_fan_in_fan_out": False,
    "train_on_inputs": False,
    "group_by_length": False,
    "gradient_checkpointing": True,
    "early_stopping_patience": 3,
    "lr_scheduler": "cosine",
    "lr_scheduler_kwargs": {"num_cycles": 2},
    "cosine_min_lr_ratio": 0.1,
    "cosine_constant_lr_ratio": 0.2,
    "lr_div_factor": 25.0,
    "optimizer": "adamw_torch_fused",
    "optim_args": {"amsgrad": True},
    "optim_target_modules": ["attn", "mlp"],
    "weight_decay": 0.01,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "max_grad_norm": 1.0,
    "flash_optimum": False,
    "xformers_attention": False,
    "flash_attention": True,
    "flash_attn_cross_entropy": False,
    "flash_attn_rms_norm": False,
    "flash_attn_fuse_mlp": False,
    "sdp_attention": False,
    "s2_attention": False,
    "special_tokens": {"pad_token": "<|end_of_text|>"},
    "tokens": ["<tool>"],
    "fsdp": ["full_shard", "auto_wrap"],
    "fsdp_config": {"offload_params": False},
    "deepspeed": "/workspace/axolotl/deepspeed_configs/zero2.json",
    "ddp_timeout": 1800,
    "ddp_bucket_cap_mb": 25,
    "ddp_broadcast_buffers": False,
    "wandb_project": "proj",
    "wandb_entity": "team",
    "wandb_watch": "gradients",
    "wandb_name": "run-1",
    "wandb_run_id": "abc123",
    "sample_packing": True,
    "eval_sample_packing": False,
    "torch_compile": "auto",
}
# Options that are translated or dropped: where the value goes instead.
TRANSLATED = {
    "dataset_processes": "dataset_num_proc",
    "is_falcon_derived_model": None,
    "is_llama_derived_model": None,
    "is_qwen_derived_model": None,
    "is_mistral_derived_model": None,
    "xformers_attention": None,
    "flash_attention": "attn_implementation",
    "sdp_attention": None,
    "s2_attention": None,
    "flash_attn_rms_norm": None,
    "fsdp": "fsdp_config",
}
# Values each constrained option must refuse.
INVALID: dict[str, list[Any]] = {
    "base_model": ["", 3],
    "hub_model_id": ["no-slash", "a/b/c"],
    "load_in_8bit": ["maybe"],
    "bf16": ["sometimes"],
    "gpu_memory_limit": ["lots"],
    "gradient_accumulation_steps": [0, -1, 1.5],
    "micro_batch_size": [0],
    "eval_batch_size": [0],
    "num_epochs": [0, -1],
    "warmup_steps": [-1],
    "warmup_ratio": [1.0, -0.1],
    "learning_rate": [0, -1e-4, "fast"],
    "logging_steps": [0],
    "eval_steps": [0],
    "evals_per_epoch": [0],
    "save_strategy": ["sometimes"],
    "save_steps": [0],
    "saves_per_epoch": [0],
    "save_total_limit": [0],
    "max_steps": [0],
    "sequence_len": [0],
    "datasets": [[], [{"type": "alpaca"}], [{"path": ""}]],
    "chat_template": ["not_a_template"],
    "dataset_processes": [0],
    "adapter": ["dora-ish"],
    "lora_r": [0, -8],
    "lora_alpha": [0],
    "lora_dropout": [1.0, -0.5],
    "peft_layers_to_transform": [[-1]],
    "gradient_checkpointing": ["sometimes"],
    "early_stopping_patience": [0],
    "lr_scheduler": ["zigzag"],
    "cosine_min_lr_ratio": [1.5],
    "cosine_constant_lr_ratio": [-0.1],
    "lr_div_factor": [0],
    "optimizer": ["adamw_imaginary"],
    "optim_target_modules": ["some_linear"],
    "weight_decay": [-0.1],
    "adam_beta1": [1.0],
    "adam_beta2": [-0.1],
    "adam_epsilon": [0],
    "max_grad_norm": [-1],
    "ddp_timeout": [0],
    "ddp_bucket_cap_mb": [0],
    "torch_compile": ["always"],
    "overrides_of_model_config": [{"rope_scaling": {"type": "exotic"}}, {"rope_scaling": {"factor": 0}}],
    "max_memory": [{"0": "lots"}],
}
REFERENCE_OPTIONS = sorted(VALID)


def test_every_reference_option_is_a_typed_documented_field():
    fields = AxolotlConfig.model_fields
    missing = [name for name in REFERENCE_OPTIONS if name not in fields]
    assert missing == []
    undocumented = [name for name in REFERENCE_OPTIONS if not fields[name].description]
    assert undocumented == []
    for name in ("path", "type", "ds_type", "data_files", "split"):
        assert Dataset.model_fields[name].description


def _config_for(option: str, value: Any) -> dict[str, Any]:
    """A minimal config that lets `option` stand alone (cross-field rules satisfied)."""
    config: dict[str, Any] = {option: value}
    if option in ("load_in_8bit", "load_in_4bit"):
        config["adapter"] = "lora"
    if option in ("warmup_steps",):
        config["warmup_ratio"] = None
    if option == "adapter":
        config["adapter"] = value
    return config


@pytest.mark.parametrize("option", REFERENCE_OPTIONS)
def test_reference_option_accepted(option):
    parsed = parse_job(manifest(_config_for(option, VALID[option])))
    if option in TRANSLATED:
        assert option not in parsed.config
        target = TRANSLATED[option]
        if target:
            assert target in parsed.config
    else:
        assert parsed.config[option] == VALID[option]


@pytest.mark.parametrize(
    ("option", "value"), [(option, value) for option, values in INVALID.items() for value in values]
)
def test_constrained_option_rejected_naming_the_field(option, value):
    with pytest.raises(SpecError) as caught:
        parse_job(manifest(_config_for(option, value)))
    paths = [error.path for error in caught.value.errors]
    named = (option, TRANSLATED.get(option) or option)
    assert any(path.startswith(tuple(f"spec.config.{key}" for key in named)) for path in paths), paths


def test_unknown_keys_pass_through_with_a_suggestion():
    parsed = parse_job(manifest({"lora_rr": 4, "val_set_size": 0.05}))
    assert parsed.config["lora_rr"] == 4
    assert parsed.config["val_set_size"] == 0.05  # an Axolotl key we do not type: no warning
    messages = {w.path: w.message for w in parsed.warnings}
    assert "did you mean 'lora_r'" in messages["spec.config.lora_rr"]
    assert "spec.config.val_set_size" not in messages


def test_dataset_extra_keys_pass_through():
    dataset = {
        "path": "mlabonne/FineTome-100k",
        "type": "chat_template",
        "field_messages": "conversations",
        "message_property_mappings": {"role": "from", "content": "value"},
        "roles": {"user": ["human"]},
        "field_mesage": "typo",
    }
    parsed = parse_job(manifest({"datasets": [dataset]}))
    assert parsed.config["datasets"] == [dataset]
    messages = {w.path: w.message for w in parsed.warnings}
    assert list(messages) == ["spec.config.datasets[0].field_mesage"]
    assert "did you mean 'field_messages'" in messages["spec.config.datasets[0].field_mesage"]


def test_custom_dataset_type_object_is_accepted():
    dataset = {
        "path": "x/y",
        "type": {"field_instruction": "q", "field_output": "a", "format": "{instruction}"},
    }
    assert parse_job(manifest({"datasets": [dataset]})).config["datasets"][0] == dataset


def test_enumerations_come_from_axolotl():
    from axolotl_operator.api.known_keys import axolotl_keys

    keys = axolotl_keys()
    assert keys["axolotl_version"].startswith("0.21")
    for reference_optimizer in (
        "adamw_torch",
        "adamw_torch_fused",
        "adamw_torch_xla",
        "adafactor",
        "adamw_anyprecision",
        "adamw_bnb_8bit",
        "lion_8bit",
        "lion_32bit",
        "sgd",
        "adagrad",
    ):
        assert reference_optimizer in keys["optimizers"]
    assert {"lora", "qlora"} <= set(keys["adapters"])
    assert "tokenizer_default" in keys["chat_templates"]
