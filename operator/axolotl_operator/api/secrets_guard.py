"""Refuse manifests that carry a secret inline: the config lands in a ConfigMap, readable by many.

Messages name the field, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..trainer_contract import Env
from .issues import FieldIssue, join_path

FIX = "secrets must not be inline; store it in a Secret and reference it from spec.secrets"
SECRET_KEY_NAMES = frozenset(
    {"hf_token", "hub_token", "huggingface_token", "wandb_api_key", "credentials", "api_key", "access_token"}
)
SECRET_ENV_NAMES = frozenset({Env.HF_TOKEN, "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", Env.WANDB_API_KEY})
HF_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
WANDB_KEY_VALUE = re.compile(r"^(local-)?[0-9a-f]{40}$|^[A-Za-z0-9]{3,}-v1-[A-Za-z0-9_-]{40,}$")
# A 40-hex string is also a git commit id; only suspect it under a key that sounds like a credential.
CREDENTIAL_KEY_HINT = re.compile(r"wandb|token|key|secret|password|credential", re.IGNORECASE)


def _walk(value: Any, path: str) -> Iterator[tuple[str, str, Any]]:
    """Yield (path, key, value) for every mapping entry and list item below `value`."""
    if isinstance(value, Mapping):
        for key, child in value.items():
            child_path = join_path(path, str(key))
            yield child_path, str(key), child
            yield from _walk(child, child_path)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            child_path = join_path(path, index)
            yield child_path, "", child
            yield from _walk(child, child_path)


LOG_TOKEN = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}\b"  # Hugging Face
    r"|\b(local-)?[0-9a-f]{40}\b|\b[A-Za-z0-9]{3,}-v1-[A-Za-z0-9_-]{40,}"  # W&B (and git SHAs: a fair price)
)


def redact(text: str) -> str:
    """Mask token-looking strings in text the operator repeats (a trainer's log tail, its error)."""
    return LOG_TOKEN.sub("[redacted]", text)


def looks_like_secret(key: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if HF_TOKEN_VALUE.search(value):
        return True
    return bool(CREDENTIAL_KEY_HINT.search(key) and WANDB_KEY_VALUE.match(value.strip()))


def find_inline_secrets(config: Any, env: Any, config_base: str = "spec.config") -> list[FieldIssue]:
    """Every place in the config or the extra env that holds a credential."""
    issues: list[FieldIssue] = []
    for path, key, value in _walk(config, config_base):
        if any(path.startswith((issue.path + ".", issue.path + "[")) for issue in issues):
            continue  # inside a block already refused as a whole
        if key.lower() in SECRET_KEY_NAMES and value not in (None, "", {}):
            issues.append(FieldIssue(path, f"'{key}' holds a credential; {FIX}"))
        elif looks_like_secret(key, value):
            issues.append(FieldIssue(path, f"this value looks like an access token; {FIX}"))
    for index, var in enumerate(env or []):
        if not isinstance(var, Mapping) or var.get("value") in (None, ""):
            continue
        name = str(var.get("name", ""))
        path = join_path("spec.env", index, "value")
        if name.upper() in SECRET_ENV_NAMES:
            issues.append(FieldIssue(path, f"{name} must not be a literal value; {FIX}"))
        elif looks_like_secret(name, var["value"]):
            issues.append(
                FieldIssue(
                    path, f"the value of {name} looks like an access token; use valueFrom.secretKeyRef"
                )
            )
    return issues
