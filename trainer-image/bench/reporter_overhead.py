#!/usr/bin/env python3
"""Throughput of the same tiny LoRA run with and without the progress reporter.

The prepared device check of the trainer issue: run it with the trainer venv's python on a GPU
machine (it also runs on a CPU, as a smoke test of the script itself):

    $(TRAINER_VENV)/bin/python trainer-image/bench/reporter_overhead.py --device gpu --repeats 3

"with" = `axolotl-job-runner` (progress plugin on, POSTing to a loopback endpoint every 5 s);
"without" = Axolotl's own `axolotl train` on the identical config. Throughput is Axolotl's
trainable tokens (`tokens/trainable`, last log) divided by its `train_runtime`, so model loading
and process start-up are excluded. Runs alternate to spread drift; the medians are compared.
Prints one JSON object; numbers belong in trainer-image/README.md with the command and device.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "tests" / "trainer"))

from trainer_support import (  # noqa: E402 - needs the path above
    RUNNER,
    cpu_lora_config,
    make_tiny_model,
    run_runner,
    runner_env,
    serve_progress,
)

_LOG_DICT = re.compile(r"\{'[^{}]*\}")


def parse_logs(output: str) -> tuple[float, float]:
    """(trainable tokens, train_runtime seconds) from Axolotl's printed log dicts."""
    tokens = runtime = None
    for match in _LOG_DICT.finditer(output):
        try:
            logs: dict[str, Any] = ast.literal_eval(match.group(0))
        except (ValueError, SyntaxError):
            continue
        if "tokens/trainable" in logs:
            tokens = float(logs["tokens/trainable"])
        if "train_runtime" in logs:
            runtime = float(logs["train_runtime"])
    if tokens is None or runtime is None:
        raise RuntimeError("could not find tokens/trainable and train_runtime in the output")
    return tokens, runtime


def one_run(mode: str, config: dict[str, Any], work: Path, extra_env: dict[str, str]) -> dict[str, float]:
    work.mkdir(parents=True)
    env = runner_env(work, config, **extra_env)
    if mode == "with":
        result = run_runner(work, env, timeout=1800)
        output, code = result.output, result.returncode
    else:
        axolotl = Path(sys.executable).parent / "axolotl"
        launcher = "python" if env.get("NPROC_PER_NODE") == "0" else "accelerate"
        done = subprocess.run(
            [str(axolotl), "train", str(work / "config" / "config.yaml"), f"--launcher={launcher}"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        output, code = done.stdout + done.stderr, done.returncode
    if code != 0:
        raise RuntimeError(f"{mode} run failed ({code}):\n{output[-4000:]}")
    tokens, runtime = parse_logs(output)
    return {"tokens": tokens, "train_runtime": runtime, "tokens_per_second": tokens / runtime}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["gpu", "cpu"], default="gpu")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=8)
    args = parser.parse_args()
    assert RUNNER.exists(), f"{RUNNER} missing: run hack/trainer-venv first"

    root = Path(tempfile.mkdtemp(prefix="reporter-overhead-"))
    tiny = make_tiny_model(root / "model", hidden_size=args.hidden, layers=args.layers)
    gpu = args.device == "gpu"
    results: dict[str, list[dict[str, float]]] = {"with": [], "without": []}
    with serve_progress() as server:
        for i in range(args.repeats):
            for mode in ("without", "with") if i % 2 == 0 else ("with", "without"):
                work = root / f"{mode}-{i}"
                config = cpu_lora_config(
                    tiny,
                    work,
                    max_steps=args.steps,
                    save_steps=args.steps,
                    micro_batch_size=args.micro_batch,
                    bf16=gpu,
                    attn_implementation="sdpa" if gpu else "eager",
                )
                extra = {"NPROC_PER_NODE": "1" if gpu else "0", "AXOLOTL_PROGRESS_URL": server.url}
                if gpu:
                    extra["CUDA_VISIBLE_DEVICES"] = "0"
                started = time.monotonic()
                results[mode].append(one_run(mode, config, work, extra))
                results[mode][-1]["wall_seconds"] = time.monotonic() - started
        reports = len(server.received)
    with_tps = statistics.median(r["tokens_per_second"] for r in results["with"])
    without_tps = statistics.median(r["tokens_per_second"] for r in results["without"])
    print(
        json.dumps(
            {
                "device": args.device,
                "steps": args.steps,
                "repeats": args.repeats,
                "hidden": args.hidden,
                "layers": args.layers,
                "median_tokens_per_second_with_reporter": round(with_tps, 1),
                "median_tokens_per_second_without_reporter": round(without_tps, 1),
                "reporter_overhead_percent": round(100 * (without_tps - with_tps) / without_tps, 2),
                "progress_reports_received": reports,
                "runs": results,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
