// Command kubeenv runs a real, single-process Kubernetes control plane for tests and the
// local demo: embedded etcd, kube-apiserver, kube-controller-manager and kube-scheduler
// built from Kubernetes' own Go modules, plus a small volume provisioner, and (optionally)
// kwok as a child process acting as the kubelet of fake GPU nodes.
//
// Everything listens on 127.0.0.1 only, except with --real-nodes (realnode.go: kubelets and
// CoreDNS on node addresses that exist only on this machine's bridges). State (certificates, etcd data, kubeconfig, logs,
// volumes) lives in --state-dir. When the cluster is ready (apiserver /readyz ok, the
// default ServiceAccount exists and every fake node is Ready) the file <state-dir>/ready is
// written; SIGTERM/SIGINT stop everything cleanly and remove it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

type config struct {
	stateDir    string
	port        int
	kwokPath    string
	nodes       int
	gpusPerNode int
	nodeCPU     string
	nodeMemory  string
	nodePods    string
	readyWait   time.Duration

	realNodes      int
	containerdPath string
	runcPath       string
	cniBinDir      string
	images         stringList

	apiserverArgs stringList
}

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

// subcommands run another component of this binary as its own process: the real nodes'
// kubelets, kube-proxy and CoreDNS, and the cleanup after a crash.
var subcommands = map[string]func(args []string) int{
	"kubelet":    runKubelet,
	"kube-proxy": runKubeProxy,
	"coredns":    runCoreDNS,
	"cleanup":    runCleanup,
}

func main() {
	if len(os.Args) > 1 {
		if sub, ok := subcommands[os.Args[1]]; ok {
			os.Exit(sub(os.Args[2:]))
		}
	}
	// Everything here talks to this machine only; a proxy from the user's environment would turn
	// the apiserver's connections to real kubelets (non-loopback addresses) into CONNECTs elsewhere.
	for _, v := range []string{"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"} {
		_ = os.Unsetenv(v)
	}
	var cfg config
	// Our own flag set: packages linked in for the kubelet register flags of the same names
	// (e.g. cadvisor's --containerd) on the global one.
	fs := flag.NewFlagSet("kubeenv", flag.ExitOnError)
	klog.InitFlags(fs)
	fs.StringVar(&cfg.stateDir, "state-dir", "", "directory for certificates, etcd data, kubeconfig and volumes (required)")
	fs.IntVar(&cfg.port, "port", 0, "kube-apiserver port on 127.0.0.1 (0: pick a free one)")
	fs.StringVar(&cfg.kwokPath, "kwok", "", "path to the kwok binary acting as the fake kubelet (empty: no nodes are managed)")
	fs.IntVar(&cfg.nodes, "nodes", 2, "number of fake GPU nodes")
	fs.IntVar(&cfg.gpusPerNode, "gpus-per-node", 8, "nvidia.com/gpu capacity of each fake node")
	fs.StringVar(&cfg.nodeCPU, "node-cpu", "64", "cpu capacity of each fake node")
	fs.StringVar(&cfg.nodeMemory, "node-memory", "512Gi", "memory capacity of each fake node")
	fs.StringVar(&cfg.nodePods, "node-pods", "250", "pod capacity of each fake node")
	fs.DurationVar(&cfg.readyWait, "ready-timeout", 3*time.Minute, "how long to wait for the cluster to become ready")
	fs.IntVar(&cfg.realNodes, "real-nodes", 0, "number of real nodes (kubelet + containerd; needs root)")
	fs.StringVar(&cfg.containerdPath, "containerd", "", "containerd binary; containerd-shim-runc-v2 and ctr sit next to it")
	fs.StringVar(&cfg.runcPath, "runc", "/usr/sbin/runc", "runc binary of the real nodes")
	fs.StringVar(&cfg.cniBinDir, "cni-bin-dir", "/usr/lib/cni", "CNI plugins (bridge, host-local, loopback)")
	fs.Var(&cfg.images, "image", "image archive (OCI or docker-archive) imported into every real node; repeatable")
	fs.Var(&cfg.apiserverArgs, "apiserver-arg", "an extra kube-apiserver flag (--name=value), applied after ours so it overrides them; repeatable")
	_ = fs.Set("logtostderr", "true")
	_ = fs.Parse(os.Args[1:])
	if cfg.stateDir == "" {
		fmt.Fprintln(os.Stderr, "--state-dir is required")
		os.Exit(2)
	}
	abs, err := filepath.Abs(cfg.stateDir)
	if err != nil {
		klog.Fatal(err)
	}
	cfg.stateDir = abs

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		klog.ErrorS(err, "kubeenv failed")
		os.Exit(1)
	}
	klog.Info("kubeenv stopped cleanly")
}

// run starts every component, reports readiness and blocks until ctx is cancelled.
func run(ctx context.Context, cfg config) error {
	for _, d := range []string{"pki", "etcd", "volumes"} {
		if err := os.MkdirAll(filepath.Join(cfg.stateDir, d), 0o700); err != nil {
			return err
		}
	}
	readyFile := filepath.Join(cfg.stateDir, "ready")
	_ = os.Remove(readyFile)

	var realNames []string
	for _, n := range realNodesOf(cfg) {
		realNames = append(realNames, n.name)
	}
	creds, err := ensureCredentials(cfg.stateDir, realNames)
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
	}
	pki, err := ensureNodePKI(cfg.stateDir, realNodesOf(cfg))
	if err != nil {
		return fmt.Errorf("node certificates: %w", err)
	}
	if cfg.realNodes > 0 {
		lock, err := lockMachine(cfg.stateDir)
		if err != nil {
			return err
		}
		defer unlockMachine(lock)
		defer func() {
			if err := cleanupHost(cfg.stateDir); err != nil {
				klog.ErrorS(err, "cleaning up the real nodes' host state")
			}
		}()
		if err := hostUp(cfg); err != nil {
			return fmt.Errorf("real-node network: %w", err)
		}
	}

	etcdSrv, etcdURL, err := startEtcd(filepath.Join(cfg.stateDir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer func() {
		etcdSrv.Close()
		klog.Info("etcd stopped")
	}()

	// Components share one context, cancelled on shutdown before etcd closes.
	compCtx, cancelComponents := context.WithCancel(context.Background())
	defer cancelComponents()

	api, err := startAPIServer(compCtx, cfg, creds, pki, etcdURL)
	if err != nil {
		return fmt.Errorf("kube-apiserver: %w", err)
	}
	kubeconfig := filepath.Join(cfg.stateDir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, api.url, api.caPEM, creds.adminToken); err != nil {
		return err
	}
	client, restCfg, err := adminClient(kubeconfig)
	if err != nil {
		return err
	}
	if err := waitAPIServerReady(ctx, client, api.errCh); err != nil {
		return fmt.Errorf("kube-apiserver not ready: %w", err)
	}
	klog.InfoS("kube-apiserver ready", "url", api.url)

	kcmDone, err := startControllerManager(compCtx, kubeconfig, creds, api.caFile)
	if err != nil {
		return fmt.Errorf("kube-controller-manager: %w", err)
	}
	schedDone, err := startScheduler(compCtx, kubeconfig)
	if err != nil {
		return fmt.Errorf("kube-scheduler: %w", err)
	}

	if err := bootstrap(ctx, client, cfg); err != nil {
		return fmt.Errorf("bootstrap objects: %w", err)
	}
	provDone := startProvisioner(compCtx, restCfg, filepath.Join(cfg.stateDir, "volumes"))

	var kwok *childProcess
	if cfg.kwokPath != "" {
		kwok, err = startKwok(cfg, kubeconfig)
		if err != nil {
			return fmt.Errorf("kwok: %w", err)
		}
	}
	stopKwok := func() {
		kwok.stop(10 * time.Second)
		kwok = nil
	}
	defer stopKwok()
	var real *realCluster
	defer func() { real.stop() }()
	if cfg.realNodes > 0 {
		real, err = startRealNodes(ctx, cfg, api, creds, pki, kubeconfig)
		if err != nil {
			return fmt.Errorf("real nodes: %w", err)
		}
	}

	readyCtx, cancelReady := context.WithTimeout(ctx, cfg.readyWait)
	err = waitClusterReady(readyCtx, client, cfg, api.errCh, kwok, real)
	cancelReady()
	if err != nil {
		return fmt.Errorf("cluster not ready: %w", err)
	}
	if err := os.WriteFile(readyFile, fmt.Appendf(nil, "pid=%d\nkubeconfig=%s\nserver=%s\netcd=%s\n", os.Getpid(), kubeconfig, api.url, etcdURL), 0o600); err != nil {
		return err
	}
	klog.InfoS("kubeenv ready", "kubeconfig", kubeconfig)

	var runErr error
	select {
	case <-ctx.Done():
		klog.Info("shutting down")
	case err := <-api.errCh:
		runErr = fmt.Errorf("kube-apiserver exited: %w", err)
	case <-kwok.done():
		runErr = errors.New("kwok exited unexpectedly")
	case <-real.exited():
		runErr = errors.New("a real-node process exited unexpectedly (see its log in the state dir)")
	}
	_ = os.Remove(readyFile)
	real.stop()
	stopKwok()
	cancelComponents()
	waitDone("kube-scheduler", schedDone, 15*time.Second)
	waitDone("kube-controller-manager", kcmDone, 15*time.Second)
	waitDone("provisioner", provDone, 5*time.Second)
	select {
	case <-api.stopped:
		klog.Info("kube-apiserver stopped")
	case <-time.After(30 * time.Second):
		klog.Warning("kube-apiserver did not stop within 30s")
	}
	return runErr
}

// waitDone waits for a component's done channel, bounded so shutdown never hangs.
func waitDone(name string, done <-chan struct{}, timeout time.Duration) {
	select {
	case <-done:
		klog.InfoS("component stopped", "component", name)
	case <-time.After(timeout):
		klog.InfoS("component did not stop in time", "component", name, "timeout", timeout)
	}
}
