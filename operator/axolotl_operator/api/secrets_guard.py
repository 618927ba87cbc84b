"""Refuse manifests that carry a secret inline: the config lands in a ConfigMap, readable by many, and
labels, annotations and env values are shown by `kubectl describe` to anyone who can read the pod.

Where it looks: every key and value of spec.config, literal env values, the pods' labels and annotations,
queueName and nodeSelector. What counts: Axolotl's credential keys (hf/wandb/comet, *_api_key,
*password*, ...), token-shaped values (Hugging Face, W&B), URLs with a password, literal values of
secret-named variables (*_TOKEN, *SECRET*, *_API_KEY, *PASSWORD*). Messages name the field, never the
value; a token used as a key is not repeated either. One pass over the spec: linear in its size.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

from ..trainer_contract import Env
from .issues import FieldIssue, join_path

FIX = "secrets must not be inline; store it in a Secret and reference it from spec.secrets"
ENV_FIX = "use valueFrom.secretKeyRef (or spec.secrets for HF_TOKEN and WANDB_API_KEY)"
MAX_ISSUES = 20  # enough to fix a manifest; a hostile one does not get a megabyte of errors
SECRET_KEY_NAMES = frozenset(
    {
        "hf_token",
        "hub_token",
        "huggingface_token",
        "wandb_api_key",
        "comet_api_key",
        "credentials",
        "api_key",
        "access_token",
        "token",
    }
)
# Credential-looking config keys beyond Axolotl's own (pad_token, eos_token, ... are not credentials).
CREDENTIAL_KEY = re.compile(
    r"(^|_)(api_?key|secret(_access)?_key|secret|password|passwd|access_key(_id)?|auth_token)$", re.IGNORECASE
)
SECRET_ENV_NAMES = frozenset({Env.HF_TOKEN, "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", Env.WANDB_API_KEY})
SECRET_ENV_NAME = re.compile(
    r"(^|_)TOKEN$|SECRET|_API_?KEY$|PASSWORD|PASSWD|_CREDENTIALS?$|_PAT$", re.IGNORECASE
)
# A secret-named variable set to one of these is a switch (HF_HUB_DISABLE_IMPLICIT_TOKEN=1), not a secret.
SETTING_VALUES = frozenset({"0", "1", "true", "false", "yes", "no", "on", "off"})
HF_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{30,}\b")
WANDB_KEY_VALUE = re.compile(r"^(local-)?[0-9a-f]{40}$|^[A-Za-z0-9]{3,}-v1-[A-Za-z0-9_-]{40,}$")
# Bounded repeats: a megabyte of letters must not make the scan quadratic.
URL_WITH_PASSWORD = re.compile(  # user:password@, or a token as the user name
    r"\b[A-Za-z][A-Za-z0-9+.-]{0,31}://"
    r"([^/\s:@]{0,256}:[^/\s@]{1,256}|(ghp|gho|ghs|github_pat|glpat|hf)_[^/\s:@]{8,256})@"
)
# A 40-hex string is also a git commit id; only suspect it under a key that sounds like a credential.
CREDENTIAL_KEY_HINT = re.compile(r"wandb|token|key|secret|password|credential", re.IGNORECASE)

LOG_TOKEN = re.compile(
    r"(?<=://)[^/\s:@]{0,256}:[^/\s@]{1,256}(?=@)"  # a URL's user:password
    r"|\bhf_[A-Za-z0-9]{30,}\b"  # Hugging Face
    r"|\b(local-)?[0-9a-f]{40}\b|\b[A-Za-z0-9]{3,}-v1-[A-Za-z0-9_-]{40,}"  # W&B (and git SHAs: a fair price)
)


def redact(text: str) -> str:
    """Mask token-looking strings in text the operator repeats (a trainer's log tail, its error)."""
    return LOG_TOKEN.sub("[redacted]", text)


def token_shaped(text: str) -> bool:
    """A value that is a credential whatever its key: a Hugging Face token or a URL with a password."""
    return bool(HF_TOKEN_VALUE.search(text) or URL_WITH_PASSWORD.search(text))


def looks_like_secret(key: str, value: Any) -> bool:
    if not isinstance(value, str):
        return False
    if token_shaped(value):
        return True
    return bool(CREDENTIAL_KEY_HINT.search(key) and WANDB_KEY_VALUE.match(value.strip()))


def _credential_key(key: str) -> bool:
    return key.lower() in SECRET_KEY_NAMES or bool(CREDENTIAL_KEY.search(key))


def _config_issues(config: Any, base: str) -> Iterator[FieldIssue]:
    """Depth-first over the config; a refused entry is not searched further (one issue per block)."""
    stack: list[tuple[str, str, Any]] = [(base, "", config)]
    while stack:
        path, key, value = stack.pop()
        if key and token_shaped(key):  # `path` is the parent's: the key is not repeated
            yield FieldIssue(join_path(path, "<key>"), f"a key looks like an access token; {FIX}")
            continue
        if key and _credential_key(key) and value not in (None, "", {}) and not isinstance(value, bool):
            yield FieldIssue(path, f"'{key}' holds a credential; {FIX}")
            continue
        if looks_like_secret(key, value):
            yield FieldIssue(path, f"this value looks like an access token or a password; {FIX}")
            continue
        if isinstance(value, Mapping):
            items = [
                (join_path(path, str(k)) if not token_shaped(str(k)) else path, str(k), v)
                for k, v in value.items()
            ]
            stack.extend(reversed(items))
        elif isinstance(value, list):
            stack.extend(reversed([(join_path(path, i), "", v) for i, v in enumerate(value)]))


def _env_issues(env: Any) -> Iterator[FieldIssue]:
    for index, var in enumerate(env if isinstance(env, list) else []):
        if not isinstance(var, Mapping) or var.get("value") in (None, ""):
            continue
        name = str(var.get("name", ""))
        path = join_path("spec.env", index, "value")
        setting = str(var["value"]).strip().lower() in SETTING_VALUES
        if name.upper() in SECRET_ENV_NAMES or (SECRET_ENV_NAME.search(name) and not setting):
            yield FieldIssue(path, f"{name} must not be a literal value; {ENV_FIX}")
        elif looks_like_secret(name, var["value"]):
            yield FieldIssue(path, f"the value of {name} looks like an access token; {ENV_FIX}")


def _command_issues(spec: Mapping[str, Any]) -> Iterator[FieldIssue]:
    """spec.command and spec.args end up in the pod spec, readable by anyone who can read pods: a token,
    or the value of a credential flag (`--hf-token X`, `--api-key=X`), is refused."""
    for field in ("command", "args"):
        words = spec.get(field)
        words = [str(w) for w in words] if isinstance(words, list) else []
        for index, word in enumerate(words):
            flag, equals, value = word.partition("=")
            flag_name = flag.lstrip("-").replace("-", "_")
            credential_flag = flag.startswith("-") and flag_name and _credential_key(flag_name)
            following = index + 1 < len(words) and not words[index + 1].startswith("-")
            if token_shaped(word) or (credential_flag and ((equals and value) or (not equals and following))):
                at = index + 1 if credential_flag and not equals and not token_shaped(word) else index
                yield FieldIssue(join_path(f"spec.{field}", at), f"this looks like an access token; {FIX}")


def _metadata_issues(spec: Mapping[str, Any]) -> Iterator[FieldIssue]:
    """Values that become labels, annotations or selectors are shown to everyone who can read pods."""
    pod_meta = spec.get("podMetadata") if isinstance(spec.get("podMetadata"), Mapping) else {}
    places: list[tuple[str, Any]] = [
        ("spec.podMetadata.labels", pod_meta.get("labels")),
        ("spec.podMetadata.annotations", pod_meta.get("annotations")),
        ("spec.nodeSelector", spec.get("nodeSelector")),
    ]
    for base, mapping in places:
        for key, value in (mapping or {}).items() if isinstance(mapping, Mapping) else ():
            if token_shaped(str(key)):
                yield FieldIssue(f"{base}[<key>]", f"a key looks like an access token; {FIX}")
            elif looks_like_secret(str(key), value):
                yield FieldIssue(join_path(base, str(key)), f"this value looks like an access token; {FIX}")
    queue = spec.get("queueName")
    if isinstance(queue, str) and token_shaped(queue):
        yield FieldIssue("spec.queueName", f"this value looks like an access token; {FIX}")


def find_spec_secrets(spec: Mapping[str, Any]) -> list[FieldIssue]:
    """Every place in an AxolotlJob's spec that holds a credential (at most MAX_ISSUES)."""
    found = [
        *_config_issues(spec.get("config"), "spec.config"),
        *_env_issues(spec.get("env")),
        *_command_issues(spec),
        *_metadata_issues(spec),
    ]
    return _bounded(found)


def _bounded(issues: list[FieldIssue]) -> list[FieldIssue]:
    if len(issues) <= MAX_ISSUES:
        return issues
    more = FieldIssue("spec", f"... and {len(issues) - MAX_ISSUES} more inline credentials")
    return [*issues[:MAX_ISSUES], more]
