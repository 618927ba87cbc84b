"""The runner's inputs, read from the environment the operator renders (pure functions)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .contract import METRICS_PORT, RENDEZVOUS_PORT, Env, Paths

# Set by the runner for the training child, read by the plugin there (internal contract).
STATE_FILE_ENV = "AXOLOTL_JOB_RUNNER_STATE_FILE"


def preempted_marker(state_file: Path) -> Path:
    """Where rank 0 records the checkpoint it saved on SIGTERM (next to the progress state file)."""
    return state_file.with_name("preempted.json")


class SettingsError(ValueError):
    """The pod's environment is inconsistent (a rendering bug, not a user config error)."""


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is not an integer") from exc


@dataclass(frozen=True)
class Settings:
    """Everything the runner needs from its environment."""

    config_dir: Path
    base_volume: Path
    termination_log: Path
    metrics_port: int
    progress_url: str | None
    progress_token_file: str | None
    job_name: str
    job_namespace: str
    nnodes: int
    node_rank: int
    nproc_per_node: int
    master_addr: str | None
    master_port: int

    @property
    def config_path(self) -> Path:
        return self.config_dir / Paths.CONFIG_FILE

    @property
    def world_size(self) -> int:
        return self.nnodes * max(self.nproc_per_node, 1)


def count_visible_gpus(env: Mapping[str, str]) -> int | None:
    """GPUs named by CUDA_VISIBLE_DEVICES / NVIDIA_VISIBLE_DEVICES, or None if not said."""
    for name in ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"):
        raw = env.get(name)
        if raw is None:
            continue
        raw = raw.strip()
        if raw in ("", "none", "void", "-1"):
            return 0
        if raw == "all":
            continue
        return len([part for part in raw.split(",") if part.strip()])
    return None


def load_settings(env: Mapping[str, str] | None = None, detected_gpus: int | None = None) -> Settings:
    """Build Settings from an environment mapping (os.environ by default).

    `NPROC_PER_NODE` (the operator always sets it; 0 means CPU) wins over detection, so a
    GPU node's pod that asked for 0 GPUs still trains on the CPU.
    """
    env = os.environ if env is None else env
    nproc_default = detected_gpus if detected_gpus is not None else (count_visible_gpus(env) or 0)
    nnodes = _int(env, Env.NNODES, 1)
    node_rank = _int(env, Env.NODE_RANK, 0)
    nproc = _int(env, Env.NPROC_PER_NODE, nproc_default)
    if nnodes < 1:
        raise SettingsError(f"NNODES={nnodes} must be >= 1")
    if not 0 <= node_rank < nnodes:
        raise SettingsError(f"NODE_RANK={node_rank} must be in [0, NNODES={nnodes})")
    if nproc < 0:
        raise SettingsError(f"NPROC_PER_NODE={nproc} must be >= 0")
    master_addr = env.get(Env.MASTER_ADDR) or None
    if nnodes > 1 and not master_addr:
        raise SettingsError("NNODES > 1 needs MASTER_ADDR")
    return Settings(
        config_dir=Path(env.get(Env.CONFIG_DIR) or Paths.CONFIG_DIR),
        base_volume=Path(env.get(Env.BASE_VOLUME) or Paths.DATA_MOUNT),
        termination_log=Path(env.get(Env.TERMINATION_LOG) or Paths.TERMINATION_LOG),
        metrics_port=_int(env, Env.METRICS_PORT, METRICS_PORT),
        progress_url=env.get(Env.PROGRESS_URL) or None,
        progress_token_file=env.get(Env.PROGRESS_TOKEN_FILE) or None,
        job_name=env.get(Env.JOB_NAME, ""),
        job_namespace=env.get(Env.JOB_NAMESPACE, ""),
        nnodes=nnodes,
        node_rank=node_rank,
        nproc_per_node=nproc,
        master_addr=master_addr,
        master_port=_int(env, Env.MASTER_PORT, RENDEZVOUS_PORT),
    )
