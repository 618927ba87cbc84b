"""`axolotl-operator` with Kopf settings overridden, for measuring them (bench_scale.py --kopf ...).

BENCH_KOPF_SETTINGS="execution.max_workers=32;batching.worker_limit=100" applies each dotted setting
after the operator's own `configure_kopf` (values are Python literals). BENCH_TRACEMALLOC=FILE traces
allocations and rewrites FILE every 20 s with the live memory by source file and line (where the RSS
goes); BENCH_TRACEMALLOC_FRAMES=N (default 1) keeps N frames per allocation and adds the biggest
tracebacks, which name who holds the memory. Nothing else changes.
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


def _trace_memory(path: str, every: float = 20.0) -> None:
    import threading
    import time
    import tracemalloc

    frames = int(os.environ.get("BENCH_TRACEMALLOC_FRAMES") or 1)
    tracemalloc.start(frames)

    def dump() -> None:
        while True:
            time.sleep(every)
            snapshot = tracemalloc.take_snapshot()
            by_file = snapshot.statistics("filename")
            by_line = snapshot.statistics("lineno")
            total = sum(stat.size for stat in by_file)
            lines = [f"traced {total / 2**20:.1f} MiB"]
            lines += [f"{stat.size / 2**20:8.2f} MiB {stat.traceback}" for stat in by_file[:25]]
            lines += ["", "by line:"] + [
                f"{stat.size / 2**20:8.2f} MiB {stat.traceback}" for stat in by_line[:25]
            ]
            if frames > 1:
                for stat in snapshot.statistics("traceback")[:15]:
                    lines += ["", f"{stat.size / 2**20:8.2f} MiB in {stat.count} blocks from:"]
                    lines += [f"    {line}" for line in stat.traceback.format(most_recent_first=True)]
            with open(path, "w") as handle:
                handle.write("\n".join(lines) + "\n")

    threading.Thread(target=dump, name="tracemalloc-dump", daemon=True).start()


if os.environ.get("BENCH_TRACEMALLOC"):
    _trace_memory(os.environ["BENCH_TRACEMALLOC"])

if __name__ == "__main__":
    sys.exit(cli.main())
