"""`axolotl-operator` with Kopf settings overridden, for measuring them (bench_scale.py --kopf ...).

BENCH_KOPF_SETTINGS="execution.max_workers=32;batching.worker_limit=100" applies each dotted setting
after the operator's own `configure_kopf` (values are Python literals). Nothing else changes.
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Any

import kopf
from axolotl_operator import cli, manager

_original = manager.configure_kopf


def _configure(settings: kopf.OperatorSettings, *args: Any, **kwargs: Any) -> None:
    _original(settings, *args, **kwargs)
    for item in filter(None, os.environ.get("BENCH_KOPF_SETTINGS", "").split(";")):
        path, _, value = item.partition("=")
        *parents, leaf = path.strip().split(".")
        target: Any = settings
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, ast.literal_eval(value.strip()))


manager.configure_kopf = _configure

if __name__ == "__main__":
    sys.exit(cli.main())
