"""Fixtures for the trainer tier (helpers live in trainer_support.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from trainer_support import ProgressServer, TinyModel, make_tiny_model, serve_progress


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    """Built once per session and shared: generating it costs seconds."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def progress_server() -> Iterator[ProgressServer]:
    with serve_progress() as server:
        yield server
