"""`axolotl-job-runner`: the container command of every training pod (the thin shell).

validate (child) -> pick the checkpoint to resume -> launch Axolotl (child, own process
group, signals forwarded) -> write the termination summary. Only the standard library and
PyYAML are imported here; Axolotl runs in the children.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import IO, Any

import yaml

from . import __version__
from .checkpoints import last_checkpoint
from .contract import (
    EXIT_INTERNAL_ERROR,
    EXIT_INVALID_CONFIG,
    EXIT_PREEMPTED,
    EXIT_SIGNAL_BASE,
    EXIT_SUCCEEDED,
    EXIT_TRAINING_FAILED,
    OUTCOME_FAILED,
    OUTCOME_INVALID_CONFIG,
    OUTCOME_PREEMPTED,
    OUTCOME_SUCCEEDED,
    Env,
    Paths,
    SummaryError,
    TerminationSummary,
)
from .errors import extract_error
from .launch import build_command, build_env, effective_config
from .metrics import MetricsServer, read_state, render_metrics
from .prepared import remove_torn
from .results import model_files, read_record
from .settings import Settings, SettingsError, count_visible_gpus, load_settings, preempted_marker

LOG = logging.getLogger("axolotl_job_runner")
FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
TAIL_BYTES = 64 * 1024


class Supervisor:
    """Owns the current child: forwards signals to it and reaps it and what is left of its group.

    A terminating signal goes to the child alone: the training process saves a checkpoint on SIGTERM
    (preemption.py), and its DataLoader workers, in the same group, must live until it has; a launcher
    (torchrun, accelerate) passes it on to its workers. Once the child is gone, whatever remains of its
    process group is killed."""

    def __init__(self) -> None:
        self.child: subprocess.Popen[bytes] | None = None
        self.received: int | None = None  # the first terminating signal we got

    def install(self) -> None:
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._forward)

    def _forward(self, signum: int, _frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP) and self.received is None:
            self.received = signum
        child = self.child
        if child is not None and child.returncode is None:
            terminating = signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            LOG.info(
                "forwarding %s to the training %s",
                signal.Signals(signum).name,
                "process" if terminating else "process group",
            )
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if terminating:
                    os.kill(child.pid, signum)
                else:
                    os.killpg(child.pid, signum)

    def run(self, argv: list[str], env: dict[str, str], tee: bool) -> tuple[int, str, str]:
        """Run argv in its own session; returns (exit code or -signal, stderr tail, stdout tail)."""
        pipe = subprocess.PIPE if tee else None
        self.child = subprocess.Popen(argv, env=env, stdout=pipe, stderr=pipe, start_new_session=True)
        LOG.info("started child pid %d in its own process group", self.child.pid)
        tails: dict[str, deque[bytes]] = {"out": deque(), "err": deque()}
        threads = []
        if tee:
            assert self.child.stdout is not None and self.child.stderr is not None
            for name, src, dst in (
                ("out", self.child.stdout, sys.stdout),
                ("err", self.child.stderr, sys.stderr),
            ):
                thread = threading.Thread(target=_tee, args=(src, dst, tails[name]), daemon=True)
                thread.start()
                threads.append(thread)
        if self.received is not None:  # a signal arrived before the child existed
            self._forward(self.received, None)
        code = self._reap(self.child.pid)
        self.child.returncode = code
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.child.pid, signal.SIGKILL)  # the child's leftovers (workers, grandchildren)
        for thread in threads:
            thread.join(timeout=5)
        return (
            code,
            b"".join(tails["err"]).decode(errors="replace"),
            b"".join(tails["out"]).decode(errors="replace"),
        )

    @staticmethod
    def _reap(pid: int) -> int:
        """Wait for `pid`, also reaping orphans re-parented to us (we are PID 1 in the pod)."""
        while True:
            try:
                got, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return EXIT_INTERNAL_ERROR
            if got == pid:
                return os.waitstatus_to_exitcode(status)


def _tee(src: IO[bytes], dst: IO[str], tail: deque[bytes]) -> None:
    """Copy a child's stream to ours unbuffered (tqdm's \\r lines included), keeping a tail."""
    size = 0
    fd = src.fileno()
    out = getattr(dst, "buffer", None)
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        with contextlib.suppress(OSError, ValueError):
            if out is not None:
                out.write(chunk)
            else:
                dst.write(chunk.decode(errors="replace"))
            dst.flush()
        tail.append(chunk)
        size += len(chunk)
        while size > TAIL_BYTES and len(tail) > 1:
            size -= len(tail.popleft())


def detect_gpus(env: dict[str, str]) -> int:
    """GPUs this container sees when the operator did not say (NPROC_PER_NODE unset)."""
    counted = count_visible_gpus(env)
    if counted is not None:
        return counted
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def write_summary(path: Path, summary: TerminationSummary) -> bytes:
    """Write the summary to the termination log (and our log); never raises."""
    data = summary.encode()
    try:
        path.write_bytes(data)
    except OSError as exc:
        LOG.warning("could not write the termination summary to %s: %s", path, exc)
    print(f"axolotl-job-runner summary: {data.decode()}", file=sys.stderr, flush=True)
    return data


class Runner:
    """One run of the container command."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started = time.monotonic()
        self.workdir = Path(tempfile.mkdtemp(prefix="axolotl-job-runner-"))
        self.state_file = self.workdir / "progress.json"
        self.phase = "validating"
        self.supervisor = Supervisor()
        self.metrics: MetricsServer | None = None
        self.settings: Settings | None = None

    # -- helpers --
    def _summary(self, outcome: str, code: int, **fields: Any) -> TerminationSummary:
        return TerminationSummary(
            outcome=outcome, exit_code=code, runtime_seconds=time.monotonic() - self.started, **fields
        )

    def _finish(self, summary: TerminationSummary) -> int:
        self.phase = "finished"
        path = (
            self.settings.termination_log
            if self.settings
            else Path(self.env.get(Env.TERMINATION_LOG) or Paths.TERMINATION_LOG)
        )
        write_summary(path, summary)
        return summary.exit_code

    def _metrics_body(self) -> str:
        assert self.settings is not None
        labels = {"axolotljob": self.settings.job_name, "axolotljob_namespace": self.settings.job_namespace}
        return render_metrics(read_state(self.state_file), labels, self.phase)

    def _start_metrics(self) -> None:
        assert self.settings is not None
        if self.settings.metrics_port <= 0:
            return
        try:
            self.metrics = MetricsServer(self.settings.metrics_port, self._metrics_body).start()
            LOG.info("serving Prometheus metrics on :%d/metrics", self.metrics.port)
        except OSError as exc:  # metrics are nice to have, never a reason to fail
            LOG.warning("metrics port %d unavailable: %s", self.settings.metrics_port, exc)

    def _signal_code(self) -> int | None:
        if self.supervisor.received is None:
            return None
        return EXIT_SIGNAL_BASE + self.supervisor.received

    def _saved_on_sigterm(self) -> tuple[int, str] | None:
        """(step, checkpoint) the training saved after our SIGTERM (the plugin's record), if any."""
        if self.supervisor.received != signal.SIGTERM:
            return None
        try:
            record = json.loads(preempted_marker(self.state_file).read_text(encoding="utf-8"))
            step, path = int(record["step"]), str(record["checkpoint"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return (step, path) if last_checkpoint(Path(path).parent) == Path(path) else None

    # -- phases --
    def validate(self) -> dict[str, Any] | TerminationSummary:
        assert self.settings is not None
        result_file = self.workdir / "validation.json"
        env = dict(self.env)
        env.update({Env.DO_NOT_TRACK: "1", "AXOLOTL_JOB_RUNNER_WORLD_SIZE": str(self.settings.world_size)})
        argv = [
            sys.executable,
            "-m",
            "axolotl_job_runner.validate",
            str(self.settings.config_path),
            str(result_file),
        ]
        LOG.info("validating %s with Axolotl's validator", self.settings.config_path)
        code, _, _ = self.supervisor.run(argv, env, tee=False)
        try:
            result = json.loads(result_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            result = {"ok": False, "internal": True, "message": f"validator exited with code {code}"}
        signal_code = self._signal_code()
        if signal_code is not None and code != EXIT_SUCCEEDED:
            return self._summary(
                OUTCOME_FAILED, signal_code, error=SummaryError("terminated during validation")
            )
        if code == EXIT_INVALID_CONFIG and not result.get("internal"):
            LOG.error("invalid config: %s", result.get("message"))
            return self._summary(
                OUTCOME_INVALID_CONFIG,
                EXIT_INVALID_CONFIG,
                error=SummaryError(message=str(result.get("message")), key=result.get("key")),
            )
        if code != EXIT_SUCCEEDED or not result.get("ok"):
            return self._summary(
                OUTCOME_FAILED,
                EXIT_INTERNAL_ERROR,
                error=SummaryError(f"validator failed: {result.get('message')}"),
            )
        if result.get("droppedKeys"):
            LOG.warning("Axolotl ignores these config keys: %s", ", ".join(result["droppedKeys"]))
        return result

    def train(self, validation: dict[str, Any]) -> TerminationSummary:
        assert self.settings is not None
        output_dir = Path(validation["outputDir"])
        resume_from: str | None = None
        if validation.get("resumeFromCheckpoint"):
            resume_from = str(validation["resumeFromCheckpoint"])
            LOG.info("config sets resume_from_checkpoint: %s", resume_from)
        elif validation.get("autoResume", True):
            found = last_checkpoint(output_dir)
            if found is not None:
                resume_from = str(found)
                LOG.info("resuming from the last complete checkpoint %s", resume_from)
        raw = yaml.safe_load(self.settings.config_path.read_text(encoding="utf-8"))
        if isinstance(raw.get("dataset_prepared_path"), str):  # a cache other jobs may have left torn
            remove_torn(Path(raw["dataset_prepared_path"]))
        config_file = self.workdir / Paths.CONFIG_FILE
        config_file.write_text(
            yaml.safe_dump(effective_config(raw, resume_from), sort_keys=False), encoding="utf-8"
        )

        argv = build_command(sys.executable, config_file, self.settings)
        env = build_env(self.env, sys.executable, self.state_file)
        self.phase = "training"
        LOG.info("launching: %s", " ".join(argv))
        code, err_tail, out_tail = self.supervisor.run(argv, env, tee=True)

        state = read_state(self.state_file) or {}
        checkpoint = last_checkpoint(output_dir)
        common: dict[str, Any] = {
            "final_loss": state.get("loss"),
            "steps": state.get("step"),
            "total_steps": state.get("totalSteps"),
            "output_dir": str(output_dir),
            "last_checkpoint": str(checkpoint) if checkpoint else None,
            "resumed_from": resume_from,
        }
        saved = self._saved_on_sigterm()
        if saved is not None:
            step, path = saved
            LOG.info("stopped by SIGTERM after saving %s (step %s): the next pod resumes there", path, step)
            common.update(steps=step, last_checkpoint=path)
            return self._summary(OUTCOME_PREEMPTED, EXIT_PREEMPTED, **common)
        if code == 0:
            files, record = model_files(output_dir), read_record(self.state_file)
            return self._summary(
                OUTCOME_SUCCEEDED,
                EXIT_SUCCEEDED,
                hub_model_id=validation.get("hubModelId"),
                adapter_path=files.adapter_path,
                model_path=files.model_path,
                hub_url=record.get("hubUrl"),
                wandb_url=record.get("wandbUrl"),
                **common,
            )
        signal_code = self._signal_code()
        if signal_code is not None:
            name = signal.Signals(self.supervisor.received or signal.SIGTERM).name
            return self._summary(
                OUTCOME_FAILED, signal_code, error=SummaryError(f"terminated by {name}"), **common
            )
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (out of memory?)" if -code == signal.SIGKILL else ""
            message = f"training process killed by {name}{hint}"
            return self._summary(
                OUTCOME_FAILED, EXIT_SIGNAL_BASE - code, error=SummaryError(message), **common
            )
        message = extract_error(err_tail, out_tail) or f"training exited with code {code}"
        return self._summary(OUTCOME_FAILED, EXIT_TRAINING_FAILED, error=SummaryError(message), **common)

    def run(self) -> int:
        self.supervisor.install()
        try:
            env = dict(self.env)
            gpus = None if Env.NPROC_PER_NODE in env else detect_gpus(env)
            self.settings = load_settings(env, detected_gpus=gpus)
        except SettingsError as exc:
            return self._finish(
                self._summary(OUTCOME_FAILED, EXIT_INTERNAL_ERROR, error=SummaryError(str(exc)))
            )
        LOG.info(
            "axolotl-job-runner %s: job %s/%s, node %d/%d, %d process(es) per node",
            __version__,
            self.settings.job_namespace,
            self.settings.job_name,
            self.settings.node_rank,
            self.settings.nnodes,
            max(self.settings.nproc_per_node, 1),
        )
        self._start_metrics()
        try:
            validation = self.validate()
            if isinstance(validation, TerminationSummary):
                return self._finish(validation)
            return self._finish(self.train(validation))
        except Exception as exc:  # the summary must always be written
            LOG.exception("runner failed")
            return self._finish(
                self._summary(
                    OUTCOME_FAILED, EXIT_INTERNAL_ERROR, error=SummaryError(f"{type(exc).__name__}: {exc}")
                )
            )
        finally:
            if self.metrics is not None:
                self.metrics.stop()
            shutil.rmtree(self.workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Console script entry point; configuration comes from the environment only."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="axolotl-job-runner",
        description="Validate $AXOLOTL_CONFIG_DIR/config.yaml, train it with Axolotl, report progress "
        "and write a result summary to $AXOLOTL_TERMINATION_LOG. See trainer-image/README.md.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s] [%(levelname)s] [%(name)s] %(message)s", stream=sys.stderr
    )
    return Runner(dict(os.environ)).run()


if __name__ == "__main__":
    raise SystemExit(main())
