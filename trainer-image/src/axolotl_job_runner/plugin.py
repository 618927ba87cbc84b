"""The Axolotl plugin the runner adds to every config: progress from rank 0.

Loaded by Axolotl inside the training process (`plugins: [axolotl_job_runner.plugin.JobRunnerPlugin]`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

from . import cpu_compat
from .contract import Env, ProgressReport, utc_now
from .preemption import CheckpointOnSigterm
from .progress import ProgressReporter
from .results import hub_url, results_record, wandb_run_url
from .settings import STATE_FILE_ENV


def _number(logs: dict[str, Any], *names: str) -> float | None:
    for name in names:
        if name in logs:
            try:
                return float(logs[name])
            except (TypeError, ValueError):
                return None
    return None


class ProgressCallback(TrainerCallback):
    """Turns the Trainer's logs into ProgressReports; all delivery happens off this thread."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)
        self.reporter: ProgressReporter | None = None
        self.job_name = self.env.get(Env.JOB_NAME, "")
        self.job_namespace = self.env.get(Env.JOB_NAMESPACE, "")
        self.loss: float | None = None
        self.learning_rate: float | None = None
        self.grad_norm: float | None = None
        self.tokens_per_second: float | None = None
        self.start_time: float | None = None
        self.start_step = 0

    def _report(self, state: Any, final: bool = False, checkpoint_step: int | None = None) -> ProgressReport:
        step = int(state.global_step or 0)
        total = int(state.max_steps or 0) or None
        eta = None
        if self.start_time is not None and total is not None and step > self.start_step:
            per_step = (time.monotonic() - self.start_time) / (step - self.start_step)
            eta = max(0.0, (total - step) * per_step)
        if final:
            eta = 0.0
        return ProgressReport(
            step=step,
            total_steps=total,
            epoch=state.epoch,
            loss=self.loss,
            learning_rate=self.learning_rate,
            grad_norm=self.grad_norm,
            tokens_per_second=self.tokens_per_second,
            eta_seconds=eta,
            job_name=self.job_name,
            job_namespace=self.job_namespace,
            timestamp=utc_now(),
            final=final,
            resumed_from_step=self.start_step or None,
            checkpoint_step=checkpoint_step,
        )

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        state_file = self.env.get(STATE_FILE_ENV)
        self.reporter = ProgressReporter(
            url=self.env.get(Env.PROGRESS_URL),
            token_file=self.env.get(Env.PROGRESS_TOKEN_FILE),
            state_file=Path(state_file) if state_file else None,
            ca_file=self.env.get(Env.PROGRESS_CA_FILE),
        )
        self.start_time = time.monotonic()
        self.start_step = int(state.global_step or 0)
        self.reporter.submit(self._report(state))

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if self.reporter is None or not logs:
            return
        if "loss" in logs:  # a training log (not eval, not the end-of-train summary)
            self.loss = _number(logs, "loss")
            self.learning_rate = _number(logs, "learning_rate")
            self.grad_norm = _number(logs, "grad_norm")
            per_gpu = _number(logs, "tokens/train_per_sec_per_gpu")
            if per_gpu is not None:
                self.tokens_per_second = per_gpu * max(int(getattr(args, "world_size", 1) or 1), 1)
        self.reporter.submit(self._report(state))

    def stopped(self, state: Any) -> None:
        """Stopped by SIGTERM after a checkpoint at this step: say so now (no on_train_end follows)."""
        if self.reporter is not None:
            self.reporter.submit(self._report(state, checkpoint_step=int(state.global_step or 0)))
            self.reporter.close()
            self.reporter = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.reporter is None:
            return
        self.reporter.submit(self._report(state, final=True))
        self.reporter.close()
        self.reporter = None


class ResultsRecorder(TrainerCallback):
    """Records the W&B run page when training starts (the W&B callback has set up its run by then);
    `pushed` adds the Hub page once Axolotl's final push went through."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ if env is None else env)
        state_file = env.get(STATE_FILE_ENV)
        self.path = results_record(Path(state_file)) if state_file else None
        self.record: dict[str, str] = {}
        self.world_process_zero = True

    def _save(self) -> None:
        if self.path is not None and self.world_process_zero and self.record:
            self.path.write_text(json.dumps(self.record), encoding="utf-8")

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.world_process_zero = bool(state.is_world_process_zero)
        url = wandb_run_url()
        if url:
            self.record["wandbUrl"] = url
            self._save()

    def pushed(self, repo_id: str | None) -> None:
        """Called after Axolotl's `trainer.push_to_hub()` returned (it raises when the push fails)."""
        if repo_id:
            self.record["hubUrl"] = hub_url(repo_id)
            self._save()


class JobRunnerPlugin(BasePlugin):
    """Adds ProgressCallback, CheckpointOnSigterm and ResultsRecorder to the Trainer Axolotl builds."""

    def __init__(self) -> None:
        super().__init__()
        self.results: ResultsRecorder | None = None
        self.trainer: Any = None

    def register(self, cfg: Any) -> None:
        # Called by Axolotl's load_cfg before it normalizes the config and probes the GPUs.
        cpu_compat.apply_if_needed(ddp_timeout=cfg.get("ddp_timeout"))

    def add_callbacks_post_trainer(self, cfg: Any, trainer: Any) -> list[Any]:
        progress = ProgressCallback()
        self.results, self.trainer = ResultsRecorder(), trainer
        return [progress, CheckpointOnSigterm(before_exit=progress.stopped), self.results]

    def post_train(self, cfg: Any, model: Any) -> None:
        # Axolotl calls this after its final `trainer.push_to_hub()`, which raises if the push failed.
        if cfg.get("hub_model_id") and self.results is not None:
            # The Trainer resolves a bare repository name to <user>/<name> when it creates the repo.
            self.results.pushed(getattr(self.trainer, "hub_model_id", None) or cfg.get("hub_model_id"))
