package main

// The host side of real nodes, and its exact undoing. Before touching anything, hostUp
// records what it will change (sysctls, nftables tables and chains, paths the kubelet
// writes outside --root-dir) in <state>/host/; cleanupHost removes every process, mount,
// cgroup, link, route and rule the real nodes made and restores the record. cleanupHost is
// idempotent and also runs from `kubeenv cleanup` after a crash.

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// cgroupRoot is where the kubelets put pods (cgroupRoot in their configuration).
const cgroupRoot = "kubeenv"

// machineLock is held by the one kubeenv with real nodes on this machine: the bridge, the
// nftables tables, the cgroup root and the kubelet's fixed paths are machine-wide.
const machineLock = "/run/kubeenv-real-nodes.lock"

// touchedSysctls are the sysctls we, the kubelet (protectKernelDefaults: false) or
// kube-proxy may change; their values are restored on cleanup.
var touchedSysctls = []string{
	"net.ipv4.ip_forward",
	"net.ipv4.conf.all.forwarding",
	"net.ipv4.conf.default.forwarding",
	"net.ipv4.conf.all.route_localnet",
	"net.bridge.bridge-nf-call-iptables",
	"net.bridge.bridge-nf-call-ip6tables",
	"vm.overcommit_memory",
	"vm.panic_on_oom",
	"kernel.panic",
	"kernel.panic_on_oops",
	"kernel.keys.root_maxkeys",
	"kernel.keys.root_maxbytes",
	"net.netfilter.nf_conntrack_max",
	"net.netfilter.nf_conntrack_tcp_timeout_established",
	"net.netfilter.nf_conntrack_tcp_timeout_close_wait",
}

// fixedPaths are written by the kubelet or the CNI plugins whatever their configuration
// says; those that did not exist before are removed on cleanup.
var fixedPaths = []string{"/var/lib/kubelet", "/var/log/containers", "/var/log/pods", "/var/lib/cni", "/run/containerd"}

// hostRecord is what cleanup restores.
type hostRecord struct {
	Sysctls      map[string]string `json:"sysctls"`
	NftChains    []string          `json:"nftChains"` // "family table chain", and "family table" for tables
	MissingPaths []string          `json:"missingPaths"`
}

func hostDir(stateDir string) string    { return filepath.Join(stateDir, "host") }
func recordFile(stateDir string) string { return filepath.Join(hostDir(stateDir), "record.json") }

// containmentRules:
//   - forward: only between the nodes' bridges; never to or from an uplink (the interfaces of
//     the default routes), which also keeps a machine that did not forward from forwarding;
//   - input: pods reach the host only at node addresses, on the cluster DNS port and the ports
//     in @pod_tcp_ports (the apiserver's forwarder); never loopback (route_localnet), never the
//     host's other addresses; nothing from outside reaches the range;
//   - postrouting: nothing from or to the range leaves on an interface other than a bridge or lo.
func containmentRules(uplinks []string) string {
	uplinkRules := ""
	if len(uplinks) > 0 {
		set := `"` + strings.Join(uplinks, `", "`) + `"`
		uplinkRules = fmt.Sprintf("\n        iifname { %[1]s } counter drop\n        oifname { %[1]s } counter drop", set)
	}
	return fmt.Sprintf(`table inet kubeenv {
    set pod_tcp_ports {
        type inet_service
    }
    chain forward {
        type filter hook forward priority -10; policy accept;
        iifname "%[1]s" oifname "%[1]s" accept
        iifname "%[1]s" counter drop
        oifname "%[1]s" counter drop%[3]s
    }
    chain input {
        type filter hook input priority -10; policy accept;
        iifname "%[1]s" ip daddr != %[2]s counter drop
        iifname "%[1]s" meta l4proto { tcp, udp } th dport 53 accept
        iifname "%[1]s" tcp dport @pod_tcp_ports accept
        iifname "%[1]s" ct state established,related accept
        iifname "%[1]s" meta l4proto { tcp, udp } counter drop
        iifname != "%[1]s" iifname != "lo" ip daddr %[2]s counter drop
    }
    chain postrouting {
        type filter hook postrouting priority -10; policy accept;
        oifname != "%[1]s" oifname != "lo" ip saddr %[2]s counter drop
        oifname != "%[1]s" oifname != "lo" ip daddr %[2]s counter drop
    }
}
`, realNodeBridges, realNodeRange, uplinkRules)
}

// allowPodPort lets pods reach a host port on the node addresses (the apiserver's forwarder).
func allowPodPort(port int) error {
	return runCmd("nft", "add", "element", "inet", "kubeenv", "pod_tcp_ports", fmt.Sprintf("{ %d }", port))
}

// uplinks are the interfaces the machine's default routes leave by.
func uplinks() []string {
	var out []string
	for _, family := range []string{"-4", "-6"} {
		data, _ := exec.Command("ip", family, "route", "show", "default").Output()
		for _, line := range strings.Split(string(data), "\n") {
			f := strings.Fields(line)
			for i := 0; i+1 < len(f); i++ {
				if f[i] == "dev" && !slices.Contains(out, f[i+1]) {
					out = append(out, f[i+1])
				}
			}
		}
	}
	return out
}

// hostUp records the machine's state, then makes each node's bridge with its address, the routes (the Service range on the bridge, the rest of the range
// blackholed), the containment rules and forwarding.
func hostUp(cfg config) error {
	if err := os.MkdirAll(hostDir(cfg.stateDir), 0o700); err != nil {
		return err
	}
	if _, err := os.Stat(recordFile(cfg.stateDir)); errors.Is(err, os.ErrNotExist) {
		rec, err := recordHost()
		if err != nil {
			return err
		}
		data, _ := json.MarshalIndent(rec, "", "  ")
		if err := os.WriteFile(recordFile(cfg.stateDir), data, 0o600); err != nil {
			return err
		}
	}
	var cmds [][]string
	for _, n := range realNodesOf(cfg) {
		cmds = append(cmds,
			[]string{"ip", "link", "add", n.bridge, "type", "bridge"},
			[]string{"ip", "addr", "add", n.ip + "/24", "dev", n.bridge},
			[]string{"ip", "link", "set", n.bridge, "up"},
		)
	}
	first := realNodesOf(cfg)[0]
	cmds = append(cmds,
		[]string{"ip", "route", "add", "blackhole", realNodeRange},
		[]string{"ip", "route", "add", realServiceCIDR, "dev", first.bridge, "src", first.ip},
	)
	for _, c := range cmds {
		if err := runCmd(c...); err != nil {
			return err
		}
	}
	if err := makeCgroupRoot(); err != nil {
		return err
	}
	if err := runInput(containmentRules(uplinks()), "nft", "-f", "-"); err != nil {
		return err
	}
	// Service traffic between pods on one bridge needs bridged packets to pass netfilter
	// (kube-proxy's DNAT) and routing through the host: both stay on the bridge.
	for k, v := range map[string]string{"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "1"} {
		if err := writeSysctl(k, v); err != nil {
			return err
		}
	}
	return nil
}

func recordHost() (hostRecord, error) {
	rec := hostRecord{Sysctls: map[string]string{}}
	for _, k := range touchedSysctls {
		if v, err := readSysctl(k); err == nil {
			rec.Sysctls[k] = v
		}
	}
	chains, err := nftChains()
	if err != nil {
		return rec, err
	}
	rec.NftChains = chains
	for _, p := range fixedPaths {
		if _, err := os.Lstat(p); errors.Is(err, os.ErrNotExist) {
			rec.MissingPaths = append(rec.MissingPaths, p)
		}
	}
	return rec, nil
}

func readRecord(stateDir string) (hostRecord, error) {
	var rec hostRecord
	data, err := os.ReadFile(recordFile(stateDir))
	if err != nil {
		return rec, err
	}
	return rec, json.Unmarshal(data, &rec)
}

// cleanupHost undoes everything real nodes did; it keeps going past errors and reports them.
func cleanupHost(stateDir string) error {
	rec, err := readRecord(stateDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil // real nodes never started here
	} else if err != nil {
		return err
	}
	var errs []error
	killOurProcesses(stateDir)
	errs = append(errs, unmountUnder(stateDir)...)
	errs = append(errs, removeCgroups()...)
	bridges, _ := filepath.Glob("/sys/class/net/" + realNodeBridges)
	for _, b := range bridges {
		errs = append(errs, runCmd("ip", "link", "del", filepath.Base(b)))
	}
	_ = runCmd("ip", "route", "del", "blackhole", realNodeRange)
	// Sysctls first (forwarding off again), then the containment rules go.
	keys := make([]string, 0, len(rec.Sysctls))
	for k := range rec.Sysctls {
		keys = append(keys, k)
	}
	sort.Strings(keys) // values are re-read before each write: ip_forward also resets conf.*.forwarding
	for _, k := range keys {
		if cur, err := readSysctl(k); err == nil && cur != rec.Sysctls[k] {
			errs = append(errs, writeSysctl(k, rec.Sysctls[k]))
		}
	}
	errs = append(errs, restoreNftables(rec.NftChains)...)
	for _, p := range rec.MissingPaths {
		errs = append(errs, removeFixedPath(p, stateDir))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return os.Remove(recordFile(stateDir))
}

// killOurProcesses kills every process of the real nodes: those whose command line names
// the state dir (containerd, its shims, kubelets, kube-proxy, CoreDNS) and those in the
// pods' cgroups (the containers), until none is left.
func killOurProcesses(stateDir string) {
	for range 50 {
		pids := ourPids(stateDir)
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	klog.Warning("processes of the real nodes survived SIGKILL", "pids", ourPids(stateDir))
}

func ourPids(stateDir string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		cgroups, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cgroup"))
		stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if strings.Contains(string(stat), ") Z ") {
			continue // a zombie is already dead
		}
		args := strings.Split(string(cmdline), "\x00")
		if len(args) > 1 && args[1] == "cleanup" {
			continue // `kubeenv cleanup` itself
		}
		if slices.ContainsFunc(args, func(a string) bool { return namesPathUnder(a, stateDir) }) ||
			inCgroup(string(cgroups), "/"+cgroupRoot) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// namesPathUnder: an argument is dir or a path below it, alone or as a flag's value
// (`--config=<dir>/x`), so another state dir that merely starts the same is not ours.
func namesPathUnder(arg, dir string) bool {
	if i := strings.IndexByte(arg, '='); strings.HasPrefix(arg, "-") && i > 0 {
		arg = arg[i+1:]
	}
	return arg == dir || strings.HasPrefix(arg, dir+"/")
}

// inCgroup: one of the process's cgroup lines (id:controllers:path) is root or below it.
func inCgroup(cgroups, root string) bool {
	for _, line := range strings.Split(strings.TrimSpace(cgroups), "\n") {
		if parts := strings.SplitN(line, ":", 3); len(parts) == 3 && (parts[2] == root || strings.HasPrefix(parts[2], root+"/")) {
			return true
		}
	}
	return false
}

// unmountUnder detaches every mount below dir, deepest first (volumes, rootfs, netns, the
// kubelet's bind mount of its root dir).
func unmountUnder(dir string) []error {
	for range 5 {
		targets, err := mountsUnder(dir)
		if err != nil {
			return []error{err}
		}
		if len(targets) == 0 {
			return nil
		}
		for _, t := range targets {
			_ = syscall.Unmount(t, syscall.MNT_DETACH)
		}
	}
	if left, _ := mountsUnder(dir); len(left) > 0 {
		return []error{fmt.Errorf("still mounted under %s: %s", dir, strings.Join(left, ", "))}
	}
	return nil
}

// mountsUnder lists the mount points at or below dir, deepest first.
func mountsUnder(dir string) ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var targets []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 4 {
			if t := unescapeMount(f[4]); t == dir || strings.HasPrefix(t, dir+"/") {
				targets = append(targets, t)
			}
		}
	}
	sort.Slice(targets, func(i, j int) bool { return len(targets[i]) > len(targets[j]) })
	return targets, nil
}

func unescapeMount(s string) string {
	return strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`).Replace(s)
}

// makeCgroupRoot creates /kubeenv in every cgroup v1 hierarchy (the kubelet insists that its
// cgroupRoot exists); a cpuset cgroup starts with no CPUs or memory nodes, so it gets its parent's.
func makeCgroupRoot() error {
	hierarchies, _ := filepath.Glob("/sys/fs/cgroup/*/cgroup.procs")
	for _, procs := range hierarchies {
		parent := filepath.Dir(procs)
		dir := filepath.Join(parent, cgroupRoot)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			return err
		}
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if v, err := os.ReadFile(filepath.Join(parent, f)); err == nil {
				if err := os.WriteFile(filepath.Join(dir, f), v, 0o644); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// removeCgroups removes /kubeenv in every cgroup v1 hierarchy (and v2), deepest first.
func removeCgroups() []error {
	var errs []error
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + cgroupRoot)
	if _, err := os.Stat("/sys/fs/cgroup/" + cgroupRoot); err == nil {
		roots = append(roots, "/sys/fs/cgroup/"+cgroupRoot)
	}
	for _, root := range roots {
		var dirs []string
		_ = filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			var err error
			for range 20 { // a cgroup is busy for a moment after its last process died
				if err = os.Remove(d); err == nil || errors.Is(err, os.ErrNotExist) {
					err = nil
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errs
}

// nftChains lists every table ("family table") and chain ("family table chain").
func nftChains() ([]string, error) {
	ruleset, err := nftRuleset()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, item := range ruleset {
		if t, ok := item["table"]; ok {
			out = append(out, fmt.Sprintf("%s %s", t["family"], t["name"]))
		}
		if c, ok := item["chain"]; ok {
			out = append(out, fmt.Sprintf("%s %s %s", c["family"], c["table"], c["name"]))
		}
	}
	return out, nil
}

func nftRuleset() ([]map[string]map[string]any, error) {
	out, err := exec.Command("nft", "-j", "list", "ruleset").Output()
	if err != nil {
		return nil, fmt.Errorf("nft -j list ruleset: %w", err)
	}
	var doc struct {
		Nftables []map[string]map[string]any `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, err
	}
	return doc.Nftables, nil
}

// ourTables are the nftables tables only real nodes make: ours and kube-proxy's.
var ourTables = []string{"inet kubeenv", "ip kube-proxy", "ip6 kube-proxy"}

// ourChain: the kubelet's and the CNI plugins' iptables(-nft) chains.
func ourChain(name string) bool {
	return strings.HasPrefix(name, "KUBE-") || strings.HasPrefix(name, "CNI-")
}

// restoreNftables deletes our tables, and the kubelet's KUBE-* chains (with the rules that
// jump to them) that were not there before; an iptables-nft table that did not exist before
// goes too once it is empty. Nobody else's tables, chains or rules are touched.
func restoreNftables(before []string) []error {
	had := map[string]bool{}
	for _, c := range before {
		had[c] = true
	}
	ruleset, err := nftRuleset()
	if err != nil {
		return []error{err}
	}
	var errs []error
	newChain := map[string]bool{}
	for _, item := range ruleset {
		if c, ok := item["chain"]; ok {
			key := fmt.Sprintf("%s %s %s", c["family"], c["table"], c["name"])
			table := fmt.Sprintf("%s %s", c["family"], c["table"])
			if !had[key] && ourChain(fmt.Sprint(c["name"])) && !slices.Contains(ourTables, table) {
				newChain[key] = true
			}
		}
	}
	for _, item := range ruleset {
		r, ok := item["rule"]
		if !ok {
			continue
		}
		table := fmt.Sprintf("%s %s", r["family"], r["table"])
		for _, target := range jumpTargets(r["expr"]) {
			if newChain[table+" "+target] && !newChain[table+" "+fmt.Sprint(r["chain"])] {
				errs = append(errs, runCmd("nft", "delete", "rule", fmt.Sprint(r["family"]), fmt.Sprint(r["table"]),
					fmt.Sprint(r["chain"]), "handle", fmt.Sprint(r["handle"])))
			}
		}
	}
	for key := range newChain {
		f := strings.Fields(key)
		errs = append(errs, runCmd("nft", "flush", "chain", f[0], f[1], f[2]))
	}
	for key := range newChain {
		f := strings.Fields(key)
		errs = append(errs, runCmd("nft", "delete", "chain", f[0], f[1], f[2]))
	}
	for _, table := range ourTables {
		f := strings.Fields(table)
		if exec.Command("nft", "list", "table", f[0], f[1]).Run() == nil {
			errs = append(errs, runCmd("nft", "delete", "table", f[0], f[1]))
		}
	}
	// iptables-nft tables the kubelet created (filter, nat, mangle), once nothing is left in them.
	if ruleset, err = nftRuleset(); err == nil {
		for _, item := range ruleset {
			t, ok := item["table"]
			key := fmt.Sprintf("%s %s", t["family"], t["name"])
			if ok && !had[key] && tableIsEmpty(ruleset, t) {
				errs = append(errs, runCmd("nft", "delete", "table", fmt.Sprint(t["family"]), fmt.Sprint(t["name"])))
			}
		}
	}
	return errs
}

// tableIsEmpty: the table has no rules, sets or maps, and its chains are all built-in ones
// without rules (what iptables-nft leaves behind).
func tableIsEmpty(ruleset []map[string]map[string]any, t map[string]any) bool {
	for _, item := range ruleset {
		for kind, obj := range item {
			if kind == "table" || kind == "metainfo" || obj["family"] != t["family"] || obj["table"] != t["name"] {
				continue
			}
			if kind != "chain" || ourChain(fmt.Sprint(obj["name"])) {
				return false
			}
		}
	}
	return true
}

// jumpTargets finds the chains a rule's expressions jump or go to.
func jumpTargets(expr any) []string {
	var out []string
	switch v := expr.(type) {
	case []any:
		for _, e := range v {
			out = append(out, jumpTargets(e)...)
		}
	case map[string]any:
		for k, e := range v {
			if k == "jump" || k == "goto" {
				if m, ok := e.(map[string]any); ok {
					out = append(out, fmt.Sprint(m["target"]))
				}
			} else {
				out = append(out, jumpTargets(e)...)
			}
		}
	}
	return out
}

// removeFixedPath removes a path the kubelet created outside the state dir, after
// unmounting anything below it.
func removeFixedPath(path, stateDir string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if errs := unmountUnder(path); len(errs) > 0 {
		return errors.Join(errs...)
	}
	return os.RemoveAll(path)
}

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

func readSysctl(key string) (string, error) {
	data, err := os.ReadFile(sysctlPath(key))
	return strings.TrimSpace(string(data)), err
}

func writeSysctl(key, value string) error {
	if err := os.WriteFile(sysctlPath(key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

func runCmd(argv ...string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func runInput(input string, argv ...string) error {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(input)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// lockMachine takes the machine-wide real-node lock for this process's lifetime.
func lockMachine(stateDir string) (*os.File, error) {
	f, err := os.OpenFile(machineLock, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(machineLock)
		f.Close()
		return nil, fmt.Errorf("another kubeenv with real nodes runs on this machine (%s); stop it first: KUBEENV_STATE_DIR=%s hack/kubeenv down",
			strings.TrimSpace(string(owner)), strings.TrimSpace(string(owner)))
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(stateDir+"\n"), 0)
	return f, nil
}

func unlockMachine(f *os.File) {
	if f == nil {
		return
	}
	_ = os.Remove(machineLock)
	f.Close()
}
