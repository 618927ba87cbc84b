"""Helpers for the trainer tier: a tiny local Llama, a loopback progress endpoint, and running
the real `axolotl-job-runner` console script. Everything stays offline and on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

# Axolotl/transformers/kernels would otherwise call the Hugging Face Hub (and telemetry) on
# import; the tests may only talk to 127.0.0.0/8.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "AXOLOTL_DO_NOT_TRACK": "1",
    "DO_NOT_TRACK": "1",
    "WANDB_MODE": "disabled",
    "NO_PROXY": "127.0.0.1,localhost",
    "no_proxy": "127.0.0.1,localhost",
}
os.environ.update(OFFLINE_ENV)

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(sys.executable).parent / "axolotl-job-runner"
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "omicron",
    "pi",
    "rho",
    "sigma",
    "tau",
]


@dataclass(frozen=True)
class TinyModel:
    model_dir: Path
    data_file: Path


def make_tiny_model(root: Path, hidden_size: int = 32, layers: int = 2) -> TinyModel:
    """A small Llama with a BPE tokenizer trained on the test corpus (no download).

    The defaults (2 layers, hidden 32, ~48k parameters) are for the CPU tests; the GPU benchmark
    passes larger sizes.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    rows = []
    for i in range(64):
        word = WORDS[i % len(WORDS)]
        rows.append(
            {
                "instruction": f"Repeat the word {word}",
                "input": "",
                "output": " ".join([word] * rng.randint(2, 4)),
            }
        )
    data_file = root / "alpaca.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")

    corpus = [f"{r['instruction']} {r['output']}" for r in rows] + [
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request. ### Instruction: ### Input: ### Response:"
    ]
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    model_dir = root / "tiny-llama"
    fast.save_pretrained(model_dir)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden_size // 64),
        num_key_value_heads=1,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(model_dir)
    return TinyModel(model_dir=model_dir, data_file=data_file)


def cpu_lora_config(tiny: TinyModel, workdir: Path, **overrides: Any) -> dict[str, Any]:
    """An Axolotl LoRA config that trains the tiny model on a CPU in a few seconds."""
    config: dict[str, Any] = {
        "base_model": str(tiny.model_dir),
        "tokenizer_type": "PreTrainedTokenizerFast",
        "datasets": [{"path": str(tiny.data_file), "ds_type": "json", "type": "alpaca"}],
        "dataset_prepared_path": str(workdir / "prepared"),
        "output_dir": str(workdir / "outputs" / "tiny"),
        "adapter": "lora",
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lora_target_linear": True,
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "attn_implementation": "eager",
        "sequence_len": 64,
        "sample_packing": False,
        "micro_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "num_epochs": 1,
        "max_steps": 8,
        "learning_rate": 0.001,
        "optimizer": "adamw_torch",
        "lr_scheduler": "cosine",
        "logging_steps": 1,
        "save_steps": 4,
        "save_total_limit": 10,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "val_set_size": 0,
        "seed": 42,
        "special_tokens": {"pad_token": "<pad>"},
    }
    config.update(overrides)
    return config


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Received:
    path: str
    authorization: str | None
    body: dict[str, Any]
    at: float


@dataclass
class ProgressServer:
    """A loopback HTTP endpoint that records what the runner POSTs."""

    url: str
    received: list[Received] = field(default_factory=list)


@contextlib.contextmanager
def serve_progress(tls: ssl.SSLContext | None = None) -> Iterator[ProgressServer]:
    """The endpoint, over HTTPS with `tls` (a server context)."""
    holder: list[ProgressServer] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            holder[0].received.append(
                Received(self.path, self.headers.get("Authorization"), body, time.monotonic())
            )
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls is not None:
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if tls is not None else "http"
    holder.append(ProgressServer(url=f"{scheme}://127.0.0.1:{httpd.server_address[1]}/apis/progress"))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    httpd.shutdown()
    httpd.server_close()


@dataclass
class RunResult:
    returncode: int
    output: str
    summary_bytes: bytes
    workdir: Path

    @property
    def summary(self) -> dict[str, Any]:
        return json.loads(self.summary_bytes)


def runner_env(workdir: Path, config: dict[str, Any], **extra: str) -> dict[str, str]:
    """The pod environment the operator renders, pointed at temp paths."""
    config_dir = workdir / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AXOLOTL_", "PYTEST_"))}
    env.update(OFFLINE_ENV)
    env.update(
        {
            "AXOLOTL_CONFIG_DIR": str(config_dir),
            "BASE_VOLUME": str(workdir),
            "HF_HOME": str(workdir / ".cache" / "huggingface"),
            "AXOLOTL_TERMINATION_LOG": str(workdir / "termination-log"),
            "AXOLOTL_METRICS_PORT": "0",
            "AXOLOTL_JOB_NAME": "tiny",
            "AXOLOTL_JOB_NAMESPACE": "ml",
            "NPROC_PER_NODE": "0",
            "CUDA_VISIBLE_DEVICES": "",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    env.update(extra)
    return env


def start_runner(workdir: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """Start the installed console script in its own session (so a test can kill the group)."""
    log = open(workdir / "runner.log", "a", encoding="utf-8")  # noqa: SIM115 - closed by the child exit
    return subprocess.Popen(
        [str(RUNNER)],
        env=env,
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def run_runner(workdir: Path, env: dict[str, str], timeout: float = 600) -> RunResult:
    proc = start_runner(workdir, env)
    try:
        returncode = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    output = (workdir / "runner.log").read_text(encoding="utf-8", errors="replace")
    term = workdir / "termination-log"
    return RunResult(returncode, output, term.read_bytes() if term.exists() else b"", workdir)
