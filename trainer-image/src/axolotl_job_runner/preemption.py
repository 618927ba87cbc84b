"""Checkpoint on SIGTERM: preemption, eviction, `spec.suspend` and node drains end a pod with SIGTERM.

The training process then finishes its current optimizer step, saves a checkpoint (the Trainer's own
`should_save`), records it for the runner and exits with EXIT_PREEMPTED, which the Job's
podFailurePolicy ignores; the next pod resumes from that checkpoint. Ranks agree on the step to stop at
(a one-element all-reduce per step), since the save is collective. A SIGTERM before training begins keeps
its default meaning (nothing to save yet).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .contract import EXIT_PREEMPTED
from .settings import STATE_FILE_ENV, preempted_marker


def _agreed(requested: bool) -> bool:
    """True on every rank when any rank was asked to stop (alone: the flag itself)."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is always there in the trainer
        return requested
    if not (dist.is_available() and dist.is_initialized()):
        return requested
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    flag = torch.tensor([1 if requested else 0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class CheckpointOnSigterm(TrainerCallback):
    """Save at the next step boundary after SIGTERM, then exit EXIT_PREEMPTED (see the module doc)."""

    def __init__(
        self,
        env: dict[str, str] | None = None,
        before_exit: Callable[[Any], None] = lambda state: None,
        exit: Callable[[int], Any] = os._exit,
    ) -> None:
        env = dict(os.environ if env is None else env)
        state_file = env.get(STATE_FILE_ENV)
        self.marker = preempted_marker(Path(state_file)) if state_file else None
        self.before_exit = before_exit  # given the TrainerState: e.g. the last progress report
        self.exit = exit
        self.requested = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum: int, _frame: Any) -> None:
        self.requested = True  # acted on at the step boundary: a signal handler must not save

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if _agreed(self.requested):
            self.requested = True
            control.should_save = True
            control.should_training_stop = True
            if state.is_world_process_zero:
                step = state.global_step
                print(f"axolotl-job-runner: SIGTERM: checkpoint at step {step}, then stop", file=sys.stderr)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.requested:
            return
        if state.is_world_process_zero and self.marker is not None:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            record = {"step": int(state.global_step), "checkpoint": str(checkpoint)}
            self.marker.write_text(json.dumps(record), encoding="utf-8")
        self.before_exit(state)
        # Out now: what Axolotl does after a finished training (the final model) is not for a stopped one.
        self.exit(EXIT_PREEMPTED)
