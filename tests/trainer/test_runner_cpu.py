"""The real `axolotl-job-runner` running real Axolotl on the CPU with a tiny local Llama."""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import signal
import socket
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from axolotl_job_runner.checkpoints import last_checkpoint
from axolotl_job_runner.contract import EXIT_INVALID_CONFIG, TERMINATION_MESSAGE_MAX_BYTES
from trainer_support import (
    ProgressServer,
    TinyModel,
    cpu_lora_config,
    free_port,
    run_runner,
    runner_env,
    start_runner,
)

PAYLOAD_KEYS = {
    "jobName",
    "jobNamespace",
    "timestamp",
    "step",
    "totalSteps",
    "epoch",
    "loss",
    "learningRate",
    "gradNorm",
    "tokensPerSecond",
    "etaSeconds",
    "final",
    "lossNonFinite",
    "resumedFromStep",
    "checkpointStep",
}


def _tail(text: str) -> str:
    return text[-6000:]


def test_trains_reports_progress_and_writes_summary(
    tiny_model: TinyModel, progress_server: ProgressServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n", encoding="utf-8")
    metrics_port = free_port()
    config = cpu_lora_config(tiny_model, tmp_path, max_steps=10, save_steps=5)
    env = runner_env(
        tmp_path,
        config,
        AXOLOTL_PROGRESS_URL=progress_server.url,
        AXOLOTL_PROGRESS_TOKEN_FILE=str(token_file),
        AXOLOTL_METRICS_PORT=str(metrics_port),
    )

    scrapes: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        rotated = False
        while not stop.is_set():
            if not rotated and progress_server.received:
                token_file.write_text("rotated-token\n", encoding="utf-8")  # kubelet rotates it
                rotated = True
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
                    body = resp.read().decode()
                if "axolotl_job_step{" in body:
                    scrapes.append(body)
            except OSError:
                pass
            stop.wait(0.3)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = run_runner(tmp_path, env)
    finally:
        stop.set()
        watcher.join(5)
    assert result.returncode == 0, _tail(result.output)

    # a checkpoint and the adapter exist
    out = tmp_path / "outputs" / "tiny"
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "adapter_config.json").is_file()
    checkpoint = last_checkpoint(out)
    assert checkpoint is not None and checkpoint.name == "checkpoint-10"
    assert (checkpoint / "adapter_model.safetensors").is_file()

    # the endpoint got bearer-authenticated, camelCase reports with rising steps
    reports = progress_server.received
    assert len(reports) >= 2, _tail(result.output)
    assert reports[0].authorization == "Bearer first-token"
    assert reports[-1].authorization == "Bearer rotated-token"  # read fresh per request
    assert all(r.path == "/apis/progress" for r in reports)
    for report in reports:
        assert set(report.body) == PAYLOAD_KEYS
        assert report.body["jobName"] == "tiny" and report.body["jobNamespace"] == "ml"
    steps = [r.body["step"] for r in reports]
    assert steps == sorted(steps) and steps[-1] > steps[0], steps
    last = reports[-1].body
    assert last["final"] is True and sum(r.body["final"] for r in reports) == 1
    assert last["step"] == last["totalSteps"] == 10
    assert isinstance(last["loss"], float) and math.isfinite(last["loss"]) and last["loss"] > 0
    assert isinstance(last["learningRate"], float) and isinstance(last["gradNorm"], float)
    assert last["epoch"] > 0
    # Coalesced, never queued or repeated: no more POSTs than the run produced reports (one at train begin,
    # one per logged step, the end-of-training log; then the final), and no step sent twice before the last
    # one (whose end-of-training log may follow its step log). The 5 s interval itself is checked against a
    # controlled clock in test_runner_parts.py (test_reporter_coalesces_and_rate_limits).
    regular = [r.body["step"] for r in reports if not r.body["final"]]
    assert len(regular) <= config["max_steps"] // config["logging_steps"] + 2, steps
    assert all(a < b for a, b in itertools.pairwise(regular[:-1])), steps

    # the termination summary
    assert 0 < len(result.summary_bytes) <= TERMINATION_MESSAGE_MAX_BYTES
    summary = result.summary
    assert summary["outcome"] == "succeeded" and summary["exitCode"] == 0
    assert summary["steps"] == summary["totalSteps"] == 10
    assert summary["finalLoss"] == pytest.approx(last["loss"])
    assert summary["outputDir"] == str(out)
    assert summary["lastCheckpoint"] == str(checkpoint)
    assert summary["adapterPath"] == str(out)  # a LoRA run: the adapter, no full weights
    assert "modelPath" not in summary and "hubUrl" not in summary and "wandbUrl" not in summary
    assert summary["runtimeSeconds"] > 0
    assert "error" not in summary

    # Prometheus metrics were served while it trained
    assert scrapes, "no /metrics scrape showed training progress"
    assert 'axolotl_job_total_steps{axolotljob="tiny",axolotljob_namespace="ml"} 10.0' in scrapes[-1]
    assert "axolotl_job_loss{" in scrapes[-1]


def test_killed_run_resumes_from_last_checkpoint(
    tiny_model: TinyModel, progress_server: ProgressServer, tmp_path: Path
) -> None:
    config = cpu_lora_config(tiny_model, tmp_path, max_steps=12, save_steps=3)
    env = runner_env(tmp_path, config, AXOLOTL_PROGRESS_URL=progress_server.url)
    out = tmp_path / "outputs" / "tiny"

    proc = start_runner(tmp_path, env)
    deadline = time.monotonic() + 400
    try:
        while last_checkpoint(out) is None:
            assert proc.poll() is None, (tmp_path / "runner.log").read_text()[-6000:]
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the node died: no cleanup, no summary
        proc.wait(30)
    resume_point = last_checkpoint(out)
    assert resume_point is not None
    resume_step = int(resume_point.name.split("-")[1])
    assert resume_step < 12, "the first run finished before it could be killed"
    assert not any(r.body["final"] for r in progress_server.received)
    first_run_reports = len(progress_server.received)

    result = run_runner(tmp_path, env)
    assert result.returncode == 0, _tail(result.output)
    assert f"resuming from the last complete checkpoint {resume_point}" in result.output
    summary = result.summary
    assert summary["outcome"] == "succeeded"
    assert summary["resumedFrom"] == str(resume_point)
    assert summary["steps"] == 12 and summary["lastCheckpoint"] == str(out / "checkpoint-12")
    second = [r.body for r in progress_server.received[first_run_reports:]]
    assert second, "the resumed run sent no progress"
    assert second[0]["step"] >= resume_step, second[0]  # it did not start over at step 0
    assert second[-1]["final"] and second[-1]["step"] == 12


def test_invalid_config_exits_78_naming_the_key_without_training(
    tiny_model: TinyModel, progress_server: ProgressServer, tmp_path: Path
) -> None:
    config = cpu_lora_config(tiny_model, tmp_path, load_in_4bit=True)
    del config["adapter"]
    env = runner_env(tmp_path, config, AXOLOTL_PROGRESS_URL=progress_server.url)

    result = run_runner(tmp_path, env)

    assert result.returncode == EXIT_INVALID_CONFIG, _tail(result.output)
    assert len(result.summary_bytes) <= TERMINATION_MESSAGE_MAX_BYTES
    summary = result.summary
    assert summary["outcome"] == "invalid_config" and summary["exitCode"] == 78
    assert summary["error"]["key"] == "load_in_4bit"
    assert "load_in_4bit" in summary["error"]["message"] and "adapter" in summary["error"]["message"]
    # no training started: Axolotl was never launched and nothing was written or reported
    assert "launching:" not in result.output
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "prepared").exists()
    assert progress_server.received == []


def test_two_cpu_nodes_rendezvous_and_train_one_model(
    tiny_model: TinyModel, progress_server: ProgressServer, tmp_path: Path
) -> None:
    """The multi-node path on loopback: two runners (NNODES=2, NODE_RANK 0/1, as an Indexed Job's pods
    get them) start torchrun over gloo, train one model, and only rank 0 reports and saves."""
    config = cpu_lora_config(tiny_model, tmp_path, max_steps=6, save_steps=3)
    port = str(free_port())
    runners = []
    for rank in (0, 1):
        pod = tmp_path / f"rank{rank}"
        pod.mkdir()
        env = runner_env(pod, config, AXOLOTL_PROGRESS_URL=progress_server.url, NNODES="2",
                         NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        env["BASE_VOLUME"] = str(tmp_path)  # the shared claim
        runners.append((pod, start_runner(pod, env)))
    results = []
    for pod, proc in runners:
        try:
            code = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        results.append((code, (pod / "runner.log").read_text(errors="replace"),
                        json.loads((pod / "termination-log").read_bytes())))

    for code, output, summary in results:
        assert code == 0, _tail(output)
        assert "--launcher=torchrun" in output and "--nnodes=2" in output
        assert summary["outcome"] == "succeeded"
        # Each process trained its half of one data-parallel run (transformers warns when a process
        # group exists but the Trainer runs alone, i.e. two separate trainings).
        assert "parallel_mode != ParallelMode.DISTRIBUTED" not in output
    rank0 = results[0][2]
    assert rank0["steps"] == rank0["totalSteps"] == 6  # rank 0 holds the numbers
    out = tmp_path / "outputs" / "tiny"
    assert (out / "adapter_model.safetensors").stat().st_size > 0
    finals = [r.body for r in progress_server.received if r.body["final"]]
    assert [f["step"] for f in finals] == [6]  # rank 0 alone reports


def test_dead_progress_endpoint_does_not_stop_training(tiny_model: TinyModel, tmp_path: Path) -> None:
    # An endpoint that accepts connections and never answers: every POST must time out.
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sink.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sink.accept()
                held.append(conn)
            except OSError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    token_file = tmp_path / "token"
    token_file.write_text("t\n", encoding="utf-8")
    config = cpu_lora_config(tiny_model, tmp_path, max_steps=6, save_steps=6)
    env = runner_env(
        tmp_path,
        config,
        AXOLOTL_PROGRESS_URL=f"http://127.0.0.1:{sink.getsockname()[1]}/progress",
        AXOLOTL_PROGRESS_TOKEN_FILE=str(token_file),
    )
    try:
        result = run_runner(tmp_path, env)
    finally:
        stop.set()
        acceptor.join(5)
        for conn in held:
            conn.close()
        sink.close()

    assert result.returncode == 0, _tail(result.output)
    assert held, "the runner never tried to reach the endpoint"
    assert "progress report not delivered" in result.output
    summary = result.summary
    assert summary["outcome"] == "succeeded" and summary["steps"] == 6
    assert (tmp_path / "outputs" / "tiny" / "adapter_model.safetensors").is_file()


def test_sigterm_is_forwarded_and_reported(tiny_model: TinyModel, tmp_path: Path) -> None:
    config = cpu_lora_config(tiny_model, tmp_path, max_steps=50, save_steps=50)
    env = runner_env(tmp_path, config)
    log = tmp_path / "runner.log"
    proc = start_runner(tmp_path, env)
    deadline = time.monotonic() + 300
    while "launching:" not in log.read_text(errors="replace"):
        assert proc.poll() is None, log.read_text()[-6000:]
        assert time.monotonic() < deadline, "training was never launched"
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)  # what the kubelet does to PID 1 on preemption
    try:
        returncode = proc.wait(120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert returncode == 128 + signal.SIGTERM, _tail(output)
    assert "forwarding SIGTERM to the training process" in output
    summary = json.loads((tmp_path / "termination-log").read_bytes())
    assert summary["outcome"] == "failed" and summary["exitCode"] == 143
    assert summary["error"]["message"] == "terminated by SIGTERM"
    launched = output[output.index("launching:") :]
    child = int(re.search(r"started child pid (\d+)", launched).group(1))  # type: ignore[union-attr]
    with pytest.raises(ProcessLookupError):  # nothing of the training process group survived
        os.killpg(child, 0)


def test_sigterm_while_training_saves_a_checkpoint_and_the_next_run_resumes_there(
    tiny_model: TinyModel, progress_server: ProgressServer, tmp_path: Path
) -> None:
    """Preemption, eviction, suspend: the step finishes, a checkpoint is saved at it, the runner exits
    75 (the Job's podFailurePolicy ignores it) and says where; the next run starts from that step."""
    config = cpu_lora_config(tiny_model, tmp_path, max_steps=400, save_steps=10_000)  # no periodic save
    env = runner_env(tmp_path, config, AXOLOTL_PROGRESS_URL=progress_server.url)
    out = tmp_path / "outputs" / "tiny"
    proc = start_runner(tmp_path, env)
    deadline = time.monotonic() + 400
    try:
        while not progress_server.received:  # the first report comes as training begins
            assert proc.poll() is None, (tmp_path / "runner.log").read_text()[-6000:]
            assert time.monotonic() < deadline, "training never began"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)  # what the kubelet does to PID 1
        returncode = proc.wait(240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = (tmp_path / "runner.log").read_text(errors="replace")
    assert returncode == 75, _tail(output)
    summary = json.loads((tmp_path / "termination-log").read_bytes())
    assert summary["outcome"] == "preempted" and summary["exitCode"] == 75, summary
    step = summary["steps"]
    assert 1 <= step < 400, summary
    saved = last_checkpoint(out)
    assert saved == out / f"checkpoint-{step}" and summary["lastCheckpoint"] == str(saved)
    assert not (out / "adapter_model.safetensors").exists()  # stopped, not finished: no final model
    assert progress_server.received[-1].body["checkpointStep"] == step  # the status can say so
    first_run = len(progress_server.received)

    result = run_runner(tmp_path, env)
    assert result.returncode == 0, _tail(result.output)
    assert f"resuming from the last complete checkpoint {saved}" in result.output
    assert result.summary["resumedFrom"] == str(saved) and result.summary["steps"] == 400
    assert progress_server.received[first_run].body["resumedFromStep"] == step


def test_training_failure_reports_the_real_error(tiny_model: TinyModel, tmp_path: Path) -> None:
    # Valid for Axolotl's validator, but the dataset file does not exist: fails at load time.
    missing = tmp_path / "missing.jsonl"
    config = cpu_lora_config(
        tiny_model, tmp_path, datasets=[{"path": str(missing), "ds_type": "json", "type": "alpaca"}]
    )
    result = run_runner(tmp_path, runner_env(tmp_path, config))

    assert result.returncode == 1, _tail(result.output)
    assert len(result.summary_bytes) <= TERMINATION_MESSAGE_MAX_BYTES
    summary = result.summary
    assert summary["outcome"] == "failed" and summary["exitCode"] == 1
    assert summary["error"]["message"].startswith("ValueError: ")  # the cause, not a launcher wrapper
    assert str(missing) in summary["error"]["message"]
    assert "key" not in summary["error"]
