"""Prometheus metrics for a PodMonitor: the same numbers as the progress payload.

Served by the runner process (not the training process) from the state file the plugin
writes, so the port is up before training starts and scrapes never touch the training loop.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# payload field -> (metric name, help)
GAUGES: list[tuple[str, str, str]] = [
    ("step", "axolotl_job_step", "Optimizer steps completed."),
    ("totalSteps", "axolotl_job_total_steps", "Optimizer steps the run will take."),
    ("epoch", "axolotl_job_epoch", "Fractional epoch reached."),
    ("loss", "axolotl_job_loss", "Last logged training loss."),
    ("learningRate", "axolotl_job_learning_rate", "Current learning rate."),
    ("gradNorm", "axolotl_job_grad_norm", "Last logged gradient norm."),
    ("tokensPerSecond", "axolotl_job_tokens_per_second", "Trainable tokens per second, all GPUs."),
    ("etaSeconds", "axolotl_job_eta_seconds", "Estimated seconds until training ends."),
]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render_metrics(state: dict[str, Any] | None, labels: dict[str, str], phase: str) -> str:
    """Prometheus text exposition (version 0.0.4) for one progress state."""
    label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    lines = [
        "# HELP axolotl_job_runner_phase Runner phase (1 for the current one).",
        "# TYPE axolotl_job_runner_phase gauge",
    ]
    for name in ("validating", "training", "finished"):
        sep = "," if label_text else ""
        lines.append(f'axolotl_job_runner_phase{{{label_text}{sep}phase="{name}"}} {int(name == phase)}')
    for field, metric, help_text in GAUGES:
        value = (state or {}).get(field)
        if value is None:
            continue
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} gauge")
        lines.append(f"{metric}{{{label_text}}} {float(value)!r}")
    return "\n".join(lines) + "\n"


def read_state(path: Path) -> dict[str, Any] | None:
    """The last progress payload the plugin wrote, or None."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class MetricsServer:
    """A tiny threaded HTTP server answering GET /metrics (and /healthz)."""

    def __init__(self, port: int, body: Callable[[], str], host: str = "0.0.0.0") -> None:
        render = body

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] == "/metrics":
                    payload = render().encode()
                    content_type = "text/plain; version=0.0.4; charset=utf-8"
                elif self.path == "/healthz":
                    payload, content_type = b"ok\n", "text/plain"
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
                return

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> MetricsServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
