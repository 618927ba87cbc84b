"""Benchmark the pure core: parse (validate + translate) and render every example, and the CLI start-up.

    .venv/bin/python bench/bench_api.py [--rounds 200]

Prints medians from one run; compare numbers only within one run (the machines are shared and noisy).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from axolotl_operator.api import KIND, parse_job
from axolotl_operator.crd import crd_yaml
from axolotl_operator.render import render
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.yamlio import load_all

REPO = Path(__file__).resolve().parents[1]


def median_us(fn, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    settings = OperatorSettings()
    manifests = [
        doc
        for path in sorted((REPO / "examples").glob("*.yaml"))
        for doc in load_all(path.read_text())
        if doc.get("kind") == KIND
    ]
    print(f"{len(manifests)} example jobs, {args.rounds} rounds, medians")
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        parse = median_us(lambda m=manifest: parse_job(m), args.rounds)
        parsed = parse_job(manifest)
        rendered = median_us(lambda p=parsed: render(p, settings, "ml").manifests(), args.rounds)
        print(f"  {name:<16} parse_job {parse:8.0f} us   render {rendered:6.0f} us")
    print(f"  crd generation {median_us(crd_yaml, 20) / 1000:8.1f} ms")
    quickstart = str(REPO / "examples" / "quickstart.yaml")
    cli = [sys.executable, "-m", "axolotl_operator.cli", "validate", quickstart]
    startup = median_us(lambda: subprocess.run(cli, capture_output=True, check=True), 10)
    print(f"  CLI validate (process start to exit) {startup / 1000:8.1f} ms")


if __name__ == "__main__":
    main()
