"""Native Axolotl configs and orchestration request bodies -> AxolotlJob manifests. Pure.

Credentials found in the input become a Secret manifest referenced from spec.secrets; they never stay
inline in the job. Every input is treated as hostile: a field of the wrong type is refused by name, an id
that looks like a token is never copied into names or annotations, and two different ids never share a
job name (nor, therefore, a `<name>-credentials` Secret).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .api.issues import value_kind
from .api.job import API_VERSION, KIND, MAX_NAME_LENGTH
from .api.secrets_guard import looks_like_secret, redact
from .constants import JOB_LABEL

CREDENTIAL_KEYS = {"hf_token": "hfToken", "wandb_api_key": "wandbApiKey"}
BODY_ANNOTATIONS = {
    "user_id": "axolotl.ai/user-id",
    "model_id": "axolotl.ai/model-id",
    "run_id": "axolotl.ai/run-id",
}
HASH_LENGTH = 8  # hex digits of sha256 appended to a name that had to change: "-1a2b3c4d"
SECRET_SUFFIX = "-credentials"


class ConvertError(ValueError):
    """The input cannot become a job; the message names the field and says what to pass."""


@dataclass
class Converted:
    documents: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def dns_label(text: str) -> str:
    """A DNS-1123 label from free text: 'My Run_01' -> 'my-run-01'."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    label = re.sub(r"-{2,}", "-", label)[:MAX_NAME_LENGTH].strip("-")
    return label


def job_name(text: str, source: str) -> str:
    """`text` if it is a valid job name, else its DNS label plus a hash of `text`, within MAX_NAME_LENGTH.

    Why the hash: sanitising is many-to-one ('Team A/run 1' and 'team-a_run-1' both give 'team-a-run-1',
    and ids sharing their first 50 characters truncate alike), and a shared name means a shared
    `<name>-credentials` Secret that the second apply overwrites. A valid name is kept as written, so a
    caller who reuses an id (or picks one equal to another id's hashed name) still gets the same name.
    """
    label = dns_label(text)
    if not label:
        raise ConvertError(
            f"{source} must contain letters or digits (a-z, 0-9) to make a job name; pass --name"
        )
    if label == text:
        return label
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_LENGTH]
    return f"{label[: MAX_NAME_LENGTH - HASH_LENGTH - 1].rstrip('-')}-{digest}"


def is_request_body(document: Mapping[str, Any]) -> bool:
    return isinstance(document.get("input"), Mapping) and "args" in document["input"]


def convert(
    document: Mapping[str, Any],
    name: str | None = None,
    namespace: str | None = None,
    gpus: int | None = None,
    default_name: str | None = None,
) -> Converted:
    """An AxolotlJob (and a Secret when the input carried credentials).

    The name is `name` (--name), else the request body's run_id, else `default_name` (the file's name);
    one that is not a valid name is sanitised and gets a hash of the original (`job_name`).

    This runs offline and cannot see the cluster, so before applying the output check that neither the
    AxolotlJob `<name>` nor the Secret `<name>-credentials` exists in the namespace. An existing Secret of
    that name is another job's (or someone's planted one) unless it carries the label `axolotl.ai/job=<name>`
    and this run's `axolotl.ai/run-id` annotation, both of which the Secret written here carries. Apply with
    `kubectl create -f` (which refuses to replace an existing object), not `kubectl apply`, or create the
    Secret separately; never commit the output, it holds the credentials.
    """
    if not isinstance(document, Mapping):
        raise ConvertError(
            f"expected an Axolotl config or a request body (a mapping), got {value_kind(document)}"
        )
    warnings: list[str] = []
    annotations: dict[str, str] = {}
    credentials: dict[str, str] = {}
    if is_request_body(document):
        config, annotations, credentials, run_id = _request_body(document["input"], warnings)
        config_path = "input.args"
        sources = [(name, "--name"), (run_id, "input.run_id")]
    else:
        if "input" in document and "base_model" not in document:
            _mapping(document["input"], "input", "{run_id: ..., credentials: {...}, args: {...}}")
            raise ConvertError("input.args: required: the Axolotl config (a mapping with base_model)")
        config, config_path = dict(document), ""
        sources = [(name, "--name"), (default_name, "the file name")]
    for key in CREDENTIAL_KEYS:
        value = _credential(config.pop(key, None), _join(config_path, key))
        if value:
            credentials[key] = value

    text, source = next(((text, source) for text, source in sources if text), (None, ""))
    if text is None:
        raise ConvertError("cannot derive a job name: pass --name NAME (or a run_id in the request body)")
    _refuse_token(text, source)
    name = job_name(text, source)
    if name != text:
        warnings.append(
            f"{source} is not a valid object name: the job is named '{name}' "
            "(sanitised, plus a hash of the original so that different ids never share a name)"
        )
    if "base_model" not in config:
        where = f"{config_path} has" if config_path else "the input has"
        raise ConvertError(f"{where} no base_model: is it an Axolotl config?")

    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {}
    if gpus is not None:
        spec["gpus"] = gpus
    documents: list[dict[str, Any]] = []
    if credentials:
        secret_name = f"{name}{SECRET_SUFFIX}"
        documents.append(_secret(secret_name, name, namespace, annotations, credentials))
        spec["secrets"] = {CREDENTIAL_KEYS[k]: {"name": secret_name, "key": k} for k in sorted(credentials)}
        warnings.append(
            f"credentials moved to Secret '{secret_name}' and referenced from spec.secrets; "
            "do not commit this output to git (create the Secret separately), and apply it with "
            "`kubectl create` so that an existing Secret of that name is never replaced"
        )
    spec["config"] = config
    documents.append({"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec})
    return Converted(documents=documents, warnings=warnings)


def _request_body(
    body: Mapping[str, Any], warnings: list[str]
) -> tuple[dict[str, Any], dict[str, str], dict[str, str], str | None]:
    """(config, annotations, credentials, run_id) of a `{"input": {...}}` request body."""
    config = dict(_mapping(body.get("args"), "input.args", "the Axolotl config, e.g. {base_model: ...}"))
    ids = {key: _id(body.get(key), f"input.{key}") for key in BODY_ANNOTATIONS}
    annotations = {BODY_ANNOTATIONS[key]: value for key, value in ids.items() if value}
    raw = _mapping(body.get("credentials"), "input.credentials", "{hf_token: ..., wandb_api_key: ...}")
    unknown = sorted(str(key) for key in raw if key not in CREDENTIAL_KEYS)
    if unknown:
        warnings.append(f"input.credentials {unknown} are not used by the trainer and were dropped")
    credentials = {}
    for key in CREDENTIAL_KEYS:
        value = _credential(raw.get(key), f"input.credentials.{key}")
        if value:
            credentials[key] = value
    return config, annotations, credentials, ids["run_id"]


def _secret(
    secret_name: str,
    job: str,
    namespace: str | None,
    annotations: Mapping[str, str],
    credentials: Mapping[str, str],
) -> dict[str, Any]:
    """The `<job>-credentials` Secret, labelled with its job (for the check in `convert`'s docstring)."""
    metadata: dict[str, Any] = {"name": secret_name}
    if namespace:
        metadata["namespace"] = namespace
    metadata["labels"] = {JOB_LABEL: job}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": dict(credentials),
    }


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(value: Any, path: str, example: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConvertError(f"{path}: expected a mapping ({example}), got {value_kind(value)}")
    return value


def _credential(value: Any, path: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        quote = "; quote it" if isinstance(value, int | float) else ""  # bools too: `yes`, `on`
        raise ConvertError(f"{path}: expected the token as a string, got {value_kind(value)}{quote}")
    return value


def _id(value: Any, path: str) -> str | None:
    """A user/model/run id as the annotation's string; numbers are accepted as their digits."""
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConvertError(f"{path}: expected a string, got {value_kind(value)}")
    _refuse_token(value, path)
    return value


def _refuse_token(value: str, path: str) -> None:
    """Names and annotations are readable by anyone who can list jobs: never copy a credential into them.

    The guard's detectors: `looks_like_secret` (token-shaped values), and `redact`'s wider net (Hugging
    Face and W&B key formats anywhere in the text), so a 40-hex id (a git commit) is refused too, the price
    secrets_guard already pays in logs.
    """
    if looks_like_secret(path, value) or redact(value) != value:
        raise ConvertError(
            f"{path} looks like an access token; it would be copied into the job's name and annotations, "
            "which anyone who can list jobs reads: pass an id that is not a credential "
            "(and rotate the token if it is a real one)"
        )
