"""Axolotl 0.21 in several processes without a GPU (a CPU multi-node job over gloo).

Axolotl assumes CUDA whenever WORLD_SIZE > 1, in three places that break a CPU job:
- `prepare_optim_env` asks `torch.cuda.can_device_access_peer`, which raises "Found no NVIDIA driver";
- `normalize_config` sets `device_map = {"": LOCAL_RANK}`, an integer, which transformers reads as
  `cuda:<LOCAL_RANK>` and fails to load the model onto;
- its accelerate `PartialState`s (Axolotl's own, then the Trainer's) are made without `cpu=True`, so
  accelerate calls the job "not distributed": Axolotl's barriers do nothing and every process
  silently trains the whole dataset alone (transformers warns "process group is initialized, but
  parallel_mode != ParallelMode.DISTRIBUTED").
Without CUDA the true answers are "no peer-to-peer", "the CPU" and "MULTI_CPU over gloo". The patches
apply only when CUDA is unavailable and the job has several processes; a GPU job runs Axolotl untouched.
Applied in the training process by the runner's plugin (`JobRunnerPlugin.register`), before `load_cfg`
reaches any of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

DEFAULT_DDP_TIMEOUT_SECONDS = 1800  # Axolotl's own default (AXOLOTL_NCCL_TIMEOUT)


def needed(env: Mapping[str, str] | None = None, cuda_available: bool | None = None) -> bool:
    """Whether this process is one of several with no CUDA device."""
    env = os.environ if env is None else env
    try:
        world_size = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        return False
    if world_size <= 1:
        return False
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return not cuda_available


def cpu_device_map(normalize: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Wrap Axolotl's normalize_config so that a CPU process places the model on the CPU."""

    def normalize_on_cpu(cfg: Any) -> Any:
        result = normalize(cfg)
        if str(cfg.get("device") or "cpu").startswith("cpu"):
            cfg["device_map"] = {"": "cpu"}
        return result

    return normalize_on_cpu


def apply_if_needed(ddp_timeout: int | None = None) -> bool:
    """Patch Axolotl as described above when `needed()`; True if it did."""
    if not needed():
        return False
    from accelerate import PartialState
    from axolotl.cli import config as cli_config
    from axolotl.utils import environment

    environment.check_cuda_p2p_support = lambda: False
    # Axolotl's barriers use the first PartialState; the Trainer's own (made anew by TrainingArguments)
    # is a CPU one only when ACCELERATE_USE_CPU says so. Without cpu=True either is "not distributed".
    os.environ["ACCELERATE_USE_CPU"] = "true"
    PartialState(cpu=True, timeout=timedelta(seconds=int(ddp_timeout or DEFAULT_DDP_TIMEOUT_SECONDS)))
    if not getattr(cli_config.normalize_config, "_axolotl_job_runner_cpu", False):
        patched = cpu_device_map(cli_config.normalize_config)
        patched._axolotl_job_runner_cpu = True  # type: ignore[attr-defined]
        cli_config.normalize_config = patched
    return True
