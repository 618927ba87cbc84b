"""Where a finished run's result is: model files on the volume, the Hub repository, the W&B run.

Why here: the runner's termination summary is the one place the operator learns what a run produced
(`status.outputs`). Files are found by looking at the output directory after training; what only the
training process knows (the Hub push went through, the W&B run's address) is recorded there by the
plugin (ResultsRecorder) in a small JSON file next to the progress state, and read back by the runner.
Stdlib only: the runner imports it without loading the training stack.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")
MODEL_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
MERGED_DIR = "merged"  # where `axolotl merge-lora` (and Axolotl's FSDP merge) put full weights


def results_record(state_file: Path) -> Path:
    """Where rank 0 records what only the training process knows (next to the progress state file)."""
    return state_file.with_name("results.json")


def _has_any(directory: Path, names: tuple[str, ...]) -> bool:
    return any((directory / name).is_file() for name in names)


@dataclass(frozen=True)
class ModelFiles:
    adapter_path: str | None = None  # a LoRA/QLoRA adapter (to load on top of the base model)
    model_path: str | None = None  # full weights: a full fine-tune, or an adapter merged into the base


def model_files(output_dir: Path) -> ModelFiles:
    """The adapter and full-model directories the run left in `output_dir` (merged weights win)."""
    adapter = str(output_dir) if _has_any(output_dir, ADAPTER_FILES) else None
    merged = output_dir / MERGED_DIR
    if _has_any(merged, MODEL_FILES):
        return ModelFiles(adapter, str(merged))
    return ModelFiles(adapter, str(output_dir) if _has_any(output_dir, MODEL_FILES) else None)


def read_record(state_file: Path) -> dict[str, str]:
    """The plugin's record: string values only (it is the training process's word, checked again by
    the operator)."""
    try:
        data = json.loads(results_record(state_file).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {key: value for key, value in data.items() if isinstance(value, str) and value}


def hub_url(repo_id: str) -> str:
    """The repository's page on the Hub the process pushes to (HF_ENDPOINT honoured)."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo_id}"


def wandb_run_url() -> str | None:
    """The active W&B run's page, if W&B is imported and a run is on (offline runs have none)."""
    import sys

    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    try:
        url = getattr(run, "url", None) if run is not None else None
    except Exception:  # an offline or finished run may raise instead of answering None
        return None
    return url if isinstance(url, str) and url.startswith(("https://", "http://")) else None
