"""Validation findings that name the field they concern, e.g. `spec.config.lora_r`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

CONFIG_PATH = "spec.config"


@dataclass(frozen=True)
class FieldIssue:
    """One problem (or warning) about one field of the manifest."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SpecError(ValueError):
    """The manifest cannot run; every issue names its field and the fix."""

    def __init__(self, errors: Iterable[FieldIssue], warnings: Iterable[FieldIssue] = ()) -> None:
        self.errors = tuple(errors)
        self.warnings = tuple(warnings)
        super().__init__("; ".join(str(e) for e in self.errors))


def config_path(*parts: str | int) -> str:
    """`spec.config` plus keys and indices: ('datasets', 0, 'path') -> spec.config.datasets[0].path."""
    return join_path(CONFIG_PATH, *parts)


def join_path(base: str, *parts: str | int) -> str:
    path = base
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path


def value_kind(value: Any) -> str:
    """'a list', 'a number', ...: what the user wrote instead, without repeating the value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"
