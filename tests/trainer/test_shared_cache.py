"""Jobs sharing one cache claim (HF_HOME and dataset_prepared_path), as every training pod does.

Why: the operator mounts one cache at /workspace/cache in every pod. Sharing it must be safe (two jobs
starting together neither download a file twice nor corrupt the cache or the prepared dataset) and
effective (a later job downloads nothing and does not tokenize again). The real runner and real Axolotl
load `tiny-org/tiny-llama` by repo id from a fake Hub on 127.0.0.1 (fake_hub.py), so the downloads
can be counted.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

from fake_hub import FakeHub, install_loopback_guard, serve_fake_hub
from trainer_support import RunResult, TinyModel, cpu_lora_config, run_runner, runner_env, start_runner

REPO_ID = "tiny-org/tiny-llama"
REPO_CACHE = "models--tiny-org--tiny-llama"
MAX_STEPS = 3
# What Axolotl logs (axolotl/utils/data/sft.py, shared.py) when it tokenizes, or finds the prepared copy.
TOKENIZED = "Loading raw datasets..."
LOADED_PREPARED = "Loading prepared dataset from disk at "
REQUIRED_FILES = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"}


def _tail(text: str) -> str:
    return text[-6000:]


def job_env(workdir: Path, tiny: TinyModel, cache: Path, hub: FakeHub, guard: Path) -> dict[str, str]:
    """A pod's environment with the shared cache, online against the fake Hub only."""
    config = cpu_lora_config(
        tiny,
        workdir,
        base_model=REPO_ID,
        dataset_prepared_path=str(cache / "prepared"),
        max_steps=MAX_STEPS,
        save_steps=MAX_STEPS,
    )
    env = runner_env(
        workdir,
        config,
        HF_HOME=str(cache / "huggingface"),
        HF_ENDPOINT=hub.url,
        # A held download (FakeHub.hold_first_download) must not hit the 10 s read timeout and be retried.
        HF_HUB_DOWNLOAD_TIMEOUT="600",
        # `datasets` counts downloads with a HEAD to s3.amazonaws.com for every packaged loader (json, csv,
        # ...) unless told not to; HF_HUB_DISABLE_TELEMETRY does not cover it. The loopback guard caught it.
        HF_UPDATE_DOWNLOAD_COUNTS="0",
        PYTHONPATH=os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")])),
        LOOPBACK_GUARD_LOG=str(guard.parent / "off-loopback.log"),
    )
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):  # online, like a pod
        env.pop(name, None)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(name, None)
        env.pop(name.lower(), None)
    return env


def finish_together(started: list[tuple[Path, subprocess.Popen[str]]], hub: FakeHub) -> list[RunResult]:
    """Wait for jobs started together. Once one has exited, the hub stops holding downloads for the
    others (no job is left to arrive), so a failure shows at once rather than after the hold times out."""
    deadline = time.monotonic() + 900
    while any(proc.poll() is None for _, proc in started):
        if any(proc.poll() is not None for _, proc in started):
            hub.release_holds()
        assert time.monotonic() < deadline, "the jobs did not finish"
        time.sleep(0.5)
    results = []
    for workdir, proc in started:
        output = (workdir / "runner.log").read_text(encoding="utf-8", errors="replace")
        term = workdir / "termination-log"
        results.append(RunResult(proc.wait(), output, term.read_bytes() if term.exists() else b"", workdir))
    return results


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill a runner's process group if it is still there (a failed assertion must not leave one)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


def assert_succeeded(result: RunResult) -> None:
    assert result.returncode == 0, _tail(result.output)
    summary = result.summary
    assert summary["outcome"] == "succeeded" and summary["steps"] == MAX_STEPS, summary
    assert (result.workdir / "outputs" / "tiny" / "adapter_model.safetensors").is_file()


def assert_cache_holds_what_was_served(hub: FakeHub, hf_home: Path, downloaded: set[str]) -> None:
    """refs/main names the served commit, each snapshot file links to a blob whose sha256 is the served
    file's, and no partial download was left behind."""
    repo = hub.repos[REPO_ID]
    repo_cache = hf_home / "hub" / REPO_CACHE
    assert (repo_cache / "refs" / "main").read_text() == repo.commit
    snapshot = repo_cache / "snapshots" / repo.commit
    assert {p.name for p in snapshot.iterdir()} == downloaded
    for name in downloaded:
        blob = (snapshot / name).resolve()
        assert blob.parent == repo_cache / "blobs", blob
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == repo.files[name].sha256 == blob.name, name
    assert {p.name for p in (repo_cache / "blobs").iterdir()} == {repo.files[n].sha256 for n in downloaded}


def model_info_requests(hub: FakeHub) -> int:
    return sum(n for (_, path), n in hub.by_method_and_path().items() if path.startswith("/api/models/"))


def file_stamps(directory: Path) -> dict[str, tuple[int, int, int]]:
    """(inode, mtime, size) of every file: a rewrite changes at least one of them."""
    return {
        str(p.relative_to(directory)): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
        for p in directory.rglob("*")
        if p.is_file()
    }


def test_jobs_sharing_a_cache_download_once_and_tokenize_once(tiny_model: TinyModel, tmp_path: Path) -> None:
    cache = tmp_path / "cache"  # the shared claim (/workspace/cache in the pods)
    hf_home, prepared = cache / "huggingface", cache / "prepared"
    guard = install_loopback_guard(tmp_path / "guard")
    off_loopback = guard.parent / "off-loopback.log"

    with serve_fake_hub({REPO_ID: tiny_model.model_dir}, hold_first_download=True) as hub:
        # Two jobs start together. The hub holds each file's first download until the file has been asked
        # for twice, so the second job certainly comes for it before the first has it in the cache.
        started: list[tuple[Path, subprocess.Popen[str]]] = []
        try:
            for name in ("job-a", "job-b"):
                workdir = tmp_path / name
                env = job_env(workdir, tiny_model, cache, hub, guard)
                started.append((workdir, start_runner(workdir, env)))
            first, second = finish_together(started, hub)
        finally:
            for _, proc in started:
                stop(proc)
        assert_succeeded(first)
        assert_succeeded(second)

        downloads = hub.downloads()
        downloaded = {key.removeprefix(f"{REPO_ID}/") for key in downloads}
        assert downloaded >= REQUIRED_FILES, downloads
        assert all(count == 1 for count in downloads.values()), downloads  # the lock made the other wait
        assert hub.overlapped == dict.fromkeys(downloads, True), hub.overlapped  # ... and it had to
        assert_cache_holds_what_was_served(hub, hf_home, downloaded)

        # Axolotl's FileLock on dataset_prepared_path: one job tokenized and saved, the other loaded that.
        (dataset_dir,) = [p for p in prepared.iterdir() if p.is_dir()]
        outcomes = {
            (TOKENIZED in r.output, f"{LOADED_PREPARED}{dataset_dir}" in r.output) for r in (first, second)
        }
        assert outcomes == {(True, False), (False, True)}, [_tail(r.output) for r in (first, second)]
        assert (dataset_dir / "state.json").is_file()

        # A later job: everything is cached, so no file content is downloaded and nothing is tokenized,
        # although it was online and asked the hub for the model's current commit.
        hub.release_holds()  # nothing should be downloaded; if something is, fail without waiting
        stamps = file_stamps(dataset_dir)
        asked_for_model_info = model_info_requests(hub)
        workdir = tmp_path / "job-c"
        third = run_runner(workdir, job_env(workdir, tiny_model, cache, hub, guard), timeout=900)
        assert_succeeded(third)
        assert hub.downloads() == downloads
        assert model_info_requests(hub) > asked_for_model_info
        assert f"{LOADED_PREPARED}{dataset_dir}" in third.output, _tail(third.output)
        assert TOKENIZED not in third.output
        after = file_stamps(dataset_dir)
        assert {k: after.get(k) for k in stamps} == stamps  # the prepared dataset was not rewritten
        assert_cache_holds_what_was_served(hub, hf_home, downloaded)

        # A job killed while saving leaves the dataset without its last-written files; Axolotl alone would
        # then fail every later job on it ("neither a Dataset directory nor a DatasetDict directory"). The
        # runner removes it under Axolotl's lock, and this job tokenizes it again.
        for last_written in ("state.json", "dataset_info.json"):
            (dataset_dir / last_written).unlink()
        workdir = tmp_path / "job-d"
        fourth = run_runner(workdir, job_env(workdir, tiny_model, cache, hub, guard), timeout=900)
        assert_succeeded(fourth)
        assert f"removing {dataset_dir}: a prepared dataset a killed job left half-written" in fourth.output
        assert TOKENIZED in fourth.output, _tail(fourth.output)
        assert (dataset_dir / "state.json").is_file()

        # The jobs asked the hub about the base model and nothing else (no kernels, datasets, other repos).
        asked_about = {path for _, path in hub.by_method_and_path()}
        assert all(REPO_ID in path for path in asked_about), sorted(asked_about)

    # Nothing tried to reach a host off 127.0.0.1 (sitecustomize in every Python process of the jobs).
    assert not off_loopback.exists(), off_loopback.read_text()
