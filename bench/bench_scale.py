"""Side by side on one kwok control plane: the raw API limit, the operator, Kubeflow's training-operator;
then a sustained scale run of 1,000 AxolotlJobs (100 of them running and reporting progress).

    .venv/bin/python bench/bench_scale.py [--n 1 100 1000] [--skip-training-operator] [--skip-raw]
        [--scale-minutes 3 | --skip-scale] [--profile] [--kopf SETTING=VALUE ...]

Per N and system, in a fresh namespace deleted (and waited for) before the next system starts, with a
fresh controller process:
  raw                a client process creating exactly what `render` makes for N AxolotlJobs (ConfigMap,
                     PVC, Job; owner references to AxolotlJobs created beforehand with no controller
                     running), through `axolotl_operator.kube.Kube` (the operator's client library and
                     pool) from MAX_WORKERS threads (Kopf's handler threads), no validation, no status
  operator           `axolotl-operator run` and N AxolotlJobs created at once (MAX_WORKERS threads)
  training-operator  Kubeflow's v1.8.1 manager (hack/training-operator) and N single-pod PyTorchJobs
                     (same image and resources, 1 GPU)
Every pod gets `kwok.axolotl.ai/exit-code: "0"`: kwok runs it ~1 s and it exits 0 (the one stage that
also completes pods not owned by a batch/v1 Job). Times come from watches: "children" is the Job's
ADDED event (the last child: ConfigMap and PVC are created before it) or, for a PyTorchJob, its pod and
Service; "succeeded" is the Job's Complete condition (raw), the AxolotlJob's phase (operator) or the
PyTorchJob's Succeeded condition. t0 is the first create request; per-job times count from that job's
own create request. CPU and peak RSS are the controller process' (from /proc); API requests are the
API server's apiserver_request_total (every client, kube-controller-manager/scheduler/kwok included)
between t0 and all succeeded. Results: bench/results/latest.json and latest.png (--output moves both).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from axolotl_operator.api import parse_job
from axolotl_operator.kube import ApiError, Kube
from axolotl_operator.manager import MAX_WORKERS
from axolotl_operator.render import render
from axolotl_operator.settings import OperatorSettings
from axolotl_operator.trainer_contract import ProgressReport, utc_now
from bench_operator import CACHE, ROOT, free_port, kubectl, operator_argv
from scale_support import (
    Sampler,
    TrainingOperator,
    Watch,
    api_requests,
    build_training_operator,
    cpu_seconds,
    create_namespace,
    create_object,
    delete_namespace,
    diff_requests,
    median,
    memory_mib,
    owner_name,
    pct,
)

RESULTS = ROOT / "bench/results"
WORK = CACHE / "bench-scale"
STATE_DIR = os.environ.get("KUBEENV_STATE_DIR", str(CACHE / "bench-kubeenv"))
AXJ_PATH = "/apis/axolotl.ai/v1alpha1/namespaces/{ns}/axolotljobs"
PTJ_PATH = "/apis/kubeflow.org/v1/namespaces/{ns}/pytorchjobs"
EXIT_0 = {"kwok.axolotl.ai/exit-code": "0"}
HOLD = {"kwok.axolotl.ai/hold": "true", "kwok.axolotl.ai/exit-code": "0"}
PROGRESS_INTERVAL = 5.0  # the trainer's real interval (trainer_contract.PROGRESS_MIN_INTERVAL_SECONDS)


def axolotljob(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "axolotl.ai/v1alpha1",
        "kind": "AxolotlJob",
        "metadata": {"name": name},
        "spec": {
            "gpus": 1,
            "storage": {"size": "1Gi"},
            "podMetadata": {"annotations": dict(annotations)},
            "config": {
                "base_model": "NousResearch/Llama-3.2-1B",
                "adapter": "lora",
                "datasets": [{"path": "teknium/GPT4-LLM-Cleaned", "type": "alpaca"}],
            },
        },
    }


def pytorchjob(name: str, container: dict[str, Any]) -> dict[str, Any]:
    """A single-pod PyTorchJob with the rendered trainer container's image and resources."""
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {
            "pytorchReplicaSpecs": {
                "Master": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": {
                        "metadata": {"annotations": dict(EXIT_0)},
                        "spec": {
                            "containers": [
                                {
                                    "name": "pytorch",
                                    "image": container["image"],
                                    "resources": container.get("resources") or {},
                                }
                            ]
                        },
                    },
                }
            }
        },
    }


def names(n: int) -> list[str]:
    return [f"job-{i:04d}" for i in range(n)]


def create_all(kube: Kube, namespace: str, manifests: list[dict[str, Any]]) -> dict[str, float]:
    """Create at once from MAX_WORKERS threads; name -> monotonic time its request started."""
    starts: dict[str, float] = {}

    def one(manifest: dict[str, Any]) -> None:
        manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
        starts[manifest["metadata"]["name"]] = time.monotonic()
        create_object(kube, manifest)

    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        list(pool.map(one, manifests))
    return starts


# ---------------------------------------------------------------------------------------------- a phase


class Tracker:
    """Per job: when each needed child kind was seen, and when it succeeded."""

    def __init__(self, n: int, child_kinds: set[str]) -> None:
        self.n = n
        self.child_kinds = child_kinds
        self.children: dict[str, dict[str, float]] = defaultdict(dict)
        self.done: dict[str, float] = {}
        self.lock = threading.Lock()

    def child(self, name: str | None, kind: str, t: float) -> None:
        if name:
            with self.lock:
                self.children[name].setdefault(kind, t)

    def succeeded(self, name: str | None, t: float) -> None:
        if name:
            with self.lock:
                self.done.setdefault(name, t)

    def child_times(self) -> dict[str, float]:
        with self.lock:
            return {k: max(v.values()) for k, v in self.children.items() if set(v) >= self.child_kinds}

    def wait(self, what: str, count: Any, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while count() < self.n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: {count()}/{self.n} after {timeout:.0f}s")
            time.sleep(0.05)


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    return any(
        c.get("type") == kind and c.get("status") == "True"
        for c in (obj.get("status") or {}).get("conditions") or []
    )


def summarize(
    system: str,
    tracker: Tracker,
    starts: dict[str, float],
    t0: float,
    cpu: float,
    rss_peak: float,
    requests: dict[str, Any],
) -> dict[str, Any]:
    child = tracker.child_times()
    t_children = max(child.values()) - t0
    t_done = max(tracker.done.values()) - t0
    per_child = [child[k] - starts[k] for k in child]
    per_done = [tracker.done[k] - starts[k] for k in tracker.done]
    return {
        "system": system,
        "n": tracker.n,
        "children_s": round(t_children, 3),
        "succeeded_s": round(t_done, 3),
        "jobs_per_s": round(tracker.n / t_children, 2),
        "succeeded_per_s": round(tracker.n / t_done, 2),
        "job_to_children_p50_s": round(pct(per_child, 0.5) or 0, 3),
        "job_to_children_p99_s": round(pct(per_child, 0.99) or 0, 3),
        "job_to_succeeded_p50_s": round(pct(per_done, 0.5) or 0, 3),
        "job_to_succeeded_p99_s": round(pct(per_done, 0.99) or 0, 3),
        "cpu_s": round(cpu, 2),
        "peak_rss_mib": round(rss_peak, 1),
        "api_requests": requests,
    }


class Bench:
    def __init__(self, args: argparse.Namespace, kube: Kube) -> None:
        self.args = args
        self.kube = kube
        self.settings = OperatorSettings.from_env()
        self.to_home: Path | None = None
        self.to_installed = False
        self.profiles: list[str] = []

    # ------------------------------------------------------------------ shared watches

    def _watches(self, tracker: Tracker, namespace: str, system: str) -> list[Watch]:
        k = self.kube
        watches: list[Watch] = []
        if system in ("raw", "operator"):

            def on_job(_type: str, obj: dict[str, Any], t: float) -> None:
                name = obj["metadata"]["name"]
                tracker.child(name, "Job", t)
                if system == "raw" and condition_true(obj, "Complete"):
                    tracker.succeeded(name, t)

            watches.append(Watch(k, f"/apis/batch/v1/namespaces/{namespace}/jobs", on_job))
        if system == "operator":

            def on_axj(_type: str, obj: dict[str, Any], t: float) -> None:
                if (obj.get("status") or {}).get("phase") == "Succeeded":
                    tracker.succeeded(obj["metadata"]["name"], t)

            watches.append(Watch(k, AXJ_PATH.format(ns=namespace), on_axj))
        if system == "training-operator":

            def on_pod(_type: str, obj: dict[str, Any], t: float) -> None:
                tracker.child(owner_name(obj, "PyTorchJob"), "Pod", t)

            def on_svc(_type: str, obj: dict[str, Any], t: float) -> None:
                tracker.child(owner_name(obj, "PyTorchJob"), "Service", t)

            def on_ptj(_type: str, obj: dict[str, Any], t: float) -> None:
                if condition_true(obj, "Succeeded"):
                    tracker.succeeded(obj["metadata"]["name"], t)

            watches += [
                Watch(k, f"/api/v1/namespaces/{namespace}/pods", on_pod),
                Watch(k, f"/api/v1/namespaces/{namespace}/services", on_svc),
                Watch(k, PTJ_PATH.format(ns=namespace), on_ptj),
            ]
        for w in watches:
            w.start()
        for w in watches:
            w.ready.wait(30)
        time.sleep(0.3)
        return watches

    def _finish(self, tracker: Tracker) -> None:
        timeout = self.args.timeout
        tracker.wait("children", lambda: len(tracker.child_times()), timeout)
        tracker.wait("succeeded", lambda: len(tracker.done), timeout)

    # ------------------------------------------------------------------ raw

    def raw(self, n: int) -> dict[str, Any]:
        ns = f"bench-raw-{n}"
        create_namespace(self.kube, ns)
        owners: list[dict[str, Any]] = []
        with ThreadPoolExecutor(MAX_WORKERS) as pool:  # the owners, before t0 and with no controller
            made = pool.map(
                lambda name: self.kube.create(
                    {**axolotljob(name, EXIT_0), "metadata": {"name": name, "namespace": ns}}
                )[0],
                names(n),
            )
            owners = list(made)
        plan = []
        for owner in owners:
            children = render(parse_job(owner), self.settings, ns, owner=owner)
            plan.append([owner["metadata"]["name"], children.manifests()])
        WORK.mkdir(parents=True, exist_ok=True)
        plan_file = WORK / f"raw-{n}.json"
        plan_file.write_text(json.dumps(plan))
        tracker = Tracker(n, {"Job"})
        watches = self._watches(tracker, ns, "raw")
        worker = subprocess.Popen(
            [sys.executable, __file__, "--raw-worker", str(plan_file)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert worker.stdout is not None and worker.stdin is not None
            assert worker.stdout.readline().strip() == "ready"
            sampler = Sampler(worker.pid, 0.2).start()
            before, cpu0 = api_requests(self.kube), cpu_seconds(worker.pid)
            worker.stdin.write("go\n")
            worker.stdin.flush()
            result = json.loads(worker.stdout.readline())
            cpu = cpu_seconds(worker.pid) - cpu0
            rss = max(sampler.peak(), memory_mib(worker.pid)[1])
            sampler.stop()
            worker.stdin.write("exit\n")
            worker.stdin.flush()
            worker.wait(30)
            self._finish(tracker)
            requests = diff_requests(before, api_requests(self.kube))
        finally:
            if worker.poll() is None:
                worker.kill()
            for w in watches:
                w.stop()
        if result["errors"]:
            raise RuntimeError(f"raw client: {result['errors']} failed creates: {result['first_error']}")
        out = summarize("raw", tracker, result["starts"], result["t0"], cpu, rss, requests)
        out["cleanup_s"] = round(delete_namespace(self.kube, ns), 1)
        return out

    # ------------------------------------------------------------------ operator

    def start_operator(self, *extra: str) -> tuple[subprocess.Popen[bytes], Any]:
        health = free_port()
        argv = operator_argv(health, *extra)
        env = dict(os.environ)
        if self.args.kopf:
            argv[0:1] = [sys.executable, str(ROOT / "bench/operator_variant.py")]
            env["BENCH_KOPF_SETTINGS"] = ";".join(self.args.kopf)
        log = (WORK / "operator.log").open("ab")
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=1)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        "the operator did not start; see " + str(WORK / "operator.log")
                    ) from None
                time.sleep(0.2)
        time.sleep(1.0)  # its watches open
        return proc, log

    @staticmethod
    def stop_process(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)

    def operator(self, n: int) -> dict[str, Any]:
        ns = f"bench-op-{n}"
        create_namespace(self.kube, ns)
        proc, log = self.start_operator()
        profiler = None
        try:
            tracker = Tracker(n, {"Job"})
            watches = self._watches(tracker, ns, "operator")
            sampler = Sampler(proc.pid, 0.5).start()
            if self.args.profile and n == max(self.args.n):
                out = RESULTS / f"profile-operator-{n}.txt"
                profiler = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        "record",
                        "--pid",
                        str(proc.pid),
                        "--rate",
                        "50",
                        "--format",
                        "raw",
                        "--nonblocking",
                        "--output",
                        str(out),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                self.profiles.append(str(out))
                time.sleep(1)
            before, cpu0 = api_requests(self.kube), cpu_seconds(proc.pid)
            t0 = time.monotonic()
            starts = create_all(self.kube, ns, [axolotljob(name, EXIT_0) for name in names(n)])
            self._finish(tracker)
            cpu = cpu_seconds(proc.pid) - cpu0
            requests = diff_requests(before, api_requests(self.kube))
            rss = max(sampler.peak(), memory_mib(proc.pid)[1])
            sampler.stop()
            for w in watches:
                w.stop()
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait(60)
            out = summarize("operator", tracker, starts, t0, cpu, rss, requests)
            out["cleanup_s"] = round(delete_namespace(self.kube, ns), 1)
        finally:
            if profiler is not None and profiler.poll() is None:
                profiler.kill()
            self.stop_process(proc)
            log.close()
        return out

    # ------------------------------------------------------------------ training-operator

    def training_operator(self, n: int) -> dict[str, Any]:
        assert self.to_home is not None
        to = TrainingOperator(self.to_home, self.kube, WORK, threads=self.args.to_threads)
        if not self.to_installed:
            to.install(kubectl)
            self.to_installed = True
        ns = f"bench-to-{n}"
        create_namespace(self.kube, ns)
        port = int(self.kube.api.configuration.host.rsplit(":", 1)[1])
        to.start(port)
        try:
            tracker = Tracker(n, {"Pod", "Service"})
            watches = self._watches(tracker, ns, "training-operator")
            sampler = Sampler(to.pid, 0.5).start()
            container = self._trainer_container()
            before, cpu0 = api_requests(self.kube), cpu_seconds(to.pid)
            t0 = time.monotonic()
            starts = create_all(self.kube, ns, [pytorchjob(name, container) for name in names(n)])
            self._finish(tracker)
            cpu = cpu_seconds(to.pid) - cpu0
            requests = diff_requests(before, api_requests(self.kube))
            rss = max(sampler.peak(), memory_mib(to.pid)[1])
            sampler.stop()
            for w in watches:
                w.stop()
            out = summarize("training-operator", tracker, starts, t0, cpu, rss, requests)
            out["cleanup_s"] = round(delete_namespace(self.kube, ns), 1)
        finally:
            to.stop()
        return out

    def _trainer_container(self) -> dict[str, Any]:
        manifest = {**axolotljob("x", EXIT_0), "metadata": {"name": "x", "namespace": "x"}}
        job = render(parse_job(manifest), self.settings, "x").job
        return job["spec"]["template"]["spec"]["containers"][0]

    # ------------------------------------------------------------------ the scale run

    def scale(self, total: int = 1000, running: int = 100) -> dict[str, Any]:
        ns = "bench-scale"
        minutes = self.args.scale_minutes
        create_namespace(self.kube, ns)
        port = free_port()
        url = f"http://127.0.0.1:{port}/progress"
        proc, log = self.start_operator(
            "--progress-port", str(port), "--progress-host", "127.0.0.1", "--progress-url", url
        )
        lock = threading.Lock()
        phase: dict[str, str] = {}
        succeeded_at: dict[str, float] = {}
        pods: dict[str, dict[str, Any]] = {}
        pod_done: dict[str, float] = {}
        job_done: dict[str, float] = {}  # the Job controller marked the Job Complete (seen by the watch)
        sent: dict[tuple[str, int], float] = {}
        lags: list[float] = []
        seen_steps: set[tuple[str, int]] = set()
        last_progress: dict[str, Any] = {}
        writes: Counter[str] = Counter()
        counting = threading.Event()

        def on_axj(_type: str, obj: dict[str, Any], t: float) -> None:
            name = obj["metadata"]["name"]
            status = obj.get("status") or {}
            with lock:
                phase[name] = status.get("phase") or ""
                if phase[name] == "Succeeded":
                    succeeded_at.setdefault(name, t)
                progress = status.get("progress")
                if progress and progress != last_progress.get(name):
                    last_progress[name] = progress
                    if counting.is_set():
                        writes[name] += 1
                    key = (name, int(progress.get("step") or 0))
                    if key in sent and key not in seen_steps:
                        seen_steps.add(key)
                        lags.append(t - sent[key])

        def on_pod(_type: str, obj: dict[str, Any], t: float) -> None:
            job = owner_name(obj, "Job")
            if not job:
                return
            with lock:
                pods[job] = obj
                if (obj.get("status") or {}).get("phase") == "Succeeded":
                    pod_done.setdefault(job, t)

        def on_job(_type: str, obj: dict[str, Any], t: float) -> None:
            conditions = (obj.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Complete" and c.get("status") == "True" for c in conditions):
                with lock:
                    job_done.setdefault(obj["metadata"]["name"], t)

        watches = [
            Watch(self.kube, AXJ_PATH.format(ns=ns), on_axj),
            Watch(self.kube, f"/api/v1/namespaces/{ns}/pods", on_pod),
            Watch(self.kube, f"/apis/batch/v1/namespaces/{ns}/jobs", on_job),
        ]
        for w in watches:
            w.start()
            w.ready.wait(30)
        sampler = Sampler(proc.pid, 1.0).start()
        result: dict[str, Any] = {"total": total, "running": running, "minutes": minutes}
        try:
            held = set(names(total)[:running])
            t0 = time.monotonic()
            create_all(
                self.kube, ns, [axolotljob(name, HOLD if name in held else EXIT_0) for name in names(total)]
            )

            def settled() -> bool:
                with lock:
                    done = sum(1 for k, v in phase.items() if v == "Succeeded" and k not in held)
                    run = sum(
                        1
                        for k in held
                        if phase.get(k) == "Running" and (pods.get(k, {}).get("status") or {}).get("podIP")
                    )
                return done == total - running and run == running

            deadline = time.monotonic() + self.args.timeout
            while not settled():
                if time.monotonic() > deadline:
                    raise TimeoutError("scale run: jobs did not settle")
                time.sleep(0.5)
            result["settle_s"] = round(time.monotonic() - t0, 1)
            tokens = {name: self._token(ns, pods[name]) for name in sorted(held)}
            codes: Counter[int] = Counter()
            stop = threading.Event()

            def report(name: str) -> None:
                pod_ip = pods[name]["status"]["podIP"]
                token = tokens[name]
                stop.wait(random.uniform(0, PROGRESS_INTERVAL))
                step, next_at = 0, time.monotonic()
                while not stop.is_set():
                    step += 1
                    body = json.dumps(
                        ProgressReport(
                            step=step,
                            total_steps=100000,
                            epoch=step / 1000,
                            loss=2.0 / (1 + step / 100),
                            learning_rate=2e-4,
                            grad_norm=0.9,
                            tokens_per_second=1234.5,
                            eta_seconds=(100000 - step) * PROGRESS_INTERVAL,
                            job_name=name,
                            job_namespace=ns,
                            timestamp=utc_now(),
                        ).to_payload()
                    )
                    with lock:
                        sent[(name, step)] = time.monotonic()
                    try:  # from the pod's own (loopback) IP, as a pod would
                        conn = http.client.HTTPConnection(
                            "127.0.0.1", port, timeout=10, source_address=(pod_ip, 0)
                        )
                        conn.request(
                            "POST",
                            "/progress",
                            body,
                            {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                        )
                        code = conn.getresponse().status
                        conn.close()
                    except OSError:
                        code = 0
                    with lock:
                        codes[code] += 1
                    next_at += PROGRESS_INTERVAL
                    stop.wait(max(0.0, next_at - time.monotonic()))

            before, cpu0 = api_requests(self.kube), cpu_seconds(proc.pid)
            start = time.monotonic()
            counting.set()
            threads = [threading.Thread(target=report, args=(name,), daemon=True) for name in sorted(held)]
            for thread in threads:
                thread.start()
            stop.wait(minutes * 60)
            stop.set()
            for thread in threads:
                thread.join(15)
            elapsed = time.monotonic() - start
            counting.clear()
            cpu = cpu_seconds(proc.pid) - cpu0
            requests = diff_requests(before, api_requests(self.kube))
            accepted = codes.get(202, 0)
            window = [(t - start, rss) for t, rss, _ in sampler.samples if start <= t <= start + elapsed]
            half = len(window) // 2
            result.update(
                {
                    "reports": sum(codes.values()),
                    "reports_accepted": accepted,
                    "report_codes": {str(k): v for k, v in sorted(codes.items())},
                    "errors_non_2xx": sum(v for k, v in codes.items() if not 200 <= k < 300),
                    "status_lag_p50_s": round(median(lags) or 0, 3),
                    "status_lag_p99_s": round(pct(lags, 0.99) or 0, 3),
                    "progress_writes_per_job_per_min": round(
                        sum(writes[k] for k in held) / running / (elapsed / 60), 2
                    ),
                    "status_patches_per_job_per_min": round(
                        sum(
                            v
                            for k, v in requests["by"].items()
                            if k in ("PATCH axolotljobs/status", "APPLY axolotljobs/status")
                        )
                        / running
                        / (elapsed / 60),
                        2,
                    ),
                    "operator_cpu_s": round(cpu, 2),
                    "cpu_ms_per_report": round(1000 * cpu / max(1, sum(codes.values())), 2),
                    "rss_mib_start": round(median(r for _, r in window[: max(1, half // 3)]) or 0, 1),
                    "rss_mib_end": round(median(r for _, r in window[-max(1, half // 3) :]) or 0, 1),
                    "rss_mib_max": round(max((r for _, r in window), default=0), 1),
                    "rss_mib_first_half_median": round(median(r for _, r in window[:half]) or 0, 1),
                    "rss_mib_second_half_median": round(median(r for _, r in window[half:]) or 0, 1),
                    "api_requests": requests,
                    "rss_series": [(round(t, 1), round(r, 1)) for t, r in window],
                }
            )
            # the 100 finish: pod Succeeded -> AxolotlJob Succeeded, 1,000 AxolotlJobs in the cluster
            release = {"metadata": {"annotations": {"kwok.axolotl.ai/hold": None}}}
            with ThreadPoolExecutor(MAX_WORKERS) as pool:
                list(
                    pool.map(
                        lambda name: self.kube.merge_patch(
                            "v1", "Pod", ns, pods[name]["metadata"]["name"], release
                        ),
                        held,
                    )
                )
            deadline = time.monotonic() + self.args.timeout
            while sum(1 for k in held if k in succeeded_at) < running:
                if time.monotonic() > deadline:
                    raise TimeoutError("scale run: released jobs did not succeed")
                time.sleep(0.2)
            finish = [succeeded_at[k] - pod_done[k] for k in held if k in pod_done]
            result["pod_to_axj_succeeded_p50_s"] = round(median(finish) or 0, 3)
            result["pod_to_axj_succeeded_p99_s"] = round(pct(finish, 0.99) or 0, 3)
            # Split at the Job's Complete: the Job controller's part, and the operator's (ours).
            controller = [job_done[k] - pod_done[k] for k in held if k in pod_done and k in job_done]
            ours = [succeeded_at[k] - job_done[k] for k in held if k in job_done]
            result["pod_to_job_complete_p50_s"] = round(median(controller) or 0, 3)
            result["job_complete_to_axj_succeeded_p50_s"] = round(median(ours) or 0, 3)
            result["job_complete_to_axj_succeeded_p99_s"] = round(pct(ours, 0.99) or 0, 3)
            result["peak_rss_mib"] = round(max(sampler.peak(), memory_mib(proc.pid)[1]), 1)
            result["cleanup_s"] = round(delete_namespace(self.kube, ns), 1)
        finally:
            sampler.stop()
            for w in watches:
                w.stop()
            self.stop_process(proc)
            log.close()
        return result

    def _token(self, namespace: str, pod: dict[str, Any]) -> str:
        """A projected-style token bound to the pod, for the operator's audience (what the kubelet mounts)."""
        account = pod["spec"].get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [self.settings.progress_audience],
                "expirationSeconds": 3600,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod["metadata"]["name"],
                    "uid": pod["metadata"]["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token"
        return self.kube.request("POST", path, body=body)["status"]["token"]


# ---------------------------------------------------------------------------------------------- raw worker


def raw_worker(plan_file: str) -> int:
    """The raw client: waits for "go", creates every child of every job (in render's order, one job per
    thread at a time), prints name -> start time, waits for "exit"."""
    from kubernetes import config

    config.load_kube_config()
    kube = Kube()
    plan = json.loads(Path(plan_file).read_text())
    print("ready", flush=True)
    sys.stdin.readline()
    starts: dict[str, float] = {}
    errors: list[str] = []

    def one(item: list[Any]) -> None:
        name, manifests = item
        starts[name] = time.monotonic()
        for manifest in manifests:
            try:
                kube.create(manifest)
            except ApiError as exc:
                errors.append(str(exc))

    t0 = time.monotonic()
    with ThreadPoolExecutor(MAX_WORKERS) as pool:
        list(pool.map(one, plan))
    print(
        json.dumps({"t0": t0, "starts": starts, "errors": len(errors), "first_error": errors[:1]}), flush=True
    )
    sys.stdin.readline()
    return 0


# ---------------------------------------------------------------------------------------------- control plane


@contextlib.contextmanager
def control_plane(nodes: int, gpus: int, need: int) -> Any:
    env = dict(
        os.environ,
        KUBEENV_STATE_DIR=STATE_DIR,
        KUBEENV_NODES=str(nodes),
        KUBEENV_GPUS_PER_NODE=str(gpus),
    )
    kubeenv = str(ROOT / "hack/kubeenv")
    started = subprocess.run([kubeenv, "status"], env=env, capture_output=True).returncode != 0
    up = subprocess.run([kubeenv, "up"], env=env, capture_output=True, text=True, check=True)
    os.environ["KUBECONFIG"] = up.stdout.strip().splitlines()[-1].split("=", 1)[1]
    try:
        capacity = json.loads(kubectl("get", "nodes", "-o", "json"))["items"]
        gpu_total = sum(int(n["status"]["allocatable"].get("nvidia.com/gpu", "0")) for n in capacity)
        pods_total = sum(int(n["status"]["allocatable"].get("pods", "0")) for n in capacity)
        if gpu_total < need or pods_total < need:
            raise SystemExit(
                f"the control plane in {STATE_DIR} has {gpu_total} GPUs / {pods_total} pods, {need} needed: "
                f"stop it (KUBEENV_STATE_DIR={STATE_DIR} hack/kubeenv down) and run again"
            )
        yield
    finally:
        if started and not os.environ.get("BENCH_KEEP_CLUSTER"):
            subprocess.run([kubeenv, "down"], env=env, capture_output=True)


# ---------------------------------------------------------------------------------------------- output


def machine() -> str:
    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return f"{platform.machine()} {cpus} cpus {mem:.0f} GiB, load {load:.1f} at start; kwok (hack/kubeenv)"


def build_results(
    runs: dict[int, dict[str, dict[str, Any]]], scale: dict[str, Any] | None, meta: dict[str, Any]
) -> list[dict[str, Any]]:
    out = []
    for n, systems in sorted(runs.items()):
        raw, op, to = systems.get("raw"), systems.get("operator"), systems.get("training-operator")
        row: dict[str, Any] = {
            "n": n,
            "raw_jobs_per_s": raw and raw["jobs_per_s"],
            "operator_jobs_per_s": op and op["jobs_per_s"],
            "training_operator_jobs_per_s": to and to["jobs_per_s"],
            "ratio_to_raw": round(op["jobs_per_s"] / raw["jobs_per_s"], 3) if op and raw else None,
            "ratio_to_training_operator": round(op["jobs_per_s"] / to["jobs_per_s"], 3)
            if op and to
            else None,
            "apply_to_job_p50_s": op and op["job_to_children_p50_s"],
            "status_lag_p50_s_at_1000": None,
            "rss_mib_at_1000": op["peak_rss_mib"] if op and n == 1000 else None,
            "status_writes_per_job_per_min": None,
            **meta,
            "systems": systems,
        }
        out.append(row)
    if scale:
        row = next((r for r in out if r["n"] == 1000), None)
        if row is None:
            row = {"n": 1000, "scale_run_only": True, **meta}
            out.append(row)
        row["status_lag_p50_s_at_1000"] = scale.get("status_lag_p50_s")
        row["rss_mib_at_1000"] = scale.get("rss_mib_max")
        row["status_writes_per_job_per_min"] = scale.get("progress_writes_per_job_per_min")
        row["scale_run"] = {k: v for k, v in scale.items() if k != "rss_series"}
    return out


def table(results: list[dict[str, Any]]) -> str:
    lines = []
    head = (
        f"{'N':>5} {'system':<18} {'children':>9} {'jobs/s':>8} {'succeeded':>10} {'p50 job':>8} "
        f"{'p99 job':>8} {'p50 done':>9} {'cpu s':>7} {'peak MiB':>9} {'API req':>8}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for row in results:
        for system in ("raw", "operator", "training-operator"):
            s = (row.get("systems") or {}).get(system)
            if not s:
                continue
            lines.append(
                f"{row['n']:>5} {system:<18} {s['children_s']:>8.2f}s {s['jobs_per_s']:>8.1f} "
                f"{s['succeeded_s']:>9.2f}s {s['job_to_children_p50_s']:>7.3f}s "
                f"{s['job_to_children_p99_s']:>7.3f}s {s['job_to_succeeded_p50_s']:>8.2f}s "
                f"{s['cpu_s']:>7.1f} {s['peak_rss_mib']:>9.1f} {s['api_requests'].get('total', '-')!s:>8}"
            )
        if row.get("ratio_to_raw") is not None or row.get("ratio_to_training_operator") is not None:
            lines.append(
                f"{row['n']:>5} ratios: operator/raw {row.get('ratio_to_raw')}, "
                f"operator/training-operator {row.get('ratio_to_training_operator')}"
            )
    for row in results:
        sr = row.get("scale_run")
        if sr:
            lines.append("")
            lines.append(
                f"scale run: {sr['total']} AxolotlJobs ({sr['total'] - sr['running']} finished, "
                f"{sr['running']} running, "
                f"reporting every {PROGRESS_INTERVAL:.0f} s for {sr['minutes']} min)"
            )
            for key in (
                "reports",
                "report_codes",
                "errors_non_2xx",
                "status_lag_p50_s",
                "status_lag_p99_s",
                "progress_writes_per_job_per_min",
                "status_patches_per_job_per_min",
                "operator_cpu_s",
                "cpu_ms_per_report",
                "rss_mib_start",
                "rss_mib_end",
                "rss_mib_max",
                "rss_mib_first_half_median",
                "rss_mib_second_half_median",
                "pod_to_axj_succeeded_p50_s",
                "pod_to_axj_succeeded_p99_s",
                "pod_to_job_complete_p50_s",
                "job_complete_to_axj_succeeded_p50_s",
                "job_complete_to_axj_succeeded_p99_s",
                "peak_rss_mib",
                "settle_s",
            ):
                lines.append(f"  {key:<34} {sr.get(key)}")
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], scale: dict[str, Any] | None, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    ax = axes[0]
    for key, label in (
        ("raw_jobs_per_s", "raw API limit"),
        ("operator_jobs_per_s", "axolotl-operator"),
        ("training_operator_jobs_per_s", "Kubeflow training-operator v1.8.1"),
    ):
        points = [(r["n"], r[key]) for r in results if r.get(key)]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("jobs created at once (N)")
    ax.set_ylabel("jobs/s until all children exist")
    ax.set_title("reconcile throughput (kwok)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax = axes[1]
    if scale and scale.get("rss_series"):
        ax.plot([t for t, _ in scale["rss_series"]], [r for _, r in scale["rss_series"]])
        ax.axhline(150, color="red", linestyle="--", linewidth=1, label="goal 150 MiB")
        ax.legend()
    ax.set_xlabel("seconds into the progress window")
    ax.set_ylabel("operator RSS (MiB)")
    ax.set_title("scale run: 1,000 AxolotlJobs, 100 reporting every 5 s")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--raw-worker":
        return raw_worker(sys.argv[2])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, nargs="+", default=[1, 100, 1000], help="jobs at once (each N)")
    parser.add_argument("--skip-raw", action="store_true")
    parser.add_argument("--skip-operator", action="store_true")
    parser.add_argument("--skip-training-operator", action="store_true")
    parser.add_argument(
        "--to-threads", type=int, default=1, help="training-operator --controller-threads (its default: 1)"
    )
    parser.add_argument("--skip-scale", action="store_true", help="no 1,000-job scale run")
    parser.add_argument("--scale-minutes", type=float, default=3.0, help="progress window of the scale run")
    parser.add_argument("--scale-total", type=int, default=1000, help="AxolotlJobs in the scale run")
    parser.add_argument("--scale-running", type=int, default=100, help="of them held Running and reporting")
    parser.add_argument("--profile", action="store_true", help="py-spy the operator at the largest N")
    parser.add_argument(
        "--kopf",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="override a Kopf setting (bench/operator_variant.py), e.g. execution.max_workers=32",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds per wait")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--gpus-per-node", type=int, default=220)
    parser.add_argument("--output", default=str(RESULTS / "latest.json"))
    args = parser.parse_args()

    def interrupted(signum: int, _frame: Any) -> None:  # SIGTERM/SIGINT: results so far, then clean up
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)

    need = max([*args.n, 0 if args.skip_scale else args.scale_total])
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    bench_home = None
    if not args.skip_training_operator:
        bench_home = build_training_operator(ROOT)  # before the cluster: a cold build takes minutes
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    scale = None
    with control_plane(args.nodes, args.gpus_per_node, need):
        from kubernetes import config

        config.load_kube_config(config_file=os.environ["KUBECONFIG"])
        kube = Kube()
        kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(ROOT / "crds/axolotl.ai_axolotljobs.yaml"),
        )
        kubectl("wait", "--for=condition=Established", "crd/axolotljobs.axolotl.ai")
        bench = Bench(args, kube)
        bench.to_home = bench_home
        try:
            for n in args.n:
                runs[n] = {}
                systems = [
                    ("raw", bench.raw, args.skip_raw),
                    ("operator", bench.operator, args.skip_operator),
                    ("training-operator", bench.training_operator, args.skip_training_operator),
                ]
                for system, run, skip in systems:
                    if skip:
                        continue
                    print(f"N={n}: {system} ...", file=sys.stderr, flush=True)
                    runs[n][system] = run(n)
                    print(
                        f"  {json.dumps({k: v for k, v in runs[n][system].items() if k != 'api_requests'})}",
                        file=sys.stderr,
                        flush=True,
                    )
            if not args.skip_scale:
                print(
                    f"scale run: 1000 AxolotlJobs, {args.scale_minutes} min of progress ...",
                    file=sys.stderr,
                    flush=True,
                )
                scale = bench.scale(args.scale_total, args.scale_running)
        finally:
            if bench.to_installed and bench.to_home is not None:
                TrainingOperator(bench.to_home, kube, WORK).uninstall()
            results = build_results(runs, scale, meta)
            if args.kopf:
                for row in results:
                    row["kopf_overrides"] = args.kopf
            Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
            if scale:
                (RESULTS / "scale-rss.json").write_text(json.dumps(scale.get("rss_series")) + "\n")
            figure = Path(args.output).with_suffix(".png")  # next to its JSON: a trial run keeps latest.png
            plot(results, scale, figure)
            print(table(results))
            print(f"\nwrote {args.output}, {figure}")
            for profile in bench.profiles:
                print(f"profile: {profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
