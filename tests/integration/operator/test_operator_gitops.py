"""GitOps health judged by the tools' own code on real AxolotlJobs: Flux's kstatus
(sigs.k8s.io/cli-utils) and Argo CD's health script (docs/argocd/health.lua) in gopher-lua, the Lua VM
Argo CD runs, both through hack/gitops-health. One job per state, each waited for with the operator's
real status, then the whole list judged at once."""

from __future__ import annotations

import json
import subprocess

import pytest
from operator_support import ROOT, apply_yaml, kubectl, make_axj, wait_phase

HEALTH_SCRIPT = ROOT / "docs" / "argocd" / "health.lua"

# name -> (the job, phase, reason, kstatus, Argo CD health)
CASES = {
    "training": (make_axj("training", {"kwok.axolotl.ai/hold": "true"}), "Running", "Training",
                 "InProgress", "Progressing"),
    "too-big": (make_axj("too-big", gpus=64), "Pending", "Unschedulable", "InProgress", "Progressing"),
    "done": (make_axj("done"), "Succeeded", "Succeeded", "Current", "Healthy"),
    "broken": (make_axj("broken", {"kwok.axolotl.ai/exit-code": "1"}, backoffLimit=0), "Failed",
               "BackoffLimitExceeded", "Failed", "Degraded"),
    "invalid": (make_axj("invalid", config={"load_in_4bit": True, "adapter": None, "lora_r": None}),
                "Failed", "InvalidSpec", "Failed", "Degraded"),
    # Ready is True only once succeeded (DESIGN.md), so kstatus reads a suspended job as in progress;
    # Argo CD has a state of its own for it.
    "paused": (make_axj("paused", suspend=True), "Suspended", "Suspended", "InProgress", "Suspended"),
}


@pytest.fixture(scope="module")
def gitops_health() -> str:
    built = subprocess.run([str(ROOT / "hack" / "gitops-health" / "build")], capture_output=True, text=True,
                           timeout=900, check=False)
    assert built.returncode == 0, built.stderr
    return built.stdout.strip().splitlines()[-1]


def judged(binary: str, namespace: str) -> dict[str, dict[str, str]]:
    listed = kubectl("get", "axolotljobs", "-n", namespace, "-o", "json")
    out = subprocess.run([binary, str(HEALTH_SCRIPT)], input=listed, capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return {v["name"]: v for v in map(json.loads, out.splitlines())}


def test_flux_and_argo_cd_read_each_state_of_a_real_job(op, namespace, gitops_health):
    for job, *_ in CASES.values():
        apply_yaml(job, namespace)
    for name, (_, phase, reason, *_) in CASES.items():
        wait_phase(namespace, name, phase, reason, timeout=120)
    verdicts = judged(gitops_health, namespace)
    for name, (*_, kstatus, argocd) in CASES.items():
        verdict = verdicts[name]
        assert (verdict["kstatus"], verdict["argocd"]) == (kstatus, argocd), verdict
    assert "spec.config.load_in_4bit" in verdicts["invalid"]["argocdMessage"]
    assert "Unschedulable" in verdicts["too-big"]["argocdMessage"]


def test_a_spec_change_not_yet_observed_is_in_progress_for_both(op, namespace, gitops_health):
    apply_yaml(make_axj("edited", suspend=True), namespace)
    wait_phase(namespace, "edited", "Suspended", "Suspended")
    op.stop()  # nobody observes the next generation
    kubectl("patch", "axolotljob", "edited", "-n", namespace, "--type=merge", "-p",
            '{"spec":{"suspend":false}}')
    verdict = judged(gitops_health, namespace)["edited"]
    assert (verdict["kstatus"], verdict["argocd"]) == ("InProgress", "Progressing"), verdict
