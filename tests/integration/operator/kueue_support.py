"""Kueue (sigs.k8s.io/kueue, built from its Go module by hack/kueue/build) as a local process against the
test control plane, with its admission and conversion webhooks served on loopback.

Kueue runs as it would in-cluster, with three local adjustments: its webhooks are registered with
`url: https://127.0.0.1:<port>` and a CA made here (instead of a Service and Kueue's own certificate
rotation, which names the Service's DNS name); only the webhooks of the batch/Job integration and of
Kueue's own types are registered (the only integration enabled); and the metrics certificate Kueue reads
from the fixed path /etc/kueue/metrics/certs lives in a private mount namespace (a tmpfs over /etc seen
by the Kueue process only), so nothing is written to the host's /etc. Everything it installs (webhook
configurations, CRDs with their objects, its namespace) is removed by `uninstall`.
"""

from __future__ import annotations

import base64
import copy
import os
import signal
import subprocess
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from axolotl_operator.certs import new_ca, new_serving_cert
from operator_support import ROOT, apply_yaml, free_port, kubectl, kubectl_json, wait_for

NAMESPACE = "kueue-system"
OWN_GROUPS = {"batch", "kueue.x-k8s.io"}  # the Job integration and Kueue's own API
WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


def build() -> Path:
    """The directory with the `kueue` binary and its manifests (built once, cached)."""
    out = subprocess.run(
        [str(ROOT / "hack/kueue/build")], capture_output=True, text=True, timeout=1800, check=False
    )
    if out.returncode != 0:
        raise AssertionError(f"hack/kueue/build failed:\n{out.stderr[-4000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def local_webhooks(manifests: list[dict[str, Any]], port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """Kueue's webhook configurations for the enabled integration, pointed at 127.0.0.1:`port`."""
    local = []
    for config in manifests:
        if config.get("kind") not in WEBHOOK_KINDS:
            continue
        config = copy.deepcopy(config)
        config["metadata"] = {"name": f"kueue-{config['metadata']['name']}"}
        hooks = []
        for hook in config.get("webhooks") or []:
            groups = {group for rule in hook.get("rules") or [] for group in rule.get("apiGroups") or []}
            if not groups or not groups <= OWN_GROUPS:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            hook["timeoutSeconds"] = 10
            hooks.append(hook)
        config["webhooks"] = hooks
        local.append(config)
    return local


def with_conversion(crd: dict[str, Any], port: int, ca_bundle: str) -> dict[str, Any]:
    """A CRD of several versions converted by Kueue's /convert endpoint (its kustomize patches do the
    same with a Service); single-version CRDs are left as they are."""
    if len(crd["spec"]["versions"]) < 2:
        return crd
    crd = copy.deepcopy(crd)
    crd["spec"]["conversion"] = {
        "strategy": "Webhook",
        "webhook": {
            "clientConfig": {"url": f"https://127.0.0.1:{port}/convert", "caBundle": ca_bundle},
            "conversionReviewVersions": ["v1"],
        },
    }
    return crd


class KueueProcess:
    """Kueue's controller manager on loopback; `install()` starts it, `uninstall()` removes all of it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.home = build()
        self.webhook_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.crds: list[str] = []
        self.webhooks: list[tuple[str, str]] = []

    @property
    def pid(self) -> int:
        """Kueue's own process: unshare and the launcher shell exec into it."""
        assert self.proc is not None
        return self.proc.pid

    @property
    def certs(self) -> Path:
        return self.workdir / "certs"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kueue.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _pki(self) -> str:
        now = datetime.now(UTC)
        ca = new_ca("kueue-test-ca", now)
        serving = new_serving_cert(ca, ["127.0.0.1"], now)
        certs = self.workdir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        (certs / "tls.crt").write_bytes(serving.cert_pem)
        (certs / "tls.key").write_bytes(serving.key_pem)
        os.chmod(certs / "tls.key", 0o600)
        return base64.b64encode(ca.cert_pem).decode()

    def _config(self) -> Path:
        config = {
            "apiVersion": "config.kueue.x-k8s.io/v1beta2",
            "kind": "Configuration",
            "namespace": NAMESPACE,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{self.health_port}"},
            "metrics": {"bindAddress": "0"},
            "webhook": {"host": "127.0.0.1", "port": self.webhook_port, "certDir": str(self.certs)},
            "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": False},
            "integrations": {"frameworks": ["batch/job"]},
        }
        path = self.workdir / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def _argv(self, config: Path) -> list[str]:
        certs = self.workdir / "certs"
        # /etc/kueue/metrics/certs is fixed in Kueue's main; a tmpfs over /etc in a mount namespace of
        # its own gives it one without touching the host (the namespace goes with the process).
        script = (
            'set -e; mount -t tmpfs -o size=1m,mode=755 kueue-etc /etc; mkdir -p /etc/kueue/metrics/certs; '
            'cp "$1"/tls.crt "$1"/tls.key /etc/kueue/metrics/certs/; shift; exec "$@"'
        )
        unshare = ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() != 0:
            unshare = ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
        kueue = [
            str(self.home / "kueue"),
            f"--config={config}",
            f"--kubeconfig={os.environ['KUBECONFIG']}",
            "--feature-gates=VisibilityOnDemand=false",  # no extra API server on 0.0.0.0
            "--zap-log-level=info",
        ]
        return [*unshare, "sh", "-c", script, "kueue-launcher", str(certs), *kueue]

    def ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"Kueue exited; log:\n{self.log()[-4000:]}")
        try:
            with DIRECT.open(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    def install(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca_bundle = self._pki()
        kubectl("create", "namespace", NAMESPACE)
        crds = [yaml.safe_load(p.read_text()) for p in sorted((self.home / "config/crd").glob("*.yaml"))]
        self.crds = [crd["metadata"]["name"] for crd in crds]
        for crd in crds:
            applied = yaml.safe_dump(with_conversion(crd, self.webhook_port, ca_bundle))
            kubectl("apply", "--server-side", "--field-manager=kueue-test", "-f", "-", input=applied)
        kubectl("wait", "--for=condition=Established", "--timeout=60s", *(f"crd/{n}" for n in self.crds))
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self._argv(self._config()), stdout=log, stderr=subprocess.STDOUT)
        wait_for(self.ready, timeout=120, interval=0.5, what="Kueue ready")
        manifests = list(yaml.safe_load_all((self.home / "config/webhook.yaml").read_text()))
        for config in local_webhooks(manifests, self.webhook_port, ca_bundle):
            apply_yaml(config)
            self.webhooks.append((config["kind"], config["metadata"]["name"]))

    def uninstall(self) -> None:
        """Webhooks first (nothing may call a stopped Kueue), then the process, the finalizers it left on
        its objects (nobody would remove them now), its CRDs (with their objects) and its namespace."""
        for kind, name in self.webhooks:
            kubectl("delete", kind, name, "--ignore-not-found", check=False)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        for crd in self.crds:
            for item in kubectl_json("get", crd, "-A")["items"]:
                meta = item["metadata"]
                if meta.get("finalizers"):
                    scope = ["-n", meta["namespace"]] if meta.get("namespace") else []
                    unset = '{"metadata":{"finalizers":null}}'
                    kubectl("patch", crd, meta["name"], *scope, "--type=merge", "-p", unset, check=False)
        if self.crds:
            kubectl("delete", "crd", *self.crds, "--ignore-not-found", "--timeout=120s", check=False)
        kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=false", check=False)
