"""The real node can only deliver locally (DEVELOPERS.md, network rule). Each check reads
routes, rules, configurations and sockets; the only packets sent go to loopback or to pods."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from host_state import processes
from realnode_support import REAL_STATE_DIR, kubectl, pod_phase, real_pod, wait_for

pytestmark = pytest.mark.realnode

REAL_RANGE = ipaddress.ip_network("198.18.0.0/15")
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
STATE = str(REAL_STATE_DIR)


def _out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def _nft_json(*argv: str) -> list[dict[str, Any]]:
    return json.loads(_out("nft", "-j", *argv))["nftables"]


def test_pods_have_no_default_route_and_no_address_outside_the_range(
    kubeenv: Any, namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    apply_yaml(real_pod("routes", "ip -4 route; echo ---; ip -4 -o addr"), namespace)
    assert wait_for(lambda: pod_phase("routes", namespace), timeout=120)["status"]["phase"] == "Succeeded"
    routes, addresses = kubectl("logs", "routes", "-n", namespace).split("---\n")
    destinations = [line.split()[0] for line in routes.splitlines()]
    assert destinations and "default" not in destinations, routes
    assert all(ipaddress.ip_network(d).subnet_of(REAL_RANGE) for d in destinations), routes
    for line in addresses.splitlines():
        ip = ipaddress.ip_interface(line.split()[3]).ip
        assert ip in REAL_RANGE or ip in LOOPBACK, addresses


def test_host_routes_keep_the_range_on_the_bridges(kubeenv: Any) -> None:
    routes = _out("ip", "-4", "route", "show", "table", "all").splitlines()
    assert "blackhole 198.18.0.0/15" in [r.strip() for r in routes]
    in_range = [r for r in routes if r.split()[0] != "blackhole" and r.split()[0][0].isdigit()
                and ipaddress.ip_network(r.split()[0], strict=False).subnet_of(REAL_RANGE)]
    assert in_range and all(" dev kubeenv" in r for r in in_range), in_range
    default = [r for r in routes if r.startswith("default")]
    assert all("kubeenv" not in r for r in default), default


def test_forwarding_only_between_bridges_and_the_range_never_leaves_them(kubeenv: Any) -> None:
    rules = [item["rule"] for item in _nft_json("list", "table", "inet", "kubeenv") if "rule" in item]
    text = {r["chain"]: [] for r in rules}
    for r in rules:
        text[r["chain"]].append(json.dumps(r["expr"], sort_keys=True))
    forward, post = text["forward"], text["postrouting"]
    # First rule accepts bridge -> bridge; every later one drops.
    assert '"accept": null' in forward[0] and forward[0].count("kubeenv*") == 2
    assert all('"drop": null' in r for r in forward[1:]) and len(forward) >= 3
    # ...and nothing is forwarded from or to the interfaces of the machine's default routes.
    uplinks = {r.split(" dev ")[1].split()[0] for r in _out("ip", "route", "show", "default").splitlines()}
    for uplink in uplinks:
        for side in ("iifname", "oifname"):
            assert any(f'"{side}"' in r and f'"{uplink}"' in r for r in forward[1:]), (side, uplink, forward)
    # Anything from or to 198.18.0.0/15 on another interface than a bridge or lo is dropped.
    for field in ("saddr", "daddr"):
        drops = [r for r in post if '"drop": null' in r and "198.18.0.0" in r]
        assert any(f'"field": "{field}"' in r for r in drops), post
    # Masquerading exists only in kube-proxy's own table, for marked or hairpin traffic.
    ruleset = _out("nft", "list", "ruleset")
    table = ""
    for line in ruleset.splitlines():
        if line.startswith("table "):
            table = line
        if "masquerade" in line:
            assert table.startswith("table ip kube-proxy") or table.startswith("table ip6 kube-proxy"), line
            assert "meta mark" in line or "@hairpin-connections" in line, line


def test_pods_reach_the_host_only_at_dns_and_the_api(
    kubeenv: Any, namespace: str, apply_yaml: Callable[..., Any]
) -> None:
    chain = _nft_json("list", "chain", "inet", "kubeenv", "input")
    rules = [json.dumps(item["rule"]["expr"]) for item in chain if "rule" in item]
    # First: from a bridge, anything not for the range (the host's loopback, other addresses) is dropped.
    assert '"!="' in rules[0] and "198.18.0.0" in rules[0] and '"drop"' in rules[0], rules[0]
    ports = _nft_json("list", "set", "inet", "kubeenv", "pod_tcp_ports")[1]["set"]["elem"]
    server = kubectl("config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}")
    assert ports == [int(server.rsplit(":", 1)[1])]  # the apiserver's port, nothing else
    # From a pod, the kubelet's port on the node address is closed; DNS answers.
    script = ("nc -w 3 198.18.64.1 10250 </dev/null; echo kubelet=$?;"
              " nslookup kubernetes.default.svc.cluster.local")
    apply_yaml(real_pod("host", script), namespace)
    wait_for(lambda: pod_phase("host", namespace), timeout=120)
    out = kubectl("logs", "host", "-n", namespace)
    assert "kubelet=1" in out and "Address: 198.19.0.1" in out, out


def test_cluster_dns_forwards_nothing(kubeenv: Any, namespace: str, apply_yaml: Callable[..., Any]) -> None:
    corefile = (REAL_STATE_DIR / "Corefile").read_text()
    assert "forward" not in corefile and "proxy" not in corefile
    plugins = _out(str(REAL_STATE_DIR / "kubeenv"), "coredns", "-plugins").split()
    assert "kubernetes" in plugins and not {"forward", "proxy", "grpc", "etcd"} & set(plugins), plugins
    # An outside name fails at the cluster DNS (a query to 198.18.64.1, on this machine).
    name = f"{uuid.uuid4().hex}.example.com"
    apply_yaml(real_pod("outside", f"nslookup {name}; echo rc=$?"), namespace)
    wait_for(lambda: pod_phase("outside", namespace), timeout=120)
    out = kubectl("logs", "outside", "-n", namespace)
    assert "rc=1" in out and "Address:" not in out.split(name)[-1], out


def test_the_runtime_never_pulls(kubeenv: Any, namespace: str, apply_yaml: Callable[..., Any]) -> None:
    node = REAL_STATE_DIR / "nodes" / "realnode-0" / "containerd"
    config = (node / "config.toml").read_text()
    assert f"config_path = {json.dumps(str(node / 'certs.d'))}" in config
    hosts = (node / "certs.d" / "_default" / "hosts.toml").read_text()
    assert 'server = "https://127.0.0.1:9"' in hosts
    pid = next(p.split()[0] for p in processes(STATE) if "containerd --config" in p)
    env = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "https://127.0.0.1:9"
    # A pull goes nowhere but the refusing loopback port.
    outside = {"image": "registry.invalid/nothing:1", "imagePullPolicy": "Always"}
    pod = real_pod("pull", "true", container=outside)
    apply_yaml(pod, namespace)

    def pull_failed() -> str | None:
        status = pod_phase("pull", namespace, ("Pending",))["status"]
        waiting = (status.get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {})
        failed = waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff")
        return waiting.get("message") if failed else None

    message = wait_for(pull_failed, timeout=120, what="image pull refused")
    assert "127.0.0.1:9" in message and "connection refused" in message, message


def _listening_inodes() -> dict[str, str]:
    """inode -> local address of every listening TCP or bound UDP socket in this namespace."""
    found = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            f = line.split()
            if proto.startswith("tcp") and f[3] != "0A":
                continue
            hexaddr, port = f[1].split(":")
            raw = bytes.fromhex(hexaddr)
            if len(raw) == 4:
                ip = ipaddress.ip_address(raw[::-1])
            else:
                ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found[f[9]] = f"{ip}:{int(port, 16)}"
    return found


def test_real_node_processes_listen_only_on_loopback_or_node_addresses(kubeenv: Any) -> None:
    inodes = _listening_inodes()
    bound = []
    for entry in processes(STATE):
        pid = entry.split()[0]
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue  # it exited meanwhile
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                bound.append((entry.split()[1], inodes[target[8:-1]]))
    assert any(addr == "198.18.64.1:10250" for _, addr in bound), bound  # the kubelet
    assert any(addr == "198.18.64.1:53" for _, addr in bound), bound  # CoreDNS
    for command, addr in bound:
        ip = ipaddress.ip_address(addr.rsplit(":", 1)[0])
        assert ip.is_loopback or ip in REAL_RANGE, (command, addr)
