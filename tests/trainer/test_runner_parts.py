"""Fast tests of the runner's pure parts, the reporter thread and the image definition."""

from __future__ import annotations

import json
import re
import ssl
import sys
import time
import tomllib
from pathlib import Path

import pytest
from axolotl_job_runner import cpu_compat
from axolotl_job_runner.checkpoints import last_checkpoint
from axolotl_job_runner.contract import (
    ProgressReport,
    SummaryError,
    TerminationSummary,
    parse_summary,
)
from axolotl_job_runner.errors import extract_error
from axolotl_job_runner.launch import PLUGIN_NAME, build_command, build_env, effective_config
from axolotl_job_runner.metrics import render_metrics
from axolotl_job_runner.progress import ProgressReporter
from axolotl_job_runner.settings import SettingsError, load_settings
from trainer_support import REPO_ROOT, serve_progress

TRAINER_IMAGE = REPO_ROOT / "trainer-image"


# ---- the termination summary contract ----


def test_summary_is_camel_case_and_round_trips() -> None:
    summary = TerminationSummary(
        outcome="succeeded",
        exit_code=0,
        runtime_seconds=12.345,
        final_loss=1.5,
        steps=10,
        total_steps=10,
        output_dir="/workspace/data/outputs/x",
        last_checkpoint="/workspace/data/outputs/x/checkpoint-10",
        hub_model_id="org/model",
    )
    data = parse_summary(summary.encode())
    assert data == {
        "outcome": "succeeded",
        "exitCode": 0,
        "runtimeSeconds": 12.3,
        "finalLoss": 1.5,
        "steps": 10,
        "totalSteps": 10,
        "outputDir": "/workspace/data/outputs/x",
        "lastCheckpoint": "/workspace/data/outputs/x/checkpoint-10",
        "hubModelId": "org/model",
    }


def test_summary_never_exceeds_4_kib_and_keeps_the_key() -> None:
    summary = TerminationSummary(
        outcome="invalid_config",
        exit_code=78,
        runtime_seconds=1,
        output_dir="/x" * 300,
        error=SummaryError(message="é" * 10_000, key="load_in_4bit"),
    )
    data = summary.encode()
    assert len(data) <= 4096
    parsed = json.loads(data)
    assert parsed["error"]["key"] == "load_in_4bit"
    assert parsed["error"]["message"].endswith("...[truncated]")
    assert parsed["outcome"] == "invalid_config"


def test_summary_nan_loss_is_dropped_not_invalid_json() -> None:
    data = TerminationSummary(
        outcome="failed", exit_code=1, runtime_seconds=1, final_loss=float("nan")
    ).encode()
    assert "finalLoss" not in json.loads(data)


@pytest.mark.parametrize("text", [None, b"", b"not json", b"[]", b'{"outcome": "exploded"}'])
def test_parse_summary_is_tolerant(text: bytes | None) -> None:
    assert parse_summary(text) is None


def test_progress_payload_round_trip() -> None:
    report = ProgressReport(step=3, total_steps=9, loss=float("inf"), job_name="j", job_namespace="ns")
    payload = report.to_payload()
    assert payload["loss"] is None and payload["totalSteps"] == 9 and payload["timestamp"].endswith("Z")
    assert payload["lossNonFinite"] is True
    back = ProgressReport.from_payload(payload)
    assert (back.step, back.loss, back.loss_non_finite) == (3, None, True)
    assert ProgressReport(step=1, loss=0.5).to_payload()["lossNonFinite"] is False


def test_the_callback_flags_a_diverged_loss() -> None:
    """The Trainer logs `loss: nan` when a run diverges; the report says so instead of dropping it."""
    from types import SimpleNamespace

    from axolotl_job_runner.plugin import ProgressCallback

    sent: list[ProgressReport] = []
    callback = ProgressCallback(env={})
    callback.reporter = SimpleNamespace(submit=sent.append)  # type: ignore[assignment]
    state = SimpleNamespace(global_step=4, max_steps=10, epoch=0.4)
    callback.on_log(None, state, None, logs={"loss": 1.25, "learning_rate": 2e-4})
    callback.on_log(None, state, None, logs={"loss": float("nan"), "learning_rate": 2e-4})
    first, diverged = (report.to_payload() for report in sent)
    assert (first["loss"], first["lossNonFinite"]) == (1.25, False)
    assert (diverged["loss"], diverged["lossNonFinite"]) == (None, True)
    json.dumps(diverged, allow_nan=False)  # still valid JSON


# ---- settings and launching ----


def test_settings_defaults_match_the_pod_contract() -> None:
    settings = load_settings({}, detected_gpus=0)
    assert str(settings.config_path) == "/src/config/config.yaml"
    assert str(settings.base_volume) == "/workspace/data"
    assert str(settings.termination_log) == "/dev/termination-log"
    assert settings.metrics_port == 9402 and settings.master_port == 29500
    assert (settings.nnodes, settings.node_rank, settings.nproc_per_node) == (1, 0, 0)


@pytest.mark.parametrize(
    "env",
    [
        {"NNODES": "2"},  # no MASTER_ADDR
        {"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "a"},
        {"NPROC_PER_NODE": "x"},
        {"NPROC_PER_NODE": "-1"},
    ],
)
def test_inconsistent_environment_is_rejected(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(env, detected_gpus=0)


def test_cpu_pod_uses_the_python_launcher() -> None:
    argv = build_command("/venv/bin/python", Path("/tmp/c.yaml"), load_settings({"NPROC_PER_NODE": "0"}))
    assert argv == ["/venv/bin/python", "-m", "axolotl.cli.main", "train", "/tmp/c.yaml", "--launcher=python"]


def test_gpu_pod_uses_accelerate_with_its_gpus() -> None:
    argv = build_command("py", Path("c.yaml"), load_settings({"NPROC_PER_NODE": "4"}))
    assert argv[5:] == ["--launcher=accelerate", "--", "--num_processes=4", "--num_machines=1", "--multi_gpu"]
    single = build_command("py", Path("c.yaml"), load_settings({}, detected_gpus=1))
    assert single[5:] == ["--launcher=accelerate", "--", "--num_processes=1", "--num_machines=1"]


def test_multi_node_pod_uses_torchrun_with_the_rendered_rendezvous() -> None:
    env = {
        "NNODES": "3",
        "NODE_RANK": "2",
        "MASTER_ADDR": "job-0.job",
        "MASTER_PORT": "29500",
        "NPROC_PER_NODE": "8",
    }
    argv = build_command("py", Path("c.yaml"), load_settings(env))
    assert argv[5:] == [
        "--launcher=torchrun",
        "--",
        "--nnodes=3",
        "--node_rank=2",
        "--nproc_per_node=8",
        "--master_addr=job-0.job",
        "--master_port=29500",
    ]


def test_visible_devices_count_when_nproc_is_not_set() -> None:
    assert load_settings({"CUDA_VISIBLE_DEVICES": "0,1"}).nproc_per_node == 2
    assert load_settings({"CUDA_VISIBLE_DEVICES": ""}).nproc_per_node == 0


def test_child_env_forces_no_telemetry_and_finds_the_launchers(tmp_path: Path) -> None:
    env = build_env(
        {"PATH": "/usr/bin", "AXOLOTL_DO_NOT_TRACK": "0"}, "/venv/bin/python", tmp_path / "s.json"
    )
    assert env["AXOLOTL_DO_NOT_TRACK"] == "1"
    # the plugin reports progress; transformers' KubeflowCallback (the operator renders its URL for images
    # without our runner) must not report it a second time
    assert env["DISABLE_KUBEFLOW_INTEGRATION"] == "TRUE"
    assert (
        build_env({"DISABLE_KUBEFLOW_INTEGRATION": "FALSE"}, "/p", tmp_path / "s")[
            "DISABLE_KUBEFLOW_INTEGRATION"
        ]
        == "TRUE"
    )
    assert env["PATH"].split(":")[0] == "/venv/bin"
    assert env["AXOLOTL_JOB_RUNNER_STATE_FILE"] == str(tmp_path / "s.json")


def test_effective_config_only_adds_the_plugin_and_resume_point() -> None:
    raw = {"base_model": "m", "plugins": ["other.Plugin"], "auto_resume_from_checkpoints": True}
    out = effective_config(raw, "/out/checkpoint-4")
    assert out == {
        "base_model": "m",
        "plugins": ["other.Plugin", PLUGIN_NAME],
        "auto_resume_from_checkpoints": False,  # Axolotl's own would pick torn checkpoints
        "resume_from_checkpoint": "/out/checkpoint-4",
    }
    assert raw["plugins"] == ["other.Plugin"] and raw["auto_resume_from_checkpoints"] is True  # not mutated
    assert effective_config(out, None)["plugins"].count(PLUGIN_NAME) == 1
    fresh = effective_config({"base_model": "m"}, None)
    assert "resume_from_checkpoint" not in fresh and fresh["auto_resume_from_checkpoints"] is False
    explicit = effective_config({"resume_from_checkpoint": "/mine"}, "/out/checkpoint-4")
    assert explicit == {"resume_from_checkpoint": "/mine", "plugins": [PLUGIN_NAME]}


def test_last_checkpoint_skips_torn_ones(tmp_path: Path) -> None:
    for step, state in ((2, "{}"), (10, "{}"), (12, '{"trunc'), (14, None)):
        ckpt = tmp_path / f"checkpoint-{step}"
        ckpt.mkdir()
        if state is not None:
            (ckpt / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-final").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"
    assert last_checkpoint(tmp_path / "missing") is None


# ---- error extraction ----


def test_extract_error_prefers_the_real_exception_over_launcher_wrappers() -> None:
    stderr = (
        "Traceback (most recent call last):\n"
        '  File "x.py", line 1\n'
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "Traceback (most recent call last):\n"
        "subprocess.CalledProcessError: Command '['accelerate']' returned non-zero exit status 1.\n"
    )
    assert extract_error(stderr) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"


def test_extract_error_falls_back_to_error_log_lines() -> None:
    stdout = "[2026-01-01 00:00:00,000] [ERROR] [axolotl.cli] dataset foo not found\r\nbye\n"
    assert extract_error("", stdout) == "dataset foo not found"
    assert extract_error("", "") is None


# ---- metrics ----


def test_metrics_render_the_payload_numbers() -> None:
    state = ProgressReport(step=5, total_steps=10, loss=0.5, tokens_per_second=100.0).to_payload()
    text = render_metrics(state, {"axolotljob": "a", "axolotljob_namespace": "b"}, "training")
    assert 'axolotl_job_step{axolotljob="a",axolotljob_namespace="b"} 5.0' in text
    assert 'axolotl_job_runner_phase{axolotljob="a",axolotljob_namespace="b",phase="training"} 1' in text
    assert "axolotl_job_learning_rate" not in text  # unknown values are absent, not 0
    assert text.endswith("\n")


# ---- the reporter thread ----


class _Clock:
    """The reporter's monotonic clock, advanced only by the test: whether a report is due depends on this
    clock alone, never on how fast the machine runs the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def __getattr__(self, name: str):  # anything else the module may use from `time` stays real
        return getattr(time, name)


def _eventually(predicate, what: str) -> None:
    """Wait for something the reporter's threads do; the bound only stops a hung test."""
    deadline = time.monotonic() + 30
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_reporter_coalesces_and_rate_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import axolotl_job_runner.progress as progress

    clock = _Clock()
    monkeypatch.setattr(progress, "time", clock)  # the reporter reads time.monotonic() from its module
    token = tmp_path / "token"
    token.write_text("abc\n")
    state = tmp_path / "state.json"

    def state_step() -> int | None:
        return json.loads(state.read_text())["step"] if state.exists() else None

    with serve_progress() as server:
        # interval=1.0 also bounds the reporter's real sleep before it looks at the clock again
        reporter = ProgressReporter(server.url, str(token), state, interval=1.0)
        reporter.submit(ProgressReport(step=0, total_steps=100))  # nothing sent yet: goes out at once
        _eventually(lambda: reporter.sent == 1, "the first POST")
        for step in range(1, 50):  # reports within the interval: each one handled (state file), none sent
            reporter.submit(ProgressReport(step=step, total_steps=100))
            _eventually(lambda step=step: state_step() == step, f"the state file to show step {step}")
        assert [r.body["step"] for r in server.received] == [0]  # the clock has not moved: nothing was due
        clock.now += 1.0  # the interval passes: only the newest pending report (49) is sent
        _eventually(lambda: reporter.sent == 2, "the POST after the interval")
        assert [r.body["step"] for r in server.received] == [0, 49]
        reporter.submit(ProgressReport(step=100, total_steps=100, final=True))
        reporter.close()  # the final report goes out although the interval has not passed again
        _eventually(lambda: reporter.sent == 3, "the final POST")
    assert [r.body["step"] for r in server.received] == [0, 49, 100]
    assert (reporter.sent, reporter.failed) == (3, 0)
    assert all(r.authorization == "Bearer abc" for r in server.received)
    assert json.loads(state.read_text())["step"] == 100


def _tls_pair(tmp_path: Path, name: str) -> tuple[Path, ssl.SSLContext]:
    """A CA file and a server context whose certificate (for 127.0.0.1) that CA signed."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def cert(subject: str, key, issuer: str, signer, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    pem = serialization.Encoding.PEM
    ca_file, cert_file, key_file = (
        tmp_path / f"{name}-ca.crt",
        tmp_path / f"{name}.crt",
        tmp_path / f"{name}.key",
    )
    ca_file.write_bytes(cert(f"{name}-ca", ca_key, f"{name}-ca", ca_key, True).public_bytes(pem))
    cert_file.write_bytes(cert("progress", key, f"{name}-ca", ca_key, False).public_bytes(pem))
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return ca_file, server


def test_reporter_posts_over_https_verified_against_the_operators_ca(tmp_path: Path) -> None:
    ca_file, server_tls = _tls_pair(tmp_path, "operator")
    stranger_ca, _ = _tls_pair(tmp_path, "stranger")
    token = tmp_path / "token"
    token.write_text("abc\n")
    with serve_progress(server_tls) as server:
        assert server.url.startswith("https://")
        reporter = ProgressReporter(server.url, str(token), None, interval=0.0, ca_file=str(ca_file))
        reporter.submit(ProgressReport(step=3, total_steps=10))
        reporter.close()
        assert (reporter.sent, reporter.failed) == (1, 0)
        assert [(r.body["step"], r.authorization) for r in server.received] == [(3, "Bearer abc")]
        # another CA: the certificate is refused before anything (the token) is sent
        wrong = ProgressReporter(server.url, str(token), None, interval=0.0, ca_file=str(stranger_ca))
        wrong.submit(ProgressReport(step=4))
        wrong.close()
        assert (wrong.sent, wrong.failed) == (0, 1)
        assert len(server.received) == 1


def test_reporter_never_blocks_the_caller_or_the_state_file_on_a_hanging_endpoint(tmp_path: Path) -> None:
    import socket
    import threading

    accepted = threading.Event()
    with socket.socket() as sink:  # accepts, never answers
        sink.bind(("127.0.0.1", 0))
        sink.listen(8)
        conns: list[socket.socket] = []

        def accept() -> None:
            conn, _ = sink.accept()
            conns.append(conn)
            accepted.set()

        threading.Thread(target=accept, daemon=True).start()
        state = tmp_path / "state.json"
        url = f"http://127.0.0.1:{sink.getsockname()[1]}/"
        reporter = ProgressReporter(url, None, state, interval=0.0, timeout=30)
        reporter.submit(ProgressReport(step=0))
        assert accepted.wait(10), "the reporter never connected"
        for step in range(1, 1000):  # while that POST hangs, the training thread keeps going
            reporter.submit(ProgressReport(step=step))
        reporter.submit(ProgressReport(step=1000, final=True))
        reporter.close(timeout=0.5)  # close() is bounded too
        assert reporter.sent == 0 and reporter.failed == 0  # the first POST is still in flight
        assert reporter._thread.is_alive()  # waiting for it to deliver the final report, as a daemon
        # The numbers the runner reports (summary, metrics) did not wait for the network.
        assert json.loads(state.read_text()) | {"timestamp": ""} == (
            ProgressReport(step=1000, final=True).to_payload() | {"timestamp": ""}
        )
        for conn in conns:
            conn.close()


# ---- the image definition (hack/images builds it on a local base; its release base is checked here) ----


def _dockerfile() -> list[str]:
    text = (TRAINER_IMAGE / "Dockerfile").read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_dockerfile_pins_the_same_axolotl_release_as_the_extra() -> None:
    froms = [line.split()[1] for line in _dockerfile() if line.upper().startswith("FROM ")]
    assert froms == ["${BASE_IMAGE}"]  # hack/images builds on a local base; releases on the default
    defaults = [line.split("=", 1)[1] for line in _dockerfile() if line.startswith("ARG BASE_IMAGE=")]
    assert len(defaults) == 1
    image, _, tag = defaults[0].partition(":")
    assert image == "axolotlai/axolotl"
    tag = tag.split("@")[0]
    assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"not a pinned release tag: {tag!r}"
    pyproject = tomllib.loads((TRAINER_IMAGE / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [
        req for req in pyproject["project"]["optional-dependencies"]["axolotl"] if req.startswith("axolotl")
    ]
    assert pins == [f"axolotl=={tag}"]
    assert tag.startswith("0.21.")
    import axolotl

    assert axolotl.__version__ == tag  # this test environment equals the image


def test_dockerfile_installs_the_runner_and_sets_the_entrypoint() -> None:
    lines = _dockerfile()
    copies = " ".join(line for line in lines if line.startswith("COPY "))
    assert "pyproject.toml" in copies and "src" in copies
    run = " ".join(line for line in lines if line.startswith("RUN "))
    assert "install" in run and "/opt/axolotl-job-runner" in run and "axolotl-job-runner --version" in run
    entrypoints = [line for line in lines if line.startswith("ENTRYPOINT ")]
    assert entrypoints == ['ENTRYPOINT ["axolotl-job-runner"]']
    pyproject = tomllib.loads((TRAINER_IMAGE / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"] == {"axolotl-job-runner": "axolotl_job_runner.runner:main"}
    assert pyproject["project"]["dependencies"] == ["pyyaml>=6"]


def test_console_script_is_installed() -> None:
    import subprocess

    script = Path(sys.executable).parent / "axolotl-job-runner"
    out = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "axolotl-job-runner 0.1.0"


def test_runner_package_stays_light() -> None:
    """Importing the runner must not import Axolotl or torch (PID 1 stays small)."""
    import subprocess

    code = (
        "import sys, axolotl_job_runner.runner, axolotl_job_runner.contract; "
        "print(sorted(m for m in ('torch', 'axolotl', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


# ---- Axolotl in several CPU processes (cpu_compat) ----


def test_cpu_compat_applies_only_to_several_processes_without_cuda() -> None:
    assert cpu_compat.needed({"WORLD_SIZE": "2"}, cuda_available=False)
    assert not cpu_compat.needed({"WORLD_SIZE": "2"}, cuda_available=True)  # a GPU job runs Axolotl as is
    assert not cpu_compat.needed({"WORLD_SIZE": "1"}, cuda_available=False)
    assert not cpu_compat.needed({}, cuda_available=False)
    assert not cpu_compat.needed({"WORLD_SIZE": "two"}, cuda_available=False)


def test_cpu_compat_places_a_cpu_process_model_on_the_cpu() -> None:
    def normalize(cfg: dict[str, object]) -> str:  # what Axolotl's normalize_config does with WORLD_SIZE > 1
        cfg["device_map"] = {"": 0}
        return "normalized"

    on_cpu = {"device": "cpu"}
    assert cpu_compat.cpu_device_map(normalize)(on_cpu) == "normalized"
    assert on_cpu["device_map"] == {"": "cpu"}
    on_gpu = {"device": "cuda:0"}
    cpu_compat.cpu_device_map(normalize)(on_gpu)
    assert on_gpu["device_map"] == {"": 0}
