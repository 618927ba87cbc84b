"""Fault injection for the operator's fault tests (test_operator_faults.py), all on loopback.

- ``TcpProxy``: a byte pump between the operator and the API server. TLS passes through unchanged (the
  operator still verifies the apiserver's certificate); ``cut()`` closes the listener and resets every
  live connection, so the operator's open watches break and new connects are refused; ``restore()``
  listens again on the same port.
- ``kubeconfig_for``: a copy of the admin kubeconfig pointing at another server (the proxy) and/or
  authenticating with another bearer token (a ServiceAccount's).
- ``Etcd``: the control plane's embedded etcd through its v3 JSON gateway (revision, compaction), at the
  ``etcd=`` URL of ``<state>/ready``.
- ``raw_watch``, ``rejected_by_flow_control``: what the API server itself says (a watch from an old
  resourceVersion; its own APF metrics).

The fault tests run on a control plane of their own (``faults_control_plane``): API Priority and
Fairness on and the watch cache off, which the shared one leaves as they are (see the test module).
Every address here is 127.0.0.1.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import re
import selectors
import socket
import ssl
import struct
import threading
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from operator_support import _helpers, kubectl, kubectl_json

LOOPBACK = "127.0.0.1"
JOB_LABEL = "axolotl.ai/job"

# Flags of the fault tests' own kube-apiserver (hack/kubeenv: KUBEENV_APISERVER_ARGS):
# - APF on, so a FlowSchema can throttle the operator with the server's own 429s (the shared control
#   plane runs without it: it costs CPU on 2 cores and no other test needs it);
# - the watch cache off, so a watch from a compacted resourceVersion is answered by etcd, i.e. with
#   410 Gone. With the cache on, the apiserver serves watches from its in-memory history (at least the
#   last 75 s of events, at least 100 per resource, kept regardless of etcd compaction), so compaction
#   alone never yields a 410 within a test's time. Custom resources have no per-resource switch
#   (`--watch-cache-sizes` is ignored for them), hence the global one, on this control plane only.
FAULTS_APISERVER_ARGS = "--enable-priority-and-fairness=true --watch-cache=false"
listening_addresses = _helpers.listening_addresses


def faults_state_dir() -> str:
    """The fault tests' control plane lives next to the shared one: ``<KUBEENV_STATE_DIR>-faults``."""
    explicit = os.environ.get("KUBEENV_FAULTS_STATE_DIR")
    if explicit:
        return explicit
    cache = os.environ.get("AXOLOTL_CACHE_DIR") or str(Path.home() / ".cache" / "axolotl-operator")
    base = os.environ.get("KUBEENV_STATE_DIR") or f"{cache}/kubeenv-state"
    return f"{base.rstrip('/')}-faults"


def faults_control_plane() -> Iterator[Any]:
    """Start (or reuse) the fault tests' control plane; stop it afterwards if this call started it."""
    env = {"KUBEENV_STATE_DIR": faults_state_dir(), "KUBEENV_APISERVER_ARGS": FAULTS_APISERVER_ARGS}
    yield from _helpers.kubeenv_session(env=env)


def ready_info(kubeconfig: Path) -> dict[str, str]:
    """``<state>/ready`` of the control plane whose kubeconfig this is (pid, kubeconfig, server, etcd)."""
    lines = (Path(kubeconfig).parent / "ready").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


# ---------------------------------------------------------------- kubeconfigs and TLS


def _cluster(admin: Path) -> dict[str, Any]:
    cluster = dict(yaml.safe_load(Path(admin).read_text())["clusters"][0]["cluster"])
    if "certificate-authority" in cluster:
        ca = Path(cluster.pop("certificate-authority")).read_bytes()
        cluster["certificate-authority-data"] = base64.b64encode(ca).decode()
    return cluster


def ca_pem(admin: Path) -> str:
    return base64.b64decode(_cluster(admin)["certificate-authority-data"]).decode()


def server_of(admin: Path) -> tuple[str, int]:
    url = urlsplit(_cluster(admin)["server"])
    assert url.hostname == LOOPBACK and url.port, url
    return url.hostname, url.port


def kubeconfig_for(admin: Path, path: Path, server: str | None = None, token: str | None = None) -> Path:
    """A copy of the admin kubeconfig, with another server URL and/or another bearer token."""
    config = yaml.safe_load(Path(admin).read_text())
    cluster = _cluster(admin)
    if server:
        cluster["server"] = server
    user = config["users"][0]["user"] if token is None else {"token": token}
    out = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "user"}}],
        "current-context": "local",
    }
    path.write_text(yaml.safe_dump(out))
    path.chmod(0o600)
    return path


def verified_peer_cert(port: int, ca: str) -> dict[str, Any]:
    """A TLS handshake with 127.0.0.1:port that verifies the chain against ``ca`` AND that the
    certificate names 127.0.0.1 (hostname check against an IP: its IP SANs); returns the certificate."""
    context = ssl.create_default_context(cadata=ca)
    context.check_hostname = True
    with (
        socket.create_connection((LOOPBACK, port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=LOOPBACK) as tls,
    ):
        return tls.getpeercert()


def response_headers(port: int, ca: str, token: str, path: str = "/version") -> dict[str, str]:
    """GET ``path`` with a bearer token; the response's headers (e.g. APF's X-Kubernetes-PF-*)."""
    context = ssl.create_default_context(cadata=ca)
    conn = http.client.HTTPSConnection(LOOPBACK, port, context=context, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        response = conn.getresponse()
        response.read()
        return {k.lower(): v for k, v in response.getheaders()} | {":status": str(response.status)}
    finally:
        conn.close()


# ---------------------------------------------------------------- the proxy


class TcpProxy:
    """A loopback TCP proxy to ``upstream``: an accept thread, one pump thread per connection.

    ``cut()`` returns once the port no longer listens and every connection that was open has been
    reset (RST to both the client and the upstream side); ``restore()`` listens on the same port again.
    """

    POLL = 0.1  # seconds; how often the threads look at the cut flag

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.accepted = 0  # connections passed through, over the proxy's life
        self.resets = 0  # connections reset by cut()
        self._cut = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((LOOPBACK, self.port))
        listener.listen(128)
        listener.settimeout(self.POLL)
        self.port = listener.getsockname()[1]
        self._cut.clear()
        self._spawn(self._accept_loop, listener)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=f"proxy-{self.port}")
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        with listener:
            while not self._cut.is_set():
                try:
                    client, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                client.settimeout(None)
                self._spawn(self._pump, client)

    def _pump(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            _reset(client)
            return
        upstream.settimeout(None)
        with self._lock:
            self.accepted += 1
        peer = {client: upstream, upstream: client}
        reading = {client, upstream}
        failed = False
        with selectors.DefaultSelector() as selector:
            for sock in reading:
                selector.register(sock, selectors.EVENT_READ)
            while reading and not self._cut.is_set() and not failed:
                for key, _ in selector.select(timeout=self.POLL):
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(65536)
                        if data:
                            peer[src].sendall(data)
                            continue
                        selector.unregister(src)  # EOF one way: pass the half-close on
                        reading.discard(src)
                        with contextlib.suppress(OSError):
                            peer[src].shutdown(socket.SHUT_WR)
                    except OSError:
                        failed = True  # a reset on one side resets the other
                        break
        if self._cut.is_set() or failed:
            with self._lock:
                self.resets += int(self._cut.is_set())
            _reset(client)
            _reset(upstream)
        else:
            client.close()
            upstream.close()

    def live_threads(self) -> int:
        with self._lock:
            return sum(t.is_alive() for t in self._threads)

    def cut(self) -> None:
        """Stop listening and reset every open connection; returns when all of that is done."""
        self._cut.set()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout=10)
        assert not any(t.is_alive() for t in threads), "the proxy's threads did not stop"

    def restore(self) -> None:
        """Listen again on the same port."""
        self._listen()

    def close(self) -> None:
        self.cut()

    def refuses(self) -> bool:
        """Whether a connect to the proxy's port is refused now."""
        try:
            socket.create_connection((LOOPBACK, self.port), timeout=2).close()
        except ConnectionRefusedError:
            return True
        return False


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST instead of FIN."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


# ---------------------------------------------------------------- etcd and the apiserver's own view

_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy


def http_get(url: str) -> str:
    """GET a loopback URL (e.g. the operator's /metrics), never through a proxy from the environment."""
    assert urlsplit(url).hostname == LOOPBACK, url
    with _DIRECT.open(url, timeout=10) as response:
        return response.read().decode()


class Etcd:
    """The embedded etcd's v3 JSON gateway (http on 127.0.0.1; no auth: test state)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        assert parts.hostname == LOOPBACK, url
        self.url = url.rstrip("/")

    def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        with _DIRECT.open(request, timeout=30) as response:
            return json.loads(response.read())

    def revision(self) -> int:
        """etcd's current revision (the header of any read)."""
        answer = self._post("/v3/kv/range", {"key": base64.b64encode(b"/registry/namespaces").decode()})
        return int(answer["header"]["revision"])

    def compact(self, revision: int) -> None:
        """Compact away every revision before ``revision``, physically (waits until done)."""
        self._post("/v3/kv/compaction", {"revision": str(revision), "physical": True})


def list_resource_version(path: str) -> int:
    """The resourceVersion of a LIST of ``path`` (the store's revision when it was read)."""
    sep = "&" if "?" in path else "?"
    return int(json.loads(kubectl("get", "--raw", f"{path}{sep}limit=1"))["metadata"]["resourceVersion"])


def raw_watch(path: str, resource_version: int, seconds: int = 2) -> list[dict[str, Any]]:
    """The events a watch of ``path`` from ``resource_version`` gets within ``seconds``."""
    sep = "&" if "?" in path else "?"
    url = f"{path}{sep}watch=1&resourceVersion={resource_version}&timeoutSeconds={seconds}"
    out = kubectl("get", "--raw", url, timeout=seconds + 30)
    decoder, events, text = json.JSONDecoder(), [], out.strip()
    while text:
        event, end = decoder.raw_decode(text)
        events.append(event)
        text = text[end:].lstrip()
    return events


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Samples of one metric in Prometheus text format, with their labels."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match["labels"]))
            samples.append((labels, float(match["value"])))
    return samples


def flow_control_counts(priority_level: str) -> dict[str, float]:
    """The apiserver's own APF numbers for one priority level: its nominal seats, requests dispatched
    and rejected (in all and by reason)."""
    text = kubectl("get", "--raw", "/metrics", timeout=60)
    counts: Counter[str] = Counter()
    for labels, value in metric_samples(text, "apiserver_flowcontrol_dispatched_requests_total"):
        if labels.get("priority_level") == priority_level:
            counts["dispatched"] += value
    for labels, value in metric_samples(text, "apiserver_flowcontrol_nominal_limit_seats"):
        if labels.get("priority_level") == priority_level:
            counts["nominal_seats"] = value
    for labels, value in metric_samples(text, "apiserver_flowcontrol_rejected_requests_total"):
        if labels.get("priority_level") == priority_level:
            counts["rejected"] += value
            counts[f"rejected:{labels.get('reason')}"] += value
    return dict(counts)


# ---------------------------------------------------------------- assertions shared by the tests


def children_by_job(namespace: str, kind: str) -> dict[str, list[dict[str, Any]]]:
    """The namespace's objects of ``kind`` labelled ``axolotl.ai/job``, by that label (one list call)."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in kubectl_json("get", kind, "-n", namespace, "-l", JOB_LABEL)["items"]:
        grouped[item["metadata"]["labels"][JOB_LABEL]].append(item)
    return grouped


def transition_events(namespace: str) -> dict[str, Counter[str]]:
    """Per AxolotlJob of the namespace, how many Events it has per reason (only the operator records
    Events on AxolotlJobs; an Event's own ``count`` is counted too, so a repeat folded into one Event
    still shows)."""
    items = kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.kind=AxolotlJob"
    )["items"]
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for event in items:
        counts[event["involvedObject"]["name"]][event["reason"]] += int(event.get("count") or 1)
    return counts


def assert_one_event_per_transition(
    events: dict[str, Counter[str]], name: str, *required: str
) -> Counter[str]:
    """No transition announced twice; each ``required`` reason announced exactly once."""
    reasons = events.get(name, Counter())
    duplicated = {reason: n for reason, n in reasons.items() if n > 1}
    assert not duplicated, f"{name}: duplicate transition Events {duplicated} (all: {dict(reasons)})"
    missing = [r for r in required if reasons[r] != 1]
    assert not missing, f"{name}: no {missing} Event (all: {dict(reasons)})"
    return reasons
