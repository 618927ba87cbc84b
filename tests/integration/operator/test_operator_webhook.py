"""The admission webhook on the real API server: `kubectl apply` refuses bad specs with the field named and
stores nothing, `--dry-run=server` (Argo CD's diff) refuses too, a stale key comes back as a `Warning:`,
and the failure policy decides what happens while the operator is down.

The operator runs as `make demo` runs it: `axolotl-operator run --webhook-port N`, which registers a URL on
loopback with a throw-away CA (its own ValidatingWebhookConfiguration per test module, removed at the end).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import ssl
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_support import (
    ROOT,
    OperatorProcess,
    free_port,
    kubectl,
    kubectl_json,
    listening_sockets,
    make_axj,
    wait_for,
    wait_phase,
)

INVALID = sorted((ROOT / "tests" / "examples" / "invalid").glob("*.yaml"))
WEBHOOK = "validate.axolotljobs.axolotl.ai"


class WebhookOperator(OperatorProcess):
    """The operator with its webhook on a fixed loopback port and its own configuration name."""

    def __init__(self, log_path: Path) -> None:
        self.configuration = f"axolotl-operator-test-{uuid.uuid4().hex[:8]}"
        self.webhook_port = free_port()
        super().__init__(log_path)
        self.use_policy("Fail")

    def use_policy(self, policy: str) -> None:
        self.extra_args = (
            "--webhook-port",
            str(self.webhook_port),
            "--webhook-configuration",
            self.configuration,
            "--webhook-failure-policy",
            policy,
        )

    def start(self, wait: bool = True) -> None:
        super().start(wait)
        if wait:  # registered only once the endpoint listens
            wait_for(self.registered, timeout=60, interval=0.2, what="the webhook's registration")

    def registered(self) -> dict[str, Any] | None:
        out = kubectl("get", "validatingwebhookconfiguration", self.configuration, "-o", "json", check=False)
        return yaml.safe_load(out) if out else None

    def remove_configuration(self) -> None:
        kubectl("delete", "validatingwebhookconfiguration", self.configuration, "--ignore-not-found")


@pytest.fixture(scope="module")
def webhook_operator(
    kubeenv: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WebhookOperator]:
    log_dir = Path(os.environ.get("AXOLOTL_OPERATOR_TEST_LOG_DIR") or tmp_path_factory.mktemp("operator"))
    log_dir.mkdir(parents=True, exist_ok=True)
    process = WebhookOperator(log_dir / "test_operator_webhook.log")
    process.start()
    try:
        yield process
        if process.running():
            assert process.stop() == 0, f"the operator did not shut down cleanly; log: {process.log_path}"
            assert process.registered() is None, "a graceful stop removes the local registration"
    finally:
        if process.running():
            process.kill()
        process.remove_configuration()  # a killed operator leaves it behind: other modules must not see it


@pytest.fixture
def hook(webhook_operator: WebhookOperator) -> WebhookOperator:
    webhook_operator.use_policy("Fail")
    webhook_operator.ensure()
    return webhook_operator


def apply(text: str, namespace: str, *extra: str) -> tuple[int, str, str]:
    """`kubectl apply` as a user runs it: exit code, stdout and stderr (where warnings and denials go)."""
    proc = subprocess.run(
        ["kubectl", "apply", "-n", namespace, "-f", "-", *extra],
        input=text,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def stored_jobs(namespace: str) -> list[str]:
    return [i["metadata"]["name"] for i in kubectl_json("get", "axolotljobs", "-n", namespace)["items"]]


def expected_path(path: Path) -> str:
    match = re.search(r"^# expect: (\S+)$", path.read_text(), re.MULTILINE)
    assert match, f"{path} has no '# expect:' line"
    return match.group(1)


@pytest.mark.parametrize("example", INVALID, ids=[p.stem for p in INVALID])
def test_each_invalid_example_is_refused_at_apply_naming_the_field(hook, namespace, example):
    text = example.read_text()
    for extra in ((), ("--dry-run=server",)):
        code, _, stderr = apply(text, namespace, *extra)
        assert code != 0, f"{example.name} {extra} was accepted"
        assert expected_path(example) in stderr, stderr
    assert stored_jobs(namespace) == []


def test_webhook_errors_list_every_field_and_are_the_operators(hook, namespace):
    bad = make_axj("two-problems", config={"load_in_4bit": True, "adapter": None, "lora_r": None})
    bad["spec"]["env"] = [{"name": "LD_PRELOAD", "value": "x"}]
    code, _, stderr = apply(yaml.safe_dump(bad), namespace)
    assert code != 0
    assert f'admission webhook "{WEBHOOK}" denied the request' in stderr
    assert "spec.config.load_in_4bit" in stderr and "spec.env[0].name" in stderr
    assert stored_jobs(namespace) == []


def test_a_stale_key_is_accepted_with_a_warning(hook, namespace):
    (akash,) = yaml.safe_load_all((ROOT / "examples" / "akash" / "quickstart.yaml").read_text())
    akash["epochs"] = 3
    akash["learning_rate"] = float(akash["learning_rate"])  # PyYAML's 1.1 reading; kubectl reads a number
    job = make_axj("akash", config=None)
    job["spec"]["config"] = akash
    code, stdout, stderr = apply(yaml.safe_dump(job), namespace)
    assert code == 0, stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("Warning: ")]
    assert any("spec.config.epochs" in w and "num_epochs" in w for w in warnings), stderr
    assert "created" in stdout and stored_jobs(namespace) == ["akash"]


def test_an_update_is_judged_on_what_it_changes(hook, namespace):
    code, _, stderr = apply(yaml.safe_dump(make_axj("edited")), namespace)
    assert code == 0, stderr
    hooked = make_axj("edited", env=[{"name": "LD_AUDIT", "value": "x"}])
    code, _, stderr = apply(yaml.safe_dump(hooked), namespace)
    assert code != 0 and "spec.env[0].name" in stderr
    suspend = '{"spec":{"suspend":true}}'
    kubectl("patch", "axolotljob", "edited", "-n", namespace, "--type=merge", "-p", suspend)
    assert kubectl_json("get", "axolotljob", "edited", "-n", namespace)["spec"]["suspend"] is True


def test_with_fail_the_down_operator_refuses_and_with_ignore_invalid_specs_are_marked(hook, namespace):
    valid = yaml.safe_dump(make_axj("while-down"))
    hook.kill()  # crashed or restarting: the registration stays
    code, _, stderr = apply(valid, namespace)
    assert code != 0 and f'failed calling webhook "{WEBHOOK}"' in stderr, stderr
    assert stored_jobs(namespace) == []

    hook.use_policy("Ignore")
    hook.start()
    assert hook.registered()["webhooks"][0]["failurePolicy"] == "Ignore"
    hook.kill()
    invalid = (ROOT / "tests" / "examples" / "invalid" / "quantized-without-adapter.yaml").read_text()
    code, _, stderr = apply(invalid, namespace)
    assert code == 0, stderr  # Ignore: stored while nobody judged it
    hook.start()
    obj = wait_phase(namespace, "quantized-no-adapter", "Failed", "InvalidSpec")
    assert "spec.config.load_in_4bit" in obj["status"]["message"]
    hook.stop()
    hook.use_policy("Fail")


def test_the_local_webhook_listens_and_is_registered_on_loopback_only(hook):
    """Read from state, not by sending traffic: the registered URL and the operator's sockets in /proc."""
    (webhook,) = hook.registered()["webhooks"]
    assert webhook["clientConfig"]["url"] == f"https://127.0.0.1:{hook.webhook_port}/validate-axolotljob"
    assert hook.proc is not None
    sockets = listening_sockets(hook.proc.pid)
    on_port = [address for address, port in sockets if port == hook.webhook_port]
    assert on_port == [ipaddress.ip_address("127.0.0.1")], sockets


def test_a_forged_review_gets_a_verdict_not_a_crash(hook):
    """Anyone who reaches the port can send reviews: hostile uids (Kopf keys its memos by uid) and a
    spec too large to judge cheaply get an answer, and the operator stays up."""
    bundle = base64.b64decode(hook.registered()["webhooks"][0]["clientConfig"]["caBundle"])
    context = ssl.create_default_context(cadata=bundle.decode())
    huge = make_axj("huge", config={f"made_up_{i}": i for i in range(20_000)})
    for uid, body in ((["hostile"], make_axj("forged")), ("u-1", huge)):
        body["metadata"].update(namespace="anywhere", uid=uid)
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "forged-request",
                "kind": {"group": "axolotl.ai", "version": "v1alpha1", "kind": "AxolotlJob"},
                "resource": {"group": "axolotl.ai", "version": "v1alpha1", "resource": "axolotljobs"},
                "operation": "UPDATE",
                "userInfo": {"username": "forger"},
                "object": body,
                "oldObject": make_axj("forged"),
            },
        }
        request = urllib.request.Request(
            f"https://127.0.0.1:{hook.webhook_port}/validate-axolotljob",
            data=json.dumps(review).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, context=context, timeout=30) as answer:
            verdict = json.loads(answer.read())["response"]
        assert verdict["uid"] == "forged-request"
        if body is huge:
            assert verdict["allowed"] is False and "more than 10000 values" in verdict["status"]["message"]
        else:
            assert verdict["allowed"] is True
    assert hook.healthy() and "Traceback" not in hook.log()
