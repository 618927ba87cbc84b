"""Shared builders for the unit tests: manifests small enough to read in the test that uses them.

Golden files (tests/unit/snapshots/) are only compared, never rewritten by a normal run. After an
intended change, `UPDATE_SNAPSHOTS=1 make unit` rewrites the ones that differ and fails those tests
("snapshot updated"); review the diff, commit it, and re-run without the variable.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"

BASE_MANIFEST: dict[str, Any] = {
    "apiVersion": "axolotl.ai/v1alpha1",
    "kind": "AxolotlJob",
    "metadata": {"name": "demo", "namespace": "ml"},
    "spec": {
        "config": {
            "base_model": "NousResearch/Llama-3.2-1B",
            "adapter": "lora",
            "datasets": [{"path": "teknium/GPT4-LLM-Cleaned", "type": "alpaca"}],
        }
    },
}


def manifest(config: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """BASE_MANIFEST with config keys and spec fields replaced (None removes a config key)."""
    result = copy.deepcopy(BASE_MANIFEST)
    for key, value in (config or {}).items():
        if value is None:
            result["spec"]["config"].pop(key, None)
        else:
            result["spec"]["config"][key] = value
    result["spec"].update(spec)
    return result


@pytest.fixture
def make_manifest():
    return manifest
