"""The runner removes prepared datasets a killed job left half-written, under Axolotl's own lock."""

from __future__ import annotations

import threading
from pathlib import Path

from axolotl_job_runner.prepared import LOCK_FILE, remove_torn, torn
from filelock import FileLock

HASH_A, HASH_B, HASH_C = "a" * 32, "b" * 32, "c" * 32


def _dataset(root: Path, name: str, *files: str) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    for file in files:
        (directory / file).write_text("x")
    return directory


def test_only_hash_named_directories_without_a_completion_marker_are_torn(tmp_path: Path) -> None:
    complete = _dataset(tmp_path, HASH_A, "data-00000-of-00001.arrow", "dataset_info.json", "state.json")
    split = _dataset(tmp_path, HASH_B, "dataset_dict.json")
    broken = _dataset(tmp_path, HASH_C, "data-00000-of-00001.arrow")
    _dataset(tmp_path, "d" * 32)  # empty: Axolotl prepares it again anyway
    users = _dataset(tmp_path, "my-notes", "readme.txt")  # not Axolotl's
    assert torn(tmp_path) == [broken]
    assert remove_torn(tmp_path) == [broken]
    assert not broken.exists() and complete.is_dir() and split.is_dir() and users.is_dir()
    assert remove_torn(tmp_path) == []
    assert remove_torn(tmp_path / "missing") == []


def test_it_waits_while_another_job_holds_axolotls_lock(tmp_path: Path) -> None:
    broken = _dataset(tmp_path, HASH_C, "data-00000-of-00001.arrow")
    holder = FileLock(str(tmp_path / LOCK_FILE))
    holder.acquire()
    removed: list[Path] = []
    cleaner = threading.Thread(target=lambda: removed.extend(remove_torn(tmp_path)))
    cleaner.start()
    cleaner.join(timeout=1.0)
    # While the lock is held (another job saving this very dataset), nothing is touched.
    assert cleaner.is_alive() and broken.is_dir() and removed == []
    holder.release()
    cleaner.join(timeout=60)
    assert not cleaner.is_alive() and removed == [broken] and not broken.exists()
