"""The committed axolotl_keys.json must equal what the installed Axolotl generates.

Why: the operator validates `spec.config` against this file; when the pinned Axolotl changes,
this test fails until `hack/gen-axolotl-keys` is rerun and the result committed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
COMMITTED = REPO_ROOT / "operator" / "axolotl_operator" / "data" / "axolotl_keys.json"


def test_regenerated_keys_equal_committed_file() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "hack" / "gen-axolotl-keys"), "-"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout == COMMITTED.read_text(encoding="utf-8"), (
        "operator/axolotl_operator/data/axolotl_keys.json is stale: run "
        "`$(TRAINER_VENV)/bin/python hack/gen-axolotl-keys` and commit the result"
    )


def test_keys_cover_the_contract_the_operator_relies_on() -> None:
    import json

    import axolotl

    data = json.loads(COMMITTED.read_text(encoding="utf-8"))
    assert data["axolotl_version"] == axolotl.__version__
    assert {"base_model", "num_epochs", "datasets", "adapter", "load_in_4bit"} <= set(data["config_keys"])
    assert "epochs" not in data["config_keys"]
    assert {"path", "type", "split"} <= set(data["dataset_keys"])
    assert "adamw_hf" not in data["optimizers"] and "adamw_torch_fused" in data["optimizers"]
    assert {"cosine", "one_cycle", "rex"} <= set(data["lr_schedulers"])
    assert {"lora", "qlora"} <= set(data["adapters"])
    assert "chatml" in data["chat_templates"]
    assert "steps" in data["save_strategies"]
