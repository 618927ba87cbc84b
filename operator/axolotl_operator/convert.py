"""Native Axolotl configs and orchestration request bodies -> AxolotlJob manifests. Pure.

Credentials found in the input become a Secret manifest referenced from spec.secrets; they never stay
inline in the job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .api.job import API_VERSION, KIND, MAX_NAME_LENGTH

CREDENTIAL_KEYS = {"hf_token": "hfToken", "wandb_api_key": "wandbApiKey"}
BODY_ANNOTATIONS = {
    "user_id": "axolotl.ai/user-id",
    "model_id": "axolotl.ai/model-id",
    "run_id": "axolotl.ai/run-id",
}


class ConvertError(ValueError):
    """The input cannot become a job; the message says what to pass."""


@dataclass
class Converted:
    documents: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)


def dns_label(text: str) -> str:
    """A DNS-1123 label from free text: 'My Run_01' -> 'my-run-01'."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    label = re.sub(r"-{2,}", "-", label)[:MAX_NAME_LENGTH].strip("-")
    return label


def is_request_body(document: Mapping[str, Any]) -> bool:
    return isinstance(document.get("input"), Mapping) and "args" in document["input"]


def convert(
    document: Mapping[str, Any],
    name: str | None = None,
    namespace: str | None = None,
    gpus: int | None = None,
) -> Converted:
    """An AxolotlJob (and a Secret when the input carried credentials)."""
    warnings: list[str] = []
    annotations: dict[str, str] = {}
    credentials: dict[str, str] = {}
    if is_request_body(document):
        body = document["input"]
        config = dict(body.get("args") or {})
        for key, annotation in BODY_ANNOTATIONS.items():
            if body.get(key):
                annotations[annotation] = str(body[key])
        if not name and body.get("run_id"):
            name = dns_label(str(body["run_id"]))
        credentials.update({k: str(v) for k, v in (body.get("credentials") or {}).items() if v})
    else:
        config = dict(document)
    for key in CREDENTIAL_KEYS:
        if config.get(key):
            credentials[key] = str(config.pop(key))
        else:
            config.pop(key, None)
    if not name:
        raise ConvertError("cannot derive a job name: pass --name NAME (or a run_id in the request body)")
    name = dns_label(name)
    if not name:
        raise ConvertError("--name must contain letters or digits")
    if "base_model" not in config:
        raise ConvertError("the input has no base_model: is it an Axolotl config?")

    metadata: dict[str, Any] = {"name": name}
    if namespace:
        metadata["namespace"] = namespace
    if annotations:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {}
    if gpus is not None:
        spec["gpus"] = gpus
    documents: list[dict[str, Any]] = []
    unknown = set(credentials) - set(CREDENTIAL_KEYS)
    if unknown:
        warnings.append(f"credentials {sorted(unknown)} are not used by the trainer and were dropped")
    used = {k: v for k, v in credentials.items() if k in CREDENTIAL_KEYS}
    if used:
        secret_name = f"{name}-credentials"
        secret_meta: dict[str, Any] = {"name": secret_name}
        if namespace:
            secret_meta["namespace"] = namespace
        documents.append(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": secret_meta,
                "type": "Opaque",
                "stringData": used,
            }
        )
        spec["secrets"] = {CREDENTIAL_KEYS[k]: {"name": secret_name, "key": k} for k in sorted(used)}
        warnings.append(
            f"credentials moved to Secret '{secret_name}' and referenced from spec.secrets; "
            "do not commit this output to git (create the Secret separately)"
        )
    spec["config"] = config
    documents.append({"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec})
    return Converted(documents=documents, warnings=warnings)
