"""Prepared datasets on a shared cache: remove the ones a killed job left half-written.

Why: Axolotl saves a tokenized dataset under `<dataset_prepared_path>/<md5 of its config>` and, next
time, loads any such directory that holds a file at all. `save_to_disk` writes `state.json` (or
`dataset_dict.json`) last, so a job killed while saving leaves a directory every later job with the same
dataset settings fails to load ("neither a Dataset directory nor a DatasetDict directory") until someone
deletes it; on a cache shared by many jobs that is everybody's problem. Axolotl prepares under an OS lock
on `datasets_prep.lock` in that directory; the runner takes the same lock, so it never sees a save in
progress, and removes only hash-named directories without either marker.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

LOG = logging.getLogger("axolotl_job_runner")

LOCK_FILE = "datasets_prep.lock"  # axolotl.utils.data.lock.LOCK_FILE_NAME
COMPLETE_MARKERS = ("state.json", "dataset_dict.json")  # written last by Dataset(Dict).save_to_disk
PREPARED_NAME = re.compile(r"^[0-9a-f]{32}$")  # axolotl.utils.data.utils.md5


def torn(prepared_path: Path) -> list[Path]:
    """Hash-named dataset directories that hold files but no completion marker."""
    if not prepared_path.is_dir():
        return []
    found = []
    for child in sorted(prepared_path.iterdir()):
        if not child.is_dir() or child.is_symlink() or not PREPARED_NAME.match(child.name):
            continue
        if any(child.iterdir()) and not any((child / marker).is_file() for marker in COMPLETE_MARKERS):
            found.append(child)
    return found


def remove_torn(prepared_path: Path) -> list[Path]:
    """Under Axolotl's own lock, remove the torn prepared datasets; returns what was removed."""
    if not prepared_path.is_dir():
        return []
    from filelock import FileLock, Timeout  # Axolotl's dependency: in the image

    lock = FileLock(str(prepared_path / LOCK_FILE))
    try:
        try:
            lock.acquire(timeout=0)
        except Timeout:  # Axolotl would wait for it too, silently: say why the job seems idle
            LOG.info("waiting for another job preparing datasets in %s", prepared_path)
            lock.acquire()
    except OSError as exc:  # a read-only cache: Axolotl will say what it needs; nothing to tidy here
        LOG.warning("cannot lock %s to check for torn prepared datasets: %s", prepared_path, exc)
        return []
    try:
        removed = torn(prepared_path)
        for directory in removed:
            LOG.warning("removing %s: a prepared dataset a killed job left half-written", directory)
            shutil.rmtree(directory, ignore_errors=True)
        return removed
    finally:
        lock.release()
