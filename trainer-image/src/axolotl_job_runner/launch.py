"""How Axolotl is launched for a pod (pure: settings in, argv and env out)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .contract import Env
from .settings import Settings

PLUGIN_NAME = "axolotl_job_runner.plugin.JobRunnerPlugin"

# Always set for the training child: clusters are often air-gapped and telemetry calls hang (`datasets`
# even sends a download-count request for local json/csv files unless HF_UPDATE_DOWNLOAD_COUNTS=0); and the
# runner's plugin reports progress itself, so transformers' KubeflowCallback (on whenever the operator
# renders KUBEFLOW_TRAINER_SERVER_URL, for images without our runner) must not report it twice.
DISABLE_KUBEFLOW = "DISABLE_KUBEFLOW_INTEGRATION"
FORCED_ENV = {Env.DO_NOT_TRACK: "1", Env.HF_UPDATE_DOWNLOAD_COUNTS: "0", DISABLE_KUBEFLOW: "TRUE"}


def launcher_name(settings: Settings) -> str:
    """torchrun for several nodes, accelerate with GPUs, the python launcher on a CPU."""
    if settings.nnodes > 1:
        return "torchrun"
    if settings.nproc_per_node > 0:
        return "accelerate"
    return "python"


def launcher_args(settings: Settings) -> list[str]:
    """Arguments for the launcher, passed after `--` to `axolotl train`."""
    name = launcher_name(settings)
    if name == "torchrun":
        # Static rendezvous: the Indexed Job gives each pod a fixed NODE_RANK and MASTER_ADDR
        # is pod 0's stable DNS name behind the headless Service.
        return [
            f"--nnodes={settings.nnodes}",
            f"--node_rank={settings.node_rank}",
            f"--nproc_per_node={max(settings.nproc_per_node, 1)}",
            f"--master_addr={settings.master_addr}",
            f"--master_port={settings.master_port}",
        ]
    if name == "accelerate":
        args = [f"--num_processes={settings.nproc_per_node}", "--num_machines=1"]
        if settings.nproc_per_node > 1:
            args.append("--multi_gpu")
        return args
    return []


def build_command(python: str, config_file: Path, settings: Settings) -> list[str]:
    """argv of the training child: Axolotl's own CLI and launcher selection."""
    argv = [
        python,
        "-m",
        "axolotl.cli.main",
        "train",
        str(config_file),
        f"--launcher={launcher_name(settings)}",
    ]
    extra = launcher_args(settings)
    if extra:
        argv += ["--", *extra]
    return argv


def build_env(base: Mapping[str, str], python: str, state_file: Path) -> dict[str, str]:
    """Child environment: ours plus the venv's bin on PATH (Axolotl execs `accelerate`/`torchrun`)."""
    env = dict(base)
    env.update(FORCED_ENV)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["AXOLOTL_JOB_RUNNER_STATE_FILE"] = str(state_file)
    bin_dir = str(Path(python).parent)
    path = env.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        env["PATH"] = bin_dir + (os.pathsep + path if path else "")
    return env


def effective_config(
    raw: Mapping[str, Any], resume_from: str | None, plugin: str = PLUGIN_NAME
) -> dict[str, Any]:
    """The user's config plus our progress plugin and the runner's resume decision.

    Unless the user set `resume_from_checkpoint`, the runner owns resuming: it sets the checkpoint
    it chose (a complete one) and turns Axolotl's own auto-resume off, which would otherwise pick
    the newest checkpoint directory even when a kill left it torn. Nothing else is changed: what
    was validated is what trains.
    """
    config = dict(raw)
    plugins = list(config.get("plugins") or [])
    if plugin not in plugins:
        plugins.append(plugin)
    config["plugins"] = plugins
    if not raw.get("resume_from_checkpoint"):
        config["auto_resume_from_checkpoints"] = False
        if resume_from:
            config["resume_from_checkpoint"] = resume_from
    return config
