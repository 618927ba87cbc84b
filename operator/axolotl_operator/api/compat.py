"""Stale Axolotl options: translated to what Axolotl reads now, or rejected before a GPU is allocated.

Axolotl's validator drops keys it does not know, so a stale key would silently train something else.
Each rule works on the raw config (a copy) and reports a warning or an error naming the old and new key.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .issues import FieldIssue, config_path

Config = dict[str, Any]

RENAMED_KEYS = {
    "epochs": "num_epochs",
    "dataset_processes": "dataset_num_proc",
}
REPLACED_OPTIMIZERS = {
    "adamw_hf": "adamw_torch",  # removed from transformers
    "adamw_apex_fused": "adamw_torch_fused",  # removed from transformers
}
LEGACY_ATTENTION_FLAGS = {  # flag -> attn_implementation; Axolotl's own priority order
    "xformers_attention": "xformers",
    "sage_attention": "sage",
    "flex_attention": "flex_attention",
    "flash_attention": "flash_attention_2",
    "sdp_attention": "sdpa",
    "eager_attention": "eager",
}
REMOVED_FLAGS = {
    "s2_attention": "shifted sparse attention was removed from Axolotl; remove the key "
    "(for long contexts use attn_implementation: flash_attention_2 with sample_packing)",
    "flash_attn_rms_norm": "the flash-attention RMSNorm patch was removed from Axolotl; remove the key",
}
DETECTED_FAMILY_FLAGS = (
    "is_falcon_derived_model",
    "is_llama_derived_model",
    "is_qwen_derived_model",
    "is_mistral_derived_model",
)
FSDP1_OPTIONS = {  # items of the legacy `fsdp` list -> FSDP2 fsdp_config entries
    "full_shard": ("reshard_after_forward", True),
    "shard_grad_op": ("reshard_after_forward", False),
    "offload": ("offload_params", True),
    "auto_wrap": ("auto_wrap_policy", "TRANSFORMER_BASED_WRAP"),
}


@dataclass
class Translation:
    """The translated config and what was said about it."""

    config: Config
    warnings: list[FieldIssue] = field(default_factory=list)
    errors: list[FieldIssue] = field(default_factory=list)

    def warn(self, message: str, *path: str | int) -> None:
        self.warnings.append(FieldIssue(config_path(*path), message))

    def fail(self, message: str, *path: str | int) -> None:
        self.errors.append(FieldIssue(config_path(*path), message))


def translate_config(config: Config) -> Translation:
    """Apply every rule to a deep copy of `config`."""
    result = Translation(copy.deepcopy(config))
    for rule in RULES:
        rule(result)
    return result


def _renamed_keys(t: Translation) -> None:
    for old, new in RENAMED_KEYS.items():
        if old not in t.config:
            continue
        value = t.config[old]
        if new in t.config and t.config[new] != value:
            t.fail(
                f"'{old}' is the old name of '{new}' and both are set to different values; keep only '{new}'",
                old,
            )
            continue
        if new in t.config:
            del t.config[old]
        else:
            t.config = _rename(t.config, old, new)
        t.warn(f"'{old}' is not an Axolotl key (it would be ignored); translated to '{new}: {value}'", old)


def _rename(config: Config, old: str, new: str) -> Config:
    """The same mapping with `old` renamed to `new` in place, so the user's key order survives."""
    return {new if key == old else key: value for key, value in config.items()}


def _optimizer(t: Translation) -> None:
    old = t.config.get("optimizer")
    if isinstance(old, str) and old in REPLACED_OPTIMIZERS:
        new = REPLACED_OPTIMIZERS[old]
        t.config["optimizer"] = new
        t.warn(
            f"optimizer '{old}' was removed from transformers (the job would crash); using '{new}'",
            "optimizer",
        )


def _attention_flags(t: Translation) -> None:
    enabled = [flag for flag in LEGACY_ATTENTION_FLAGS if t.config.get(flag) is True]
    explicit = t.config.get("attn_implementation")
    if explicit and enabled:
        t.fail(
            f"'{enabled[0]}' cannot be combined with attn_implementation: {explicit}; "
            "remove the deprecated flag",
            enabled[0],
        )
        return
    if len(enabled) > 1:
        choices = ", ".join(f"{f} -> {LEGACY_ATTENTION_FLAGS[f]}" for f in enabled)
        t.fail(f"several attention flags are true ({choices}); set only attn_implementation", enabled[1])
        return
    for flag in LEGACY_ATTENTION_FLAGS:
        if flag not in t.config:
            continue
        value = t.config.pop(flag)
        if value is True:
            impl = LEGACY_ATTENTION_FLAGS[flag]
            t.config["attn_implementation"] = impl
            t.warn(f"'{flag}' is deprecated; translated to 'attn_implementation: {impl}'", flag)
        else:
            t.warn(f"'{flag}: {value}' is deprecated and has no effect; removed", flag)


def _removed_flags(t: Translation) -> None:
    for flag, why in REMOVED_FLAGS.items():
        if flag not in t.config:
            continue
        if t.config[flag]:
            t.fail(why, flag)
        else:
            del t.config[flag]
            t.warn(f"'{flag}' no longer exists in Axolotl; removed", flag)


def _family_flags(t: Translation) -> None:
    for flag in DETECTED_FAMILY_FLAGS:
        if flag in t.config:
            del t.config[flag]
            t.warn(f"'{flag}' is internal: Axolotl detects the model family itself; removed", flag)


def _flash_optimum(t: Translation) -> None:
    if t.config.get("flash_optimum"):
        t.warn(
            "'flash_optimum' (BetterTransformer) is legacy and unsupported with transformers 5; "
            "prefer attn_implementation: sdpa",
            "flash_optimum",
        )


def _rope_scaling(t: Translation) -> None:
    overrides = t.config.get("overrides_of_model_config")
    # Top-level spelling, rejected by Axolotl.
    if "rope_scaling" in t.config and (isinstance(overrides, dict) or overrides is None):
        overrides = dict(overrides or {})
        overrides["rope_scaling"] = t.config.pop("rope_scaling")
        t.config["overrides_of_model_config"] = overrides
        t.warn("'rope_scaling' belongs under overrides_of_model_config; moved", "rope_scaling")
    if not isinstance(overrides, dict) or "rope_scaling" not in overrides:
        return
    scaling = overrides.pop("rope_scaling")
    if not isinstance(scaling, dict):
        overrides["rope_scaling"] = scaling
        return
    params = dict(scaling)
    if "type" in params:
        legacy_type = params.pop("type")
        params.setdefault("rope_type", legacy_type)
    if "rope_parameters" in overrides:
        t.fail(
            "both rope_scaling (transformers < 5) and rope_parameters are set; keep only rope_parameters",
            "overrides_of_model_config",
            "rope_scaling",
        )
        overrides["rope_scaling"] = scaling
        return
    overrides["rope_parameters"] = params
    t.warn(
        "rope_scaling.type fails on transformers 5; translated to rope_parameters.rope_type",
        "overrides_of_model_config",
        "rope_scaling",
    )


def _fsdp(t: Translation) -> None:
    fsdp_config = t.config.get("fsdp_config")
    if isinstance(fsdp_config, dict):
        renamed = {}
        for key, value in fsdp_config.items():
            new_key = key.removeprefix("fsdp_") if key.startswith("fsdp_") and key != "fsdp_version" else key
            renamed[new_key] = value
        if renamed != fsdp_config:
            t.config["fsdp_config"] = renamed
            t.warn("FSDP1 'fsdp_' prefixes in fsdp_config keys dropped (FSDP2 spelling)", "fsdp_config")
    version = t.config.get("fsdp_version")
    if version is not None and str(version) != "2":
        t.fail("Axolotl removed FSDP1; set fsdp_version: 2", "fsdp_version")
    if "fsdp" not in t.config:
        return
    legacy = t.config.pop("fsdp")
    if not isinstance(legacy, str | list | None):
        t.fail("'fsdp' is a list of FSDP1 options; use fsdp_config (FSDP2) instead", "fsdp")
        return
    items = legacy.split() if isinstance(legacy, str) else list(legacy or [])
    if not items:
        t.warn("empty 'fsdp' removed", "fsdp")
        return
    config = dict(t.config.get("fsdp_config") or {})
    for item in items:
        if not isinstance(item, str) or item not in FSDP1_OPTIONS:
            t.fail(f"unknown FSDP1 option '{item}'; use fsdp_config (FSDP2) instead", "fsdp")
            continue
        key, value = FSDP1_OPTIONS[item]
        config.setdefault(key, value)
    t.config["fsdp_config"] = config
    t.config.setdefault("fsdp_version", 2)
    t.warn(
        f"the 'fsdp' list (FSDP1) is rejected by Axolotl; "
        f"translated to fsdp_version: 2 and fsdp_config {config}",
        "fsdp",
    )


RULES: tuple[Callable[[Translation], None], ...] = (
    _renamed_keys,
    _optimizer,
    _attention_flags,
    _removed_flags,
    _family_flags,
    _flash_optimum,
    _rope_scaling,
    _fsdp,
)
