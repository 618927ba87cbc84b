"""`spec.config`: the Axolotl training configuration, typed after the configuration reference.

Keys keep Axolotl's snake_case so an existing Axolotl YAML pastes in unchanged. Every option of the
reference is a typed, described field (the CRD and `kubectl explain` are generated from these); any other
key passes through to Axolotl untouched. Nothing here injects Axolotl's defaults: an unset field stays
unset and Axolotl decides.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .compat import REPLACED_OPTIMIZERS
from .known_keys import values

# Enumerations come from the Axolotl release the trainer image pins (data/axolotl_keys.json). The
# removed optimizers stay accepted here (and in the CRD) because the compat layer translates them.
Optimizer = Literal[tuple(sorted({*values("optimizers"), *REPLACED_OPTIMIZERS}))]  # type: ignore[valid-type]
LrScheduler = Literal[values("lr_schedulers")]  # type: ignore[valid-type]
ChatTemplate = Literal[values("chat_templates")]  # type: ignore[valid-type]
SaveStrategy = Literal[values("save_strategies")]  # type: ignore[valid-type]
Adapter = Literal[values("adapters")]  # type: ignore[valid-type]

NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
PositiveInt = Annotated[int, Field(ge=1)]
UnitInterval = Annotated[float, Field(ge=0, le=1)]
# A quantity such as "20GiB" or a byte count.
MemorySize = int | Annotated[str, StringConstraints(pattern=r"^[0-9]+(\.[0-9]+)?\s*([KMGT]i?B?)?$")]
RopeType = Literal["default", "linear", "dynamic", "yarn", "longrope", "llama3"]
HUB_REPO_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"


def opt(description: str, **constraints: Any) -> Any:
    """An optional field that stays unset unless the user sets it."""
    return Field(default=None, description=description, **constraints)


class PassThrough(BaseModel):
    """Keeps keys Axolotl knows and we do not type, so nothing the user wrote is lost."""

    model_config = ConfigDict(
        extra="allow", allow_inf_nan=False, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )


class RopeScaling(PassThrough):
    """Legacy RoPE scaling block (transformers < 5); translated to `rope_parameters`."""

    type: RopeType | None = opt("RoPE scaling method (legacy key; becomes rope_type).")
    rope_type: RopeType | None = opt("RoPE scaling method, transformers 5 spelling.")
    factor: float | None = opt("RoPE scaling factor; above 1 stretches the context window.", gt=0)


class ModelConfigOverrides(PassThrough):
    """Overrides applied to the base model's `config.json` before loading."""

    rope_scaling: RopeScaling | None = opt(
        "Legacy RoPE scaling; the operator rewrites it to rope_parameters for transformers 5."
    )
    rope_parameters: RopeScaling | None = opt("RoPE parameters (transformers 5): rope_type and factor.")


class SpecialTokens(PassThrough):
    """Special tokens to set or add to the tokenizer."""

    bos_token: str | None = opt("Beginning-of-sequence token.")
    eos_token: str | None = opt("End-of-sequence token.")
    pad_token: str | None = opt("Padding token.")
    unk_token: str | None = opt("Unknown-word token.")
    additional_special_tokens: list[str] | None = opt("Extra special tokens to register.")


class Dataset(PassThrough):
    """One training dataset. Other Axolotl dataset keys (field_messages, roles, ...) pass through."""

    path: NonEmptyStr = Field(
        description="Hugging Face dataset ID, or a local path (under /workspace/data for the volume)."
    )
    type: str | dict[str, Any] | None = opt(
        "Prompt format, e.g. alpaca, chat_template, completion; or a custom format object."
    )
    ds_type: str | None = opt("Loader for local files: json, csv, parquet, arrow or text.")
    data_files: str | list[str] | None = opt("File(s) within the dataset path to load.")
    split: str | None = opt("Dataset split to use, with slicing, e.g. train[:1000].")


class AxolotlConfig(PassThrough):
    """The Axolotl training configuration, snake_case as in Axolotl's own YAML."""

    # Model
    base_model: NonEmptyStr = Field(description="Hugging Face model ID or path of the model to fine-tune.")
    base_model_config: str | None = opt("Model config to load when it differs from base_model.")
    revision_of_model: str | None = opt("Branch, tag or commit of base_model on the Hub.")
    tokenizer_config: str | None = opt("Tokenizer to load when it differs from base_model.")
    model_type: str | None = opt("transformers model class to load, e.g. AutoModelForCausalLM.")
    tokenizer_type: str | None = opt("transformers tokenizer class, e.g. AutoTokenizer.")
    hub_model_id: str | None = opt(
        "Hub repository (user/repo) to push the result to; needs spec.secrets.hfToken.",
        pattern=HUB_REPO_PATTERN,
    )
    is_falcon_derived_model: bool | None = opt("Obsolete: Axolotl detects Falcon models; ignored.")
    is_llama_derived_model: bool | None = opt("Obsolete: Axolotl detects LLaMA models; ignored.")
    is_qwen_derived_model: bool | None = opt("Obsolete: Axolotl detects Qwen models; ignored.")
    is_mistral_derived_model: bool | None = opt("Obsolete: Axolotl detects Mistral models; ignored.")
    overrides_of_model_config: ModelConfigOverrides | None = opt(
        "Overrides of the model's config.json, e.g. RoPE scaling."
    )

    # Loading and precision
    load_in_8bit: bool | None = opt("Load the base model quantized to 8 bits (needs an adapter).")
    load_in_4bit: bool | None = opt("Load the base model quantized to 4 bits (QLoRA; needs an adapter).")
    bf16: bool | Literal["auto"] | None = opt("Train in bfloat16: true, false or auto.")
    fp16: bool | None = opt("Train in float16 mixed precision (not with bf16).")
    tf32: bool | Literal["auto"] | None = opt("Allow TF32 matmuls on Ampere and newer GPUs.")

    # Memory and devices
    gpu_memory_limit: MemorySize | None = opt("Memory cap per GPU, e.g. 20GiB (not with max_memory).")
    lora_on_cpu: bool | None = opt("Keep LoRA weights on the CPU to save GPU memory.")
    device_map: str | dict[str, Any] | None = opt("Device placement strategy, e.g. auto, or a module map.")
    max_memory: dict[str, MemorySize] | None = opt(
        "Maximum memory per device, e.g. {'0': '20GiB', cpu: '64GiB'} (not with gpu_memory_limit)."
    )

    # Training hyperparameters
    sequence_len: PositiveInt | None = opt("Maximum tokens per training sample.")
    gradient_accumulation_steps: PositiveInt | None = opt("Micro-batches accumulated per optimizer step.")
    micro_batch_size: PositiveInt | None = opt("Samples per GPU per forward pass.")
    eval_batch_size: PositiveInt | None = opt("Samples per GPU per evaluation pass.")
    num_epochs: float | None = opt("Passes over the training data.", gt=0)
    warmup_steps: int | None = opt("Learning-rate warmup in steps (not with warmup_ratio).", ge=0)
    warmup_ratio: float | None = opt(
        "Warmup as a fraction of total steps (not with warmup_steps).", ge=0, lt=1
    )
    learning_rate: float | None = opt("Peak learning rate, e.g. 0.0002.", gt=0)
    lr_quadratic_warmup: bool | None = opt("Warm the learning rate up quadratically instead of linearly.")
    logging_steps: PositiveInt | None = opt("Log metrics every N steps.")
    eval_steps: int | float | None = opt("Evaluate every N steps, or a fraction (<1) of total steps.", gt=0)
    evals_per_epoch: PositiveInt | None = opt("Evaluations per epoch (instead of eval_steps).")
    save_strategy: SaveStrategy | None = opt("When to save checkpoints: no, steps, epoch or best.")
    save_steps: int | float | None = opt("Save every N steps, or a fraction (<1) of total steps.", gt=0)
    saves_per_epoch: PositiveInt | None = opt("Checkpoints per epoch (instead of save_steps).")
    save_total_limit: PositiveInt | None = opt("Keep at most N checkpoints; older ones are deleted.")
    max_steps: PositiveInt | None = opt("Stop after N optimizer steps, whatever the epochs.")
    output_dir: str | None = opt(
        "Where checkpoints and the result go; default /workspace/data/outputs/<job>."
    )

    # Datasets
    datasets: list[Dataset] | None = opt("Training datasets.", min_length=1)
    chat_template: ChatTemplate | None = opt("Chat template to format conversations with.")
    chat_template_jinja: str | None = opt("Custom Jinja chat template (with chat_template: jinja).")
    default_system_message: str | None = opt("System message inserted when a conversation has none.")
    dataset_prepared_path: str | None = opt(
        "Cache of the tokenized dataset; default /workspace/data/prepared."
    )
    push_dataset_to_hub: str | None = opt("Hub repository to push the prepared dataset to.")
    dataset_processes: PositiveInt | None = opt("Deprecated spelling of dataset_num_proc; translated.")
    dataset_num_proc: PositiveInt | None = opt("Worker processes for dataset preprocessing.")
    dataset_keep_in_memory: bool | None = opt("Keep the dataset in RAM instead of memory-mapping it.")
    shuffle_merged_datasets: bool | None = opt("Shuffle after merging the datasets.")
    shuffle_before_merging_datasets: bool | None = opt("Shuffle each dataset before merging.")
    dataset_exact_deduplication: bool | None = opt("Drop exact duplicate samples.")

    # LoRA / QLoRA
    adapter: Adapter | None = opt("Parameter-efficient method: lora or qlora; unset for a full fine-tune.")
    lora_model_dir: str | None = opt("Existing LoRA adapter to continue from.")
    lora_r: PositiveInt | None = opt("LoRA rank, e.g. 16.")
    lora_alpha: PositiveInt | None = opt("LoRA scaling alpha.")
    lora_dropout: float | None = opt("Dropout on LoRA layers, in [0, 1).", ge=0, lt=1)
    lora_target_modules: list[str] | str | None = opt("Modules to adapt, e.g. [q_proj, v_proj].")
    lora_target_linear: bool | None = opt("Adapt every linear layer.")
    peft_layers_to_transform: list[Annotated[int, Field(ge=0)]] | None = opt("Layer indices to adapt.")
    lora_modules_to_save: list[str] | None = opt("Modules trained fully and saved with the adapter.")
    lora_fan_in_fan_out: bool | None = opt("Set for models whose weights are stored (fan_in, fan_out).")

    # Optimization
    train_on_inputs: bool | None = opt("Also compute the loss on the prompt tokens.")
    group_by_length: bool | None = opt("Batch samples of similar length together.")
    gradient_checkpointing: bool | Literal["offload", "offload_disk"] | None = opt(
        "Recompute activations to save memory: true, false, offload or offload_disk."
    )
    early_stopping_patience: PositiveInt | None = opt("Stop after N evaluations without improvement.")

    # LR scheduling
    lr_scheduler: LrScheduler | None = opt("Learning-rate schedule, e.g. cosine, linear, constant.")
    lr_scheduler_kwargs: dict[str, Any] | None = opt("Extra arguments of the learning-rate schedule.")
    cosine_min_lr_ratio: UnitInterval | None = opt("Cosine floor as a fraction of the peak learning rate.")
    cosine_constant_lr_ratio: UnitInterval | None = opt("Fraction of training held at constant LR (cosine).")
    lr_div_factor: float | None = opt("Initial LR = learning_rate / lr_div_factor (one-cycle).", gt=0)

    # Optimizer
    optimizer: Optimizer | None = opt("Optimizer name, e.g. adamw_torch_fused, adamw_bnb_8bit.")
    optim_args: str | dict[str, Any] | None = opt("Extra optimizer arguments.")
    optim_target_modules: list[str] | Literal["all_linear"] | None = opt(
        "Modules the optimizer targets (GaLore, APOLLO), or all_linear."
    )
    weight_decay: float | None = opt("Weight decay.", ge=0)
    adam_beta1: float | None = opt("Adam beta1, in [0, 1).", ge=0, lt=1)
    adam_beta2: float | None = opt("Adam beta2, in [0, 1).", ge=0, lt=1)
    adam_epsilon: float | None = opt("Adam epsilon.", gt=0)
    max_grad_norm: float | None = opt("Gradient clipping norm; 0 disables clipping.", ge=0)

    # Attention
    attn_implementation: str | None = opt(
        "Attention backend: eager, sdpa, flash_attention_2, flex_attention, xformers, sage, ..."
    )
    flash_optimum: bool | None = opt("Legacy BetterTransformer switch; prefer attn_implementation.")
    xformers_attention: bool | None = opt("Deprecated: becomes attn_implementation: xformers.")
    flash_attention: bool | None = opt("Deprecated: becomes attn_implementation: flash_attention_2.")
    flash_attn_cross_entropy: bool | None = opt("Use flash-attention's cross-entropy kernel.")
    flash_attn_rms_norm: bool | None = opt("Removed from Axolotl; true is rejected.")
    flash_attn_fuse_mlp: bool | None = opt("Fuse part of the MLP into one kernel.")
    sdp_attention: bool | None = opt("Deprecated: becomes attn_implementation: sdpa.")
    s2_attention: bool | None = opt("Removed from Axolotl (shifted sparse attention); true is rejected.")

    # Tokenizer
    special_tokens: SpecialTokens | None = opt("Special tokens to set on the tokenizer.")
    tokens: list[str] | None = opt("Extra tokens to add to the vocabulary.")

    # Distributed
    fsdp: list[str] | str | None = opt(
        "Deprecated FSDP1 options; translated to fsdp_config + fsdp_version 2."
    )
    fsdp_config: dict[str, Any] | None = opt("FSDP2 options, e.g. offload_params, state_dict_type.")
    fsdp_version: Literal[2] | None = opt("FSDP version; Axolotl supports 2 only.")
    deepspeed: str | dict[str, Any] | None = opt(
        "DeepSpeed config: a path in the image, or an inline JSON object (mounted as deepspeed.json)."
    )
    ddp_timeout: PositiveInt | None = opt("Seconds before a stuck collective fails the job.")
    ddp_bucket_cap_mb: PositiveInt | None = opt("DDP gradient bucket size in MiB.")
    ddp_broadcast_buffers: bool | None = opt("Broadcast module buffers every DDP step.")

    # Weights & Biases
    wandb_project: str | None = opt("W&B project; needs spec.secrets.wandbApiKey.")
    wandb_entity: str | None = opt("W&B team or user.")
    wandb_watch: str | None = opt("W&B model watching: false, gradients, parameters or all.")
    wandb_name: str | None = opt("W&B run name.")
    wandb_run_id: str | None = opt("W&B run ID, to resume a run.")

    # Performance
    sample_packing: bool | None = opt("Pack short samples into full sequences.")
    eval_sample_packing: bool | None = opt("Pack samples during evaluation too.")
    torch_compile: bool | Literal["auto"] | None = opt("Compile the model with torch.compile.")

    # Set by the operator when absent; listed so they are typed and documented.
    auto_resume_from_checkpoints: bool | None = opt(
        "Resume from the newest checkpoint in output_dir; default true so a retried pod resumes."
    )
