"""Summarise a py-spy `--format raw` profile (collapsed stacks): where the samples' time goes.

    .venv/bin/python bench/profile_summary.py bench/results/profile-operator-1000.txt [--top 20]

Prints the share of samples by thread, by package of the innermost frame (ours, kopf, kubernetes,
urllib3, yaml, json, asyncio, ...), the top functions by self time and by inclusive time.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")


def package(path: str) -> str:
    for marker in (
        "axolotl_operator",
        "kopf",
        "kubernetes",
        "urllib3",
        "yaml",
        "aiohttp",
        "json",
        "asyncio",
        "concurrent",
        "threading",
        "ssl",
        "http",
        "socket",
        "selectors",
        "logging",
    ):
        if (
            f"/{marker}/" in path
            or path.endswith(f"/{marker}.py")
            or f"{marker}/" in path.split("site-packages/")[-1][:40]
        ):
            return marker
    return path.rsplit("/", 1)[-1]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    total = 0
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    by_thread: Counter[str] = Counter()
    with open(args.profile) as f:
        lines = f.readlines()
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else ""
        by_thread[re.sub(r"0x[0-9a-f]+", "", thread)[:60]] += n
        calls = [f for f in frames if FRAME.match(f)]
        if not calls:
            continue
        leaf = calls[-1]
        self_time[leaf] += n
        match = FRAME.match(leaf)
        by_package[package(match.group("file")) if match else "?"] += n
        for frame in set(calls):
            inclusive[frame] += n
    if not total:
        print("no samples", file=sys.stderr)
        return 1
    print(f"{total} samples")
    print("\nby package of the innermost frame:")
    for name, n in by_package.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("\nself time:")
    for name, n in self_time.most_common(args.top):
        print(f"  {100 * n / total:5.1f}%  {name[:150]}")
    print("\ninclusive time:")
    for name, n in inclusive.most_common(args.top * 2):
        print(f"  {100 * n / total:5.1f}%  {name[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
