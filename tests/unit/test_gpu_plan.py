"""The GPU memory plan (`axolotl-operator plan`) against published figures, within stated tolerances."""

from __future__ import annotations

import json

import pytest
from axolotl_operator import gpu_plan
from axolotl_operator.api import parse_job
from axolotl_operator.cli import main
from axolotl_operator.gpu_plan import (
    GIB,
    GPU_MEMORY_LABEL,
    Architecture,
    PlanError,
    architecture_of,
    breakdown,
    fit_check,
    from_config,
    plan,
    quantity_bytes,
)
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.status import compute_status, facts_of
from conftest import EXAMPLES, manifest

GB = 1e9

# Parameter counts as the model cards publish them (billions); the table's shapes must give them to 1.5%.
PUBLISHED_PARAMS = {
    "meta-llama/Llama-3.2-1B": 1.24,
    "meta-llama/Llama-3.1-8B": 8.03,
    "meta-llama/Llama-3.1-70B": 70.6,
    "meta-llama/Llama-2-7b-hf": 6.74,
    "meta-llama/Llama-2-13b-hf": 13.0,
    "huggyllama/llama-65b": 65.2,
    "mistralai/Mistral-7B-v0.3": 7.25,
    "Qwen/Qwen2.5-0.5B": 0.49,
    "Qwen/Qwen2.5-7B": 7.61,
    "Qwen/Qwen2.5-72B": 72.7,
}

# The QLoRA paper's 65B setup (Dettmers et al. 2023): LoRA r=64 on every linear layer, NF4 with double
# quantization, bf16, gradient checkpointing, paged AdamW, batch size 1.
QLORA_65B = {
    "adapter": "qlora",
    "load_in_4bit": True,
    "lora_r": 64,
    "lora_target_linear": True,
    "bf16": True,
    "gradient_checkpointing": True,
    "optimizer": "paged_adamw_32bit",
    "micro_batch_size": 1,
    "sequence_len": 512,
}


@pytest.mark.parametrize("model, billions", PUBLISHED_PARAMS.items())
def test_the_architecture_table_gives_the_published_parameter_counts(model, billions):
    _, arch = architecture_of(model)
    assert arch.params / GB == pytest.approx(billions, rel=0.015)


def test_the_qlora_papers_65b_figures():
    """'reduces the average memory requirements of finetuning a 65B parameter model from >780GB of GPU
    memory to <48GB' (QLoRA, abstract)."""
    sixteen_bit = {"bf16": True, "gradient_checkpointing": True, "sequence_len": 512}
    full = plan("huggyllama/llama-65b", sixteen_bit, 1, 1)
    assert full.per_gpu.total > 780 * GB
    qlora = plan("huggyllama/llama-65b", QLORA_65B, 1, 1)
    assert 33 * GB < qlora.per_gpu.total < 48 * GB  # more than its 4-bit weights, less than one 48 GB GPU
    assert qlora.fits["48 GB (L40S, RTX 6000 Ada)"] == 1


def test_full_fp32_training_with_adam_is_four_times_the_model_as_accelerate_estimates():
    """accelerate estimate-memory: training with Adam takes about 4x the model's size in its dtype."""
    _, arch = architecture_of("meta-llama/Llama-2-7b-hf")
    parts, trainable, _ = breakdown(arch, {}, 1)
    assert trainable == arch.params
    states = parts.weights + parts.gradients + parts.optimizer
    assert states == pytest.approx(4 * arch.params * 4, rel=0.01)


def test_zero_and_fsdp_divide_what_they_shard():
    _, arch = architecture_of("meta-llama/Llama-3.1-8B")
    config = {"bf16": True, "gradient_checkpointing": True}
    alone, _, _ = breakdown(arch, config, 8)
    zero1, _, _ = breakdown(arch, {**config, "deepspeed": "deepspeed_configs/zero1.json"}, 8)
    zero2, _, _ = breakdown(arch, {**config, "deepspeed": {"zero_optimization": {"stage": 2}}}, 8)
    fsdp, _, sharding = breakdown(arch, {**config, "fsdp_config": {"offload_params": False}}, 8)
    assert sharding == "fsdp"
    assert zero1.weights == alone.weights and zero1.gradients == alone.gradients
    assert zero1.optimizer == pytest.approx(alone.optimizer * (12 / 8) / 8)  # + fp32 master, then / 8
    assert zero2.gradients == pytest.approx(alone.gradients / 8)
    assert fsdp.weights == pytest.approx(alone.weights / 8)
    assert fsdp.optimizer == pytest.approx(alone.optimizer / 8)
    assert fsdp.activations == alone.activations  # each GPU still holds its own micro-batch


def test_more_gpus_only_help_a_sharded_job():
    config = {"bf16": True, "gradient_checkpointing": True}
    unsharded = plan("meta-llama/Llama-3.1-70B", config, 8, 1)
    assert unsharded.fits["80 GB (A100, H100)"] is None
    sharded = plan("meta-llama/Llama-3.1-70B", {**config, "deepspeed": "zero3.json"}, 8, 2)
    counts = [c for c in sharded.fits.values() if c is not None]
    assert counts and counts == sorted(counts, reverse=True)  # bigger GPUs, fewer of them
    assert sharded.world_size == 16


def test_a_config_json_gives_the_same_architecture_as_the_table():
    llama8b = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
    }
    assert from_config(llama8b) == architecture_of("meta-llama/Llama-3.1-8B")[1]
    assert architecture_of("my-org/private-model", llama8b)[0] == "config.json"
    with pytest.raises(PlanError, match="num_hidden_layers"):
        from_config({**llama8b, "num_hidden_layers": "32"})


def test_an_unknown_model_names_the_field_and_the_way_out():
    with pytest.raises(PlanError) as raised:
        architecture_of("my-org/private-model")
    assert "spec.config.base_model" in str(raised.value) and "--model-config" in str(raised.value)


def test_lora_counts_only_its_targets():
    arch = Architecture(4096, 32, 14336, 32, 8, 128256)
    qv = breakdown(arch, {"adapter": "lora", "lora_r": 16}, 1)[1]
    assert qv == 32 * 16 * ((4096 + 4096) + (4096 + 1024))  # PEFT's default q_proj, v_proj
    every = breakdown(arch, {"adapter": "lora", "lora_r": 16, "lora_target_linear": True}, 1)[1]
    assert every > qv


def test_the_cli_prints_the_breakdown_and_the_gpu_counts(capsys):
    assert main(["plan", str(EXAMPLES / "quickstart.yaml")]) == 0
    out = capsys.readouterr().out
    assert "llama-3.2-1b" in out and "total" in out and "80 GB (A100, H100)" in out


def test_the_cli_reads_a_config_json_and_refuses_a_bad_one(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    text = (EXAMPLES / "quickstart.yaml").read_text().replace("NousResearch/Llama-3.2-1B", "me/private")
    job.write_text(text)
    assert main(["plan", str(job)]) == 1
    assert "--model-config" in capsys.readouterr().err
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"hidden_size": 512, "num_hidden_layers": 4, "intermediate_size": 1024,
                                  "num_attention_heads": 8, "vocab_size": 1000}))
    assert main(["plan", str(job), "--model-config", str(config)]) == 0
    assert "config.json" in capsys.readouterr().out
    config.write_text("{not json")
    assert main(["plan", str(job), "--model-config", str(config)]) == 1
    assert "not a JSON config.json" in capsys.readouterr().err


def test_gib_rendering_is_one_decimal():
    assert gpu_plan.gib(1.5 * GIB) == "1.5"


# ---------------------------------------------------------------- the operator's warning condition


@pytest.mark.parametrize(
    "text, expected",
    [("80Gi", 80 * 2**30), ("80G", 80e9), ("8e10", 8e10), ("1.5Ti", 1.5 * 2**40), (1024, 1024.0),
     ("a lot", None)],
)
def test_gpu_memory_quantities(text, expected):
    assert quantity_bytes(text) == expected


def test_no_check_without_a_known_gpu_size_a_gpu_or_a_known_model():
    config = {"base_model": "meta-llama/Llama-3.1-8B", "bf16": True}
    assert fit_check("meta-llama/Llama-3.1-8B", config, 1, 1, None, None) is None
    assert fit_check("meta-llama/Llama-3.1-8B", config, 1, 1, None, {GPU_MEMORY_LABEL: "lots"}) is None
    assert fit_check("meta-llama/Llama-3.1-8B", config, 0, 1, "24Gi", None) is None
    assert fit_check("me/private", config, 1, 1, "24Gi", None) is None


def test_a_job_clearly_too_big_for_its_gpus_gets_a_false_condition_that_says_what_to_do():
    obj = manifest({"base_model": "meta-llama/Llama-3.1-8B", "bf16": True, "sequence_len": 8192,
                    "adapter": None, "lora_r": None}, gpuMemory="24Gi")
    obj["metadata"].update(uid="u-1", generation=1)
    facts = facts_of(parse_job(obj), OperatorSettings())
    result = compute_status(obj, None, [], facts, "2026-12-03T00:00:00Z")
    (fit,) = [c for c in result.status["conditions"] if c["type"] == "GPUMemoryFits"]
    assert (fit["status"], fit["reason"]) == ("False", "GPUMemoryTooSmall")
    assert "spec.gpuMemory (24Gi)" in fit["message"] and "axolotl-operator plan" in fit["message"]
    assert result.status["phase"] == "Pending"  # a warning: the job is not held back


def test_a_node_label_of_gpu_feature_discovery_is_read_when_no_hint_is_given():
    obj = manifest({"base_model": "meta-llama/Llama-3.1-8B", "adapter": "qlora", "load_in_4bit": True,
                    "bf16": True, "gradient_checkpointing": True}, nodeSelector={GPU_MEMORY_LABEL: "81559"})
    obj["metadata"].update(uid="u-1", generation=1)
    facts = facts_of(parse_job(obj), OperatorSettings())
    assert facts.gpu_fit is not None and facts.gpu_fit[0] is True
    result = compute_status(obj, None, [], facts, "2026-12-03T00:00:00Z")
    (fit,) = [c for c in result.status["conditions"] if c["type"] == "GPUMemoryFits"]
    assert (fit["status"], fit["reason"]) == ("True", "PlanFits")
