"""What a real node may change on the machine, read without sending a packet: links,
addresses, routes, rules, nftables, mounts, cgroups, sysctls, processes and fixed paths.
`snapshot()` before `hack/kubeenv up --real-nodes` must equal `snapshot()` after `down`."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

# Counters and statistics that change on their own.
VOLATILE_SYSCTL = re.compile(
    r"^(fs\.|kernel\.random\.|kernel\.ns_last_pid|kernel\.pty\.nr|net\.netfilter\.nf_conntrack_count"
    r"|kernel\.tainted|net\.ipv4\.tcp_fastopen_key|kernel\.sched_domain|vm\.stat)"
)
# Paths the kubelet and CNI plugins write whatever their configuration says.
FIXED_PATHS = ("/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd",
               "/etc/cni", "/opt/cni", "/run/netns", "/run/kubeenv-real-nodes.lock")


def _out(*argv: str) -> str:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout


def links() -> list[str]:
    return sorted(json_link["ifname"] for json_link in json.loads(_out("ip", "-j", "link")))


def addresses() -> list[str]:
    return sorted(
        f"{a['ifname']} {i['local']}/{i['prefixlen']}"
        for a in json.loads(_out("ip", "-j", "addr")) for i in a.get("addr_info", [])
    )


def routes() -> list[str]:
    return sorted(_out("ip", "route", "show", "table", "all").splitlines()
                  + _out("ip", "-6", "route", "show", "table", "all").splitlines())


def rules() -> list[str]:
    return _out("ip", "rule").splitlines() + _out("ip", "-6", "rule").splitlines()


def nft_ruleset() -> str:
    return re.sub(r"counter packets \d+ bytes \d+", "counter", _out("nft", "list", "ruleset"))


def mounts() -> list[str]:
    return sorted(line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines())


def cgroups() -> list[str]:
    root = Path("/sys/fs/cgroup")
    return sorted(str(p.relative_to(root)) for h in root.iterdir() if h.is_dir()
                  for p in h.iterdir() if p.is_dir())


def sysctls() -> dict[str, str]:
    values = {}
    for line in _out("sysctl", "-a").splitlines():
        key, _, value = line.partition(" = ")
        if not VOLATILE_SYSCTL.match(key):
            values[key] = value
    return values


def _names_path_under(arg: str, directory: str) -> bool:
    if arg.startswith("-") and "=" in arg:
        arg = arg.split("=", 1)[1]
    return arg == directory or arg.startswith(directory + "/")


def _in_pod_cgroups(cgroup: str) -> bool:
    paths = [line.split(":", 2)[2] for line in cgroup.splitlines() if line.count(":") >= 2]
    return any(p == "/kubeenv" or p.startswith("/kubeenv/") for p in paths)


def processes(state_dir: str) -> list[str]:
    """Processes of real nodes: an argument names the state dir (control plane, containerd, its
    shims, kubelet, kube-proxy, CoreDNS), or they sit in the pods' cgroups (containers)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                continue  # already dead, waiting to be reaped
            args = (proc / "cmdline").read_bytes().decode(errors="replace").split("\0")
            cgroup = (proc / "cgroup").read_text()
        except (OSError, IndexError):
            continue
        if any(_names_path_under(a, state_dir) for a in args) or _in_pod_cgroups(cgroup):
            found.append(f"{proc.name} {' '.join(args).strip()}")
    return found


def fixed_paths() -> list[str]:
    return [p for p in FIXED_PATHS if os.path.lexists(p)]


def snapshot(state_dir: str) -> dict[str, object]:
    return {
        "links": links(), "addresses": addresses(), "routes": routes(), "rules": rules(),
        "nftables": nft_ruleset(), "mounts": mounts(), "cgroups": cgroups(), "sysctls": sysctls(),
        "processes": processes(state_dir), "paths": fixed_paths(),
    }


def differences(before: dict[str, object], after: dict[str, object]) -> dict[str, object]:
    """Each aspect that changed, with what appeared and what went away."""
    diff: dict[str, object] = {}
    for key, old in before.items():
        new = after[key]
        if old == new:
            continue
        if isinstance(old, dict) and isinstance(new, dict):
            keys = old.keys() | new.keys()
            diff[key] = {k: (old.get(k), new.get(k)) for k in keys if old.get(k) != new.get(k)}
        elif isinstance(old, list) and isinstance(new, list):
            diff[key] = {"appeared": sorted(set(new) - set(old)), "gone": sorted(set(old) - set(new))}
        else:
            diff[key] = {"before": old, "after": new}
    return diff
