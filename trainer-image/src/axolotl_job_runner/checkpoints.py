"""Finding the checkpoint to resume from and to report."""

from __future__ import annotations

import json
import re
from pathlib import Path

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"


def complete_checkpoints(output_dir: Path) -> list[Path]:
    """Checkpoints under output_dir that finished saving, oldest step first.

    Why the check: a pod killed while saving leaves a directory without (or with a torn)
    trainer_state.json, which transformers writes last; resuming from it would crash.
    """
    if not output_dir.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for child in output_dir.iterdir():
        match = _CHECKPOINT.match(child.name)
        if not match or not child.is_dir():
            continue
        try:
            json.loads((child / TRAINER_STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    checkpoints = complete_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None
