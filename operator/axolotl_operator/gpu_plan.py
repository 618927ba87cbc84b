"""A GPU memory plan for an AxolotlJob before any GPU is allocated (pure; `axolotl-operator plan`).

Per-GPU memory is estimated from the model's shape (its `config.json`, or a table of common
architectures) and the job's config, term by term:

- weights: parameters x bytes of the load dtype (bf16/fp16 2, fp32 4); 4-bit (QLoRA, NF4 with double
  quantization) 0.516 bytes and 8-bit 1.0 byte for the decoder's linear layers, the embeddings and head
  staying 16-bit;
- trainable parameters: all of them for a full fine-tune, r x (in + out) per targeted linear layer for
  LoRA/QLoRA (`lora_target_linear`, `lora_target_modules`, PEFT's default q_proj/v_proj otherwise);
- gradients and optimizer state of the trainable parameters: LoRA weights, their gradients and AdamW's
  two moments in fp32 (4 + 4 + 8 bytes); a full fine-tune 16-bit weights and gradients and fp32 moments
  (2 + 2 + 8 bytes: the "12 bytes per parameter" behind the QLoRA paper's > 780 GB for 65B), plus an
  fp32 master copy (4 bytes) under DeepSpeed; 8-bit optimizers 2 bytes of state instead of 8;
- activations (Korthikanti et al. 2022): 34 x s x b x h bytes per layer with a fused attention kernel
  (plus 5 x heads x s^2 x b for eager attention); with gradient checkpointing only each layer's input
  (2 x s x b x h) is kept, plus one layer being recomputed; the logits in fp32 and their gradient
  (8 x s x b x vocab);
- sharding over gpus x nodes: ZeRO-1 the optimizer state, ZeRO-2 also the gradients, ZeRO-3 and FSDP
  everything but the activations;
- 1 GiB for the CUDA context and allocator, then 5 % fragmentation.

It is a plan, not a measurement: fused kernels (Liger, cut cross-entropy), CPU offload and paged
optimizers lower the real figure, long-tail allocator behaviour raises it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GIB = 1024**3
CONTEXT_BYTES = 1 * GIB
FRAGMENTATION = 1.05
NF4_BYTES = 0.516  # 4 bits + double-quantized absmax (0.127 bits) per weight
INT8_BYTES = 1.0
LORA_DEFAULT_TARGETS = ("q_proj", "v_proj")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GPU_SIZES: tuple[tuple[str, float], ...] = (
    ("24 GB (L4, RTX 4090)", 24e9),
    ("40 GB (A100 40GB)", 40e9),
    ("48 GB (L40S, RTX 6000 Ada)", 48e9),
    ("80 GB (A100, H100)", 80e9),
    ("141 GB (H200)", 141e9),
)
MAX_GPUS = 512
PAGED_NOTE = "  (paged: may move to CPU memory, not counted)"


@dataclass(frozen=True)
class Architecture:
    """What memory depends on in a decoder-only transformer (Llama-like: SwiGLU MLP, GQA)."""

    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied_embeddings: bool = False
    experts: int = 1  # mixture of experts: MLPs per layer

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def module_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder layers' linear layers (what 4/8-bit loading quantizes)."""
        shapes = self.module_shapes()
        mlp_modules = ("gate_proj", "up_proj", "down_proj")
        attention = sum(a * b for m, (a, b) in shapes.items() if m not in mlp_modules)
        mlp = sum(a * b for m, (a, b) in shapes.items() if m in mlp_modules)
        return self.layers * (attention + mlp * self.experts)

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied_embeddings else 2)

    @property
    def params(self) -> int:
        norms = self.layers * 2 * self.hidden + self.hidden
        return self.linear_params + self.embedding_params + norms


# Shapes from the models' published config.json files.
KNOWN: tuple[tuple[str, str, Architecture], ...] = (
    ("llama-3.2-1b", r"llama-?3\.2-?1b", Architecture(2048, 16, 8192, 32, 8, 128256, True)),
    ("llama-3.2-3b", r"llama-?3\.2-?3b", Architecture(3072, 28, 8192, 24, 8, 128256, True)),
    ("llama-3.1-8b", r"llama-?3(\.1)?-?8b", Architecture(4096, 32, 14336, 32, 8, 128256)),
    ("llama-3.1-70b", r"llama-?3(\.[13])?-?70b", Architecture(8192, 80, 28672, 64, 8, 128256)),
    ("llama-2-7b", r"llama-?(2-?)?7b", Architecture(4096, 32, 11008, 32, 32, 32000)),
    ("llama-2-13b", r"llama-?(2-?)?13b", Architecture(5120, 40, 13824, 40, 40, 32000)),
    ("llama-65b", r"llama-?65b", Architecture(8192, 80, 22016, 64, 64, 32000)),
    ("mistral-7b", r"mistral-?7b", Architecture(4096, 32, 14336, 32, 8, 32768)),
    ("qwen2.5-0.5b", r"qwen2(\.5)?-?0\.5b", Architecture(896, 24, 4864, 14, 2, 151936, True)),
    ("qwen2.5-1.5b", r"qwen2(\.5)?-?1\.5b", Architecture(1536, 28, 8960, 12, 2, 151936, True)),
    ("qwen2.5-3b", r"qwen2(\.5)?-?3b", Architecture(2048, 36, 11008, 16, 2, 151936, True)),
    ("qwen2.5-7b", r"qwen2(\.5)?-?7b", Architecture(3584, 28, 18944, 28, 4, 152064)),
    ("qwen2.5-14b", r"qwen2(\.5)?-?14b", Architecture(5120, 48, 13824, 40, 8, 152064)),
    ("qwen2.5-32b", r"qwen2(\.5)?-?32b", Architecture(5120, 64, 27648, 40, 8, 152064)),
    ("qwen2.5-72b", r"qwen2(\.5)?-?72b", Architecture(8192, 80, 29568, 64, 8, 152064)),
)


class PlanError(ValueError):
    """The plan cannot be made (unknown architecture, unreadable config.json)."""


def architecture_of(
    base_model: str, model_config: Mapping[str, Any] | None = None
) -> tuple[str, Architecture]:
    """The architecture from a config.json when given, else from the table by the model's name."""
    if model_config is not None:
        return "config.json", from_config(model_config)
    name = base_model.lower().rsplit("/", 1)[-1].replace("_", "-")
    for label, pattern, arch in KNOWN:
        if re.search(pattern, name.replace("meta-", "")):
            return label, arch
    known = ", ".join(label for label, _, _ in KNOWN)
    raise PlanError(
        f"spec.config.base_model {base_model!r}: its architecture is not in the table ({known}); pass the "
        "model's config.json with --model-config"
    )


def from_config(config: Mapping[str, Any]) -> Architecture:
    def number(*keys: str, default: int | None = None) -> int:
        for key in keys:
            value = config.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        if default is not None:
            return default
        raise PlanError(f"config.json: {keys[0]} is missing or not a positive integer")

    heads = number("num_attention_heads")
    return Architecture(
        hidden=number("hidden_size"),
        layers=number("num_hidden_layers"),
        intermediate=number("intermediate_size"),
        heads=heads,
        kv_heads=number("num_key_value_heads", default=heads),
        vocab=number("vocab_size"),
        tied_embeddings=config.get("tie_word_embeddings") is True,
        experts=number("num_local_experts", "num_experts", default=1),
    )


@dataclass(frozen=True)
class Breakdown:
    """Bytes per GPU, by what holds them."""

    weights: float
    trainable: float  # adapter weights (LoRA); 0 for a full fine-tune (they are the weights)
    gradients: float
    optimizer: float
    activations: float
    overhead: float
    paged_optimizer: bool = False  # its state moves to CPU memory when GPU memory runs short

    @property
    def total(self) -> float:
        """What must fit in GPU memory (a paged optimizer's state need not)."""
        optimizer = 0.0 if self.paged_optimizer else self.optimizer
        parts = self.weights + self.trainable + self.gradients + optimizer + self.activations
        return (parts + self.overhead) * FRAGMENTATION


@dataclass(frozen=True)
class Plan:
    model: str
    params: int
    trainable_params: int
    world_size: int
    sharding: str
    per_gpu: Breakdown
    fits: dict[str, int | None]  # GPU size -> smallest GPU count that fits (None: no count does)


def _zero_stage(deepspeed: Any) -> int:
    if isinstance(deepspeed, Mapping):
        stage = (deepspeed.get("zero_optimization") or {}).get("stage")
        return stage if isinstance(stage, int) and 0 <= stage <= 3 else 0
    if isinstance(deepspeed, str):
        found = re.search(r"zero([0-3])", deepspeed.lower())
        return int(found.group(1)) if found else 0
    return 0


def _sharding(config: Mapping[str, Any]) -> str:
    if config.get("fsdp_config") or config.get("fsdp"):
        return "fsdp"
    stage = _zero_stage(config.get("deepspeed"))
    return f"zero{stage}" if stage else "none"


def _targets(config: Mapping[str, Any]) -> tuple[str, ...]:
    if config.get("lora_target_linear"):
        return LINEAR_MODULES
    modules = config.get("lora_target_modules")
    if isinstance(modules, str):
        modules = [modules]
    if isinstance(modules, list) and modules:
        return tuple(m for m in LINEAR_MODULES if any(str(t).endswith(m) for t in modules))
    return LORA_DEFAULT_TARGETS


def breakdown(arch: Architecture, config: Mapping[str, Any], world_size: int) -> tuple[Breakdown, int, str]:
    """Per-GPU bytes, the trainable parameter count and the sharding, for `world_size` GPUs."""
    half = bool(config.get("bf16")) or bool(config.get("fp16"))
    dtype = 2 if half else 4
    adapter = config.get("adapter") in ("lora", "qlora")
    if config.get("load_in_4bit"):
        weights = arch.linear_params * NF4_BYTES + (arch.params - arch.linear_params) * 2
    elif config.get("load_in_8bit"):
        weights = arch.linear_params * INT8_BYTES + (arch.params - arch.linear_params) * 2
    else:
        weights = arch.params * dtype
    sharding = _sharding(config)
    eight_bit = "8bit" in str(config.get("optimizer") or "")
    moments = 2 if eight_bit else 8
    if adapter:
        r = int(config.get("lora_r") or 8)
        shapes = arch.module_shapes()
        trainable = arch.layers * sum(r * (a + b) for m, (a, b) in shapes.items() if m in _targets(config))
        adapter_bytes, gradients, optimizer = trainable * 4.0, trainable * 4.0, trainable * float(moments)
    else:
        trainable = arch.params
        master = 4 if sharding.startswith("zero") else 0  # DeepSpeed keeps fp32 master weights
        adapter_bytes, gradients = 0.0, trainable * float(dtype)
        optimizer = trainable * float(moments + (master if half else 0))
    n = max(1, world_size)
    if sharding == "zero1":
        optimizer /= n
    elif sharding == "zero2":
        optimizer, gradients = optimizer / n, gradients / n
    elif sharding in ("zero3", "fsdp"):
        weights, adapter_bytes = weights / n, adapter_bytes / n
        gradients, optimizer = gradients / n, optimizer / n
    activations = _activations(arch, config)
    paged = "paged" in str(config.get("optimizer") or "")
    parts = Breakdown(weights, adapter_bytes, gradients, optimizer, activations, CONTEXT_BYTES, paged)
    return parts, trainable, sharding


def _activations(arch: Architecture, config: Mapping[str, Any]) -> float:
    s = int(config.get("sequence_len") or 2048)
    b = int(config.get("micro_batch_size") or 1)
    h, layers = arch.hidden, arch.layers
    eager = str(config.get("attn_implementation") or "") == "eager" and not config.get("flash_attention")
    attention_scores = 5.0 * arch.heads * s * s * b if eager else 0.0
    per_layer = 34.0 * s * b * h + attention_scores
    if config.get("gradient_checkpointing"):
        kept = layers * 2.0 * s * b * h + per_layer
    else:
        kept = layers * per_layer
    logits = 8.0 * s * b * arch.vocab
    return kept + logits


def plan(
    base_model: str,
    config: Mapping[str, Any],
    gpus: int,
    nodes: int,
    model_config: Mapping[str, Any] | None = None,
) -> Plan:
    label, arch = architecture_of(base_model, model_config)
    world = max(1, gpus) * max(1, nodes)
    per_gpu, trainable, sharding = breakdown(arch, config, world)
    fits = {label: _smallest_count(arch, config, sharding, size) for label, size in GPU_SIZES}
    return Plan(label, arch.params, trainable, world, sharding, per_gpu, fits)


def _smallest_count(arch: Architecture, config: Mapping[str, Any], sharding: str, size: float) -> int | None:
    """The fewest GPUs of `size` bytes that hold the job (the need falls as the count grows)."""

    def fits(n: int) -> bool:
        return breakdown(arch, config, n)[0].total <= size

    if sharding == "none":  # more GPUs do not lower the per-GPU need
        return 1 if fits(1) else None
    if not fits(MAX_GPUS):
        return None
    low, high = 1, MAX_GPUS
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if fits(middle) else (middle + 1, high)
    return low


# ---------------------------------------------------------------- the operator's fit check

GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # NVIDIA GPU feature discovery's node label: MiB per GPU
FIT_MARGIN = 1.25  # "clearly cannot fit": the estimate above the GPU's memory by more than this factor
_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}


def quantity_bytes(quantity: str | int) -> float | None:
    """A Kubernetes quantity (80Gi, 80G, 8e10, 85899345920) in bytes; None when it is not one."""
    if isinstance(quantity, int):
        return float(quantity)
    found = re.fullmatch(
        r"\+?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[KMGTPE]i|[numkMGTPE])?", quantity
    )
    if not found:
        return None
    number, suffix = float(found.group(1)), found.group(2) or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        return number * 10 ** int(suffix[1:])
    return number * _SUFFIXES.get(suffix, 1)


def gpu_memory_of(
    gpu_memory: str | int | None, node_selector: Mapping[str, str] | None
) -> tuple[float, str] | None:
    """Bytes per GPU and where that came from: spec.gpuMemory, else the nodeSelector's GFD label."""
    if gpu_memory is not None:
        memory = quantity_bytes(gpu_memory)
        return (memory, f"spec.gpuMemory ({gpu_memory})") if memory else None
    mib = (node_selector or {}).get(GPU_MEMORY_LABEL, "")
    if mib.isdigit() and int(mib) > 0:
        return int(mib) * 2**20, f"nodeSelector {GPU_MEMORY_LABEL}={mib} (MiB)"
    return None


def fit_check(
    base_model: str,
    config: Mapping[str, Any],
    gpus: int,
    nodes: int,
    gpu_memory: str | int | None,
    node_selector: Mapping[str, str] | None,
) -> tuple[bool, str] | None:
    """(fits, message) when the GPUs' memory is known and the model's architecture too; else None."""
    known = gpu_memory_of(gpu_memory, node_selector)
    if gpus <= 0 or known is None:
        return None
    memory, source = known
    try:
        result = plan(base_model, config, gpus, nodes)
    except PlanError:
        return None
    need = result.per_gpu.total
    if need <= memory * FIT_MARGIN:
        return True, f"the plan estimates {gib(need)} GiB per GPU; the GPUs have {gib(memory)} GiB ({source})"
    elsewhere = ", ".join(
        f"{count} x {label.split(' (')[0]}" for label, count in result.fits.items() if count
    )
    return False, (
        f"the plan estimates {gib(need)} GiB per GPU, clearly more than the {gib(memory)} GiB of "
        f"{source}: training will likely run out of GPU memory. Lower micro_batch_size or sequence_len, "
        "enable gradient_checkpointing, train an adapter on a 4-bit model (load_in_4bit), or shard with "
        f"ZeRO-3/FSDP over more GPUs{'; as configured it fits on ' + elsewhere if elsewhere else ''}. "
        "`axolotl-operator plan FILE` shows the breakdown"
    )


def gib(value: float) -> str:
    return f"{value / GIB:.1f}"


def render_plan(p: Plan) -> str:
    """The plan as text: the breakdown in GiB and the smallest fitting GPU count per GPU size."""
    b = p.per_gpu
    lines = [
        f"model: {p.model}, {p.params / 1e9:.2f}B parameters, {p.trainable_params / 1e6:.1f}M trainable",
        f"GPUs: {p.world_size} ({'sharding ' + p.sharding if p.sharding != 'none' else 'no sharding'})",
        "per GPU (GiB):",
        f"  weights      {gib(b.weights):>8}",
        f"  adapter      {gib(b.trainable):>8}",
        f"  gradients    {gib(b.gradients):>8}",
        f"  optimizer    {gib(b.optimizer):>8}{PAGED_NOTE if b.paged_optimizer else ''}",
        f"  activations  {gib(b.activations):>8}",
        f"  CUDA/alloc   {gib(b.overhead):>8}",
        f"  total        {gib(b.total):>8}  (with {round((FRAGMENTATION - 1) * 100)}% fragmentation)",
        "smallest GPU count that fits, as configured:",
    ]
    for label, count in p.fits.items():
        hint = " (shard with ZeRO-3 or FSDP, or quantize)" if p.sharding == "none" else ""
        verdict = str(count) if count else f"does not fit{hint}"
        lines.append(f"  {label:<28} {verdict}")
    return "\n".join(lines) + "\n"
