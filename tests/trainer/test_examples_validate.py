"""Every shipped example, rendered by the operator, passes Axolotl's own validator.

Why: the operator only knows Axolotl's keys from a generated list; this runs the real
`validate_config` (Axolotl 0.21.0, as in the image) on exactly what the ConfigMap will hold.
The operator's CLI lives in the repo's Python 3.11 venv, so it runs as a subprocess.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from axolotl_job_runner.validate import validate_raw
from trainer_support import REPO_ROOT

OPERATOR_CLI = REPO_ROOT / ".venv" / "bin" / "axolotl-operator"
EXAMPLES = sorted((REPO_ROOT / "examples").glob("*.yaml"))
AKASH = REPO_ROOT / "examples" / "akash" / "quickstart.yaml"  # a native config: converted first
MOUNT = "/src/config/"


def render_config_map(example: Path, stdin: str | None = None) -> dict[str, str]:
    assert OPERATOR_CLI.exists(), f"{OPERATOR_CLI} is missing: run `make setup` first"
    result = subprocess.run(
        [str(OPERATOR_CLI), "render", "-" if stdin is not None else str(example)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    config_maps = [d for d in yaml.safe_load_all(result.stdout) if d and d.get("kind") == "ConfigMap"]
    assert len(config_maps) == 1, f"{example.name}: expected one ConfigMap"
    return dict(config_maps[0]["data"])


def remount(value: Any, mount: Path) -> Any:
    """Point /src/config/<file> references at the files written under `mount`."""
    if isinstance(value, str) and value.startswith(MOUNT):
        return str(mount / value[len(MOUNT) :])
    if isinstance(value, dict):
        return {k: remount(v, mount) for k, v in value.items()}
    if isinstance(value, list):
        return [remount(v, mount) for v in value]
    return value


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 3, EXAMPLES


def converted(native_config: Path) -> str:
    """`axolotl-operator convert` of a native Axolotl config, as the README shows it."""
    result = subprocess.run(
        [str(OPERATOR_CLI), "convert", str(native_config), "--name", native_config.stem],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO_ROOT,
    )
    return result.stdout


@pytest.mark.parametrize("example", [*EXAMPLES, AKASH], ids=[p.stem for p in EXAMPLES] + ["akash-converted"])
def test_rendered_example_passes_axolotls_validator(example: Path, tmp_path: Path) -> None:
    data = render_config_map(example, stdin=converted(example) if example == AKASH else None)
    for name, text in data.items():  # what the ConfigMap volume mounts at /src/config
        (tmp_path / name).write_text(text, encoding="utf-8")
    raw = yaml.safe_load(data["config.yaml"])
    assert isinstance(raw, dict) and raw.get("base_model")

    validated = validate_raw(remount(raw, tmp_path))  # raises InvalidConfig naming the key

    assert validated["base_model"] == raw["base_model"]
    assert str(validated["output_dir"]).startswith("/workspace/data/")
    if "deepspeed" in raw:
        assert raw["deepspeed"] == MOUNT + "deepspeed.json" and "deepspeed.json" in data
