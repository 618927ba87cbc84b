"""`status.outputs`: where a job's result is, from the runner's termination summary.

Why checked again here: the summary is the training container's word (a custom image or the training
code writes whatever it likes into the termination message), and `status` is read by people, dashboards
and GitOps tools. A value is shown only if it is what it claims to be: a path an absolute, clean path; a
URL http(s) without credentials, query or fragment (a token in a URL must never reach the status).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from ..api.status import Outputs
from .model import JobFacts

MAX_PATH = 1024
MAX_URL = 512
MAX_REPO_ID = 128
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def clean_path(value: Any) -> str | None:
    """An absolute path without `..`, control characters or excessive length; else None."""
    if not isinstance(value, str) or not value.startswith("/") or len(value) > MAX_PATH:
        return None
    if _CONTROL.search(value) or ".." in value.split("/"):
        return None
    return value


def clean_url(value: Any) -> str | None:
    """An http(s) URL with a host and no user info, query or fragment; else None."""
    if not isinstance(value, str) or len(value) > MAX_URL or _CONTROL.search(value) or " " in value:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        return None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        return None
    if parts.username is not None or parts.password is not None or parts.query or parts.fragment:
        return None
    return value


def clean_repo_id(value: Any) -> str | None:
    """A Hub repository id (`name` or `owner/name`); else None."""
    if isinstance(value, str) and len(value) <= MAX_REPO_ID and _REPO_ID.match(value):
        return value
    return None


def outputs_of(
    previous: Mapping[str, Any], summary: Mapping[str, Any] | None, facts: JobFacts
) -> Outputs | None:
    """The previous outputs updated with what the newest summary shows (clean values only). `result`
    is the one place to fetch the model from: the Hub page when pushed, else full weights, else the
    adapter."""
    outputs = dict(previous)
    summary = summary or {}
    candidates = {
        "outputDir": clean_path(summary.get("outputDir")) or facts.output_dir,
        "hubModelId": clean_repo_id(summary.get("hubModelId")) or facts.hub_model_id,
        "lastCheckpoint": clean_path(summary.get("lastCheckpoint")),
        "adapterPath": clean_path(summary.get("adapterPath")),
        "modelPath": clean_path(summary.get("modelPath")),
        "hubUrl": clean_url(summary.get("hubUrl")),
        "wandbUrl": clean_url(summary.get("wandbUrl")),
    }
    outputs.update({key: value for key, value in candidates.items() if value})
    result = outputs.get("hubUrl") or outputs.get("modelPath") or outputs.get("adapterPath")
    if result:
        outputs["result"] = result
    return Outputs.model_validate(outputs) if outputs else None
