package main

// Real nodes: per node a containerd (runc, CNI bridge) and a kubelet built from
// k8s.io/kubernetes, plus one kube-proxy (nftables mode) and one CoreDNS for the machine.
// Their addresses sit in 198.18.0.0/15 (RFC 2544's benchmarking range, never routed on the
// internet) and exist only on a bridge this process creates (see hostnet.go).

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

const (
	// realNodeBridges matches each node's bridge, kubeenv<i> (the CNI bridge plugin wants the
	// node's pod gateway as the bridge's only IPv4 address, so nodes cannot share one).
	realNodeBridges = "kubeenv*"
	// realNodeRange holds every real-node address: node IPs, the DNS IP, pod and Service
	// ranges. What is not served in it is blackholed, so it can only deliver locally.
	realNodeRange   = "198.18.0.0/15"
	realServiceCIDR = "198.19.0.0/16"
	realPodRange    = "198.18.64.0/18"
	// clusterDNSIP is the first node's address: CoreDNS serves there for every node.
	clusterDNSIP  = "198.18.64.1"
	clusterDomain = "cluster.local"
	// realNodeTaint keeps pods off the real node unless they tolerate it, so the kwok tier's
	// pods never land there by accident.
	realNodeTaint      = "kubeenv.axolotl.ai/real-node"
	realNodeLabelKey   = "kubeenv.axolotl.ai/node"
	realNodeLabelValue = "real"
	// refusingProxy is where any image pull goes: nothing listens on loopback port 9, so the
	// runtime never reaches a registry.
	refusingProxy = "https://127.0.0.1:9"
	// sandboxImage is the pause image built here (hack/kubeenv) and imported at start.
	sandboxImage = "localhost/kubeenv/pause:1"
	k8sNamespace = "k8s.io"
)

// realNode is one kubelet + containerd pair and its addresses.
type realNode struct {
	index   int
	name    string
	bridge  string // the node's pods attach here
	ip      string // the bridge's address: the pods' gateway, the node IP (the kubelet serves 10250 here)
	podCIDR string // host-local range of its pods
	dir     string // <state>/nodes/<name>
}

func realNodeName(i int) string { return fmt.Sprintf("realnode-%d", i) }

func realNodesOf(cfg config) []realNode {
	var nodes []realNode
	for i := range cfg.realNodes {
		name := realNodeName(i)
		nodes = append(nodes, realNode{
			index:   i,
			name:    name,
			bridge:  fmt.Sprintf("kubeenv%d", i),
			ip:      fmt.Sprintf("198.18.%d.1", 64+i),
			podCIDR: fmt.Sprintf("198.18.%d.0/24", 64+i),
			dir:     filepath.Join(cfg.stateDir, "nodes", name),
		})
	}
	return nodes
}

func (n realNode) containerdSock() string {
	return filepath.Join(n.dir, "containerd", "containerd.sock")
}

// realCluster holds the processes of the real nodes, stopped in reverse start order.
type realCluster struct {
	children []*childProcess
	anyExit  chan struct{} // closed when any child exits
	once     sync.Once
}

func newRealCluster() *realCluster { return &realCluster{anyExit: make(chan struct{})} }

func (r *realCluster) add(c *childProcess) {
	r.children = append(r.children, c)
	go func() {
		<-c.exited
		r.once.Do(func() { close(r.anyExit) })
	}()
}

// exited is closed when any real-node process exits (nil, never ready, without real nodes).
func (r *realCluster) exited() <-chan struct{} {
	if r == nil {
		return nil
	}
	return r.anyExit
}

func (r *realCluster) stop() {
	if r == nil {
		return
	}
	for i := len(r.children) - 1; i >= 0; i-- {
		r.children[i].stop(20 * time.Second)
	}
	r.children = nil
}

// startRealNodes starts containerd (with the local images imported) and a kubelet per node,
// then kube-proxy and CoreDNS. The caller waits for the nodes to be Ready.
func startRealNodes(ctx context.Context, cfg config, api *apiServer, creds credentials, pki nodePKI, adminKubeconfig string) (*realCluster, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	r := newRealCluster()
	for _, n := range realNodesOf(cfg) {
		if err := os.MkdirAll(filepath.Join(n.dir, "containerd"), 0o700); err != nil {
			return r, err
		}
		ctrd, err := startContainerd(cfg, n)
		if err != nil {
			return r, err
		}
		r.add(ctrd)
		if err := waitSocket(ctx, n.containerdSock(), ctrd); err != nil {
			return r, fmt.Errorf("containerd of %s: %w", n.name, err)
		}
		for _, img := range cfg.images {
			if err := importImage(ctx, cfg, n, img); err != nil {
				return r, err
			}
		}
		kubeconfig := filepath.Join(n.dir, "kubeconfig")
		if err := writeKubeconfig(kubeconfig, api.url, api.caPEM, creds.nodeTokens[n.name]); err != nil {
			return r, err
		}
		kubelet, err := startKubelet(cfg, self, n, kubeconfig, pki)
		if err != nil {
			return r, err
		}
		r.add(kubelet)
	}
	proxy, err := startKubeProxy(cfg, self, adminKubeconfig)
	if err != nil {
		return r, err
	}
	r.add(proxy)
	dns, err := startCoreDNS(cfg, self, adminKubeconfig)
	if err != nil {
		return r, err
	}
	r.add(dns)
	return r, nil
}

// containerdConfig is containerd 2.x's configuration (version 4) for one node: state under
// the node's directory, runc with cgroupfs, the CNI bridge, the sandbox image built here, and
// a registry configuration that sends every pull to a refusing loopback address.
func containerdConfig(cfg config, n realNode) string {
	d := filepath.Join(n.dir, "containerd")
	return fmt.Sprintf(`version = 4
root = %[1]q
state = %[2]q
imports = []
[plugins.'io.containerd.server.v1.grpc']
  address = %[3]q
[plugins.'io.containerd.server.v1.ttrpc']
  address = %[4]q
[plugins.'io.containerd.server.v1.debug']
  address = ""
[plugins.'io.containerd.server.v1.metrics']
  address = ""
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.transfer.v1.local']
  config_path = %[6]q
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[5]q
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = %[6]q
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %[7]q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%[8]q]
    conf_dir = %[9]q
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
`, filepath.Join(d, "root"), filepath.Join(d, "state"), n.containerdSock(), filepath.Join(d, "ttrpc.sock"),
		sandboxImage, filepath.Join(d, "certs.d"), cfg.runcPath, cfg.cniBinDir, filepath.Join(d, "cni"))
}

// (No portmap plugin: hostPort would need SNAT with route_localnet, i.e. a way for pods to
// reach the host's loopback services.)

// registryHosts is the hosts.toml of `_default`, i.e. of every registry: any pull or
// resolve goes to a loopback port where nothing listens.
const registryHosts = `server = "` + refusingProxy + `"

[host."` + refusingProxy + `"]
  capabilities = ["pull", "resolve"]
`

// cniConfig attaches pods to the bridge with addresses from the node's range and routes only
// to the real-node range: a pod has no default route, so no packet of it can head elsewhere.
func cniConfig(n realNode) string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "kubeenv",
  "plugins": [
    {
      "type": "bridge",
      "bridge": %q,
      "isGateway": true,
      "isDefaultGateway": false,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [[{"subnet": %q, "gateway": %q}]],
        "routes": [{"dst": %q}]
      }
    }
  ]
}
`, n.bridge, filepath.Join(n.dir, "cni-ipam"), n.podCIDR, n.ip, realNodeRange)
}

func startContainerd(cfg config, n realNode) (*childProcess, error) {
	d := filepath.Join(n.dir, "containerd")
	files := map[string]string{
		filepath.Join(d, "config.toml"):                       containerdConfig(cfg, n),
		filepath.Join(d, "certs.d", "_default", "hosts.toml"): registryHosts,
		filepath.Join(d, "cni", "10-kubeenv.conflist"):        cniConfig(n),
	}
	for path, content := range files {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			return nil, err
		}
	}
	// The proxy variables catch any registry connection the hosts configuration might miss.
	env := append(os.Environ(), "HTTP_PROXY="+refusingProxy, "HTTPS_PROXY="+refusingProxy,
		"http_proxy="+refusingProxy, "https_proxy="+refusingProxy, "NO_PROXY=", "no_proxy=",
		"PATH="+filepath.Dir(cfg.containerdPath)+":"+os.Getenv("PATH"))
	return startChild(cfg.stateDir, "containerd-"+n.name, env, cfg.containerdPath, "--config="+filepath.Join(d, "config.toml"))
}

// waitSocket waits until a unix socket accepts connections or the child exits.
func waitSocket(ctx context.Context, path string, c *childProcess) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if conn, err := net.Dial("unix", path); err == nil {
			conn.Close()
			return nil
		}
		select {
		case <-c.done():
			return fmt.Errorf("exited, see %s.log", c.name)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("no socket %s after 60s", path)
}

// importImage puts an image archive (OCI or docker-archive) into a node's runtime.
func importImage(ctx context.Context, cfg config, n realNode, archive string) error {
	ctr := filepath.Join(filepath.Dir(cfg.containerdPath), "ctr")
	out, err := exec.CommandContext(ctx, ctr, "--address", n.containerdSock(), "--namespace", k8sNamespace,
		"images", "import", archive).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s into %s: %w: %s", archive, n.name, err, strings.TrimSpace(string(out)))
	}
	klog.InfoS("image imported", "node", n.name, "archive", archive)
	return nil
}

// kubeletConfig: cgroupfs on cgroup v1, pods under /kubeenv, serving on the node IP with a
// certificate from our node CA, client certificates (the apiserver's) and webhook authz,
// logs and state under the node's directory, the taint that keeps other tiers away.
func kubeletConfig(cfg config, n realNode, pki nodePKI) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %[2]d
tlsCertFile: %[3]q
tlsPrivateKeyFile: %[4]q
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: %[5]q}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: /kubeenv
failCgroupV1: false
failSwapOn: false
protectKernelDefaults: false
containerRuntimeEndpoint: unix://%[6]s
clusterDomain: %[7]s
clusterDNS: [%[8]s]
resolvConf: %[9]q
podLogsDir: %[10]q
staticPodPath: ""
registerWithTaints:
- {key: %[11]s, value: "true", effect: NoSchedule}
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%", nodefs.inodesFree: "1%%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 110
serializeImagePulls: false
shutdownGracePeriod: 0s
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
`, n.ip, 10248+n.index, pki.kubeletCert[n.name], pki.kubeletKey[n.name], pki.caFile, n.containerdSock(),
		clusterDomain, clusterDNSIP, filepath.Join(n.dir, "resolv.conf"), filepath.Join(n.dir, "pod-logs"), realNodeTaint)
}

func startKubelet(cfg config, self string, n realNode, kubeconfig string, pki nodePKI) (*childProcess, error) {
	cfgPath := filepath.Join(n.dir, "kubelet.yaml")
	if err := os.WriteFile(cfgPath, []byte(kubeletConfig(cfg, n, pki)), 0o600); err != nil {
		return nil, err
	}
	// Pods with dnsPolicy Default get this; cluster DNS is all a pod here may ask.
	if err := os.WriteFile(filepath.Join(n.dir, "resolv.conf"), []byte("nameserver "+clusterDNSIP+"\n"), 0o644); err != nil {
		return nil, err
	}
	env := append(os.Environ(), "PATH="+filepath.Dir(cfg.containerdPath)+":"+os.Getenv("PATH"))
	return startChild(cfg.stateDir, "kubelet-"+n.name, env, self, "kubelet",
		"--config="+cfgPath,
		"--kubeconfig="+kubeconfig,
		"--root-dir="+filepath.Join(n.dir, "kubelet"),
		"--hostname-override="+n.name,
		"--node-ip="+n.ip,
		"--node-labels="+realNodeLabelKey+"="+realNodeLabelValue,
		"--v=1",
	)
}

// startKubeProxy runs one kube-proxy for the machine (every real node shares its network
// namespace): nftables mode, so all its rules live in its own tables; it binds loopback
// only and leaves conntrack sysctls alone.
func startKubeProxy(cfg config, self, kubeconfig string) (*childProcess, error) {
	path := filepath.Join(cfg.stateDir, "kube-proxy.yaml")
	conf := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: %q}
hostnameOverride: %s
mode: nftables
clusterCIDR: %s
detectLocalMode: ClusterCIDR
nodePortAddresses: [%q]
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
`, kubeconfig, realNodeName(0), realPodRange, realNodeRange)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return startChild(cfg.stateDir, "kube-proxy", nil, self, "kube-proxy", "--config="+path, "--v=1")
}

// startCoreDNS serves cluster.local from the API on the cluster DNS address and answers
// nothing else: there is no forward plugin, so no query ever leaves the machine.
func startCoreDNS(cfg config, self, kubeconfig string) (*childProcess, error) {
	path := filepath.Join(cfg.stateDir, "Corefile")
	conf := fmt.Sprintf(`.:53 {
    bind %s
    errors
    kubernetes %s in-addr.arpa ip6.arpa {
        kubeconfig %s kubeenv
        pods insecure
        ttl 5
    }
}
`, clusterDNSIP, clusterDomain, kubeconfig)
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	return startChild(cfg.stateDir, "coredns", nil, self, "coredns", "-conf", path)
}
