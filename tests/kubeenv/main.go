// Command kubeenv runs a real, single-process Kubernetes control plane for tests and the
// local demo: embedded etcd, kube-apiserver, kube-controller-manager and kube-scheduler
// built from Kubernetes' own Go modules, plus a small volume provisioner, and (optionally)
// kwok as a child process acting as the kubelet of fake GPU nodes.
//
// Everything listens on 127.0.0.1 only. State (certificates, etcd data, kubeconfig, logs,
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
}

func main() {
	var cfg config
	klog.InitFlags(nil)
	flag.StringVar(&cfg.stateDir, "state-dir", "", "directory for certificates, etcd data, kubeconfig and volumes (required)")
	flag.IntVar(&cfg.port, "port", 0, "kube-apiserver port on 127.0.0.1 (0: pick a free one)")
	flag.StringVar(&cfg.kwokPath, "kwok", "", "path to the kwok binary acting as the fake kubelet (empty: no nodes are managed)")
	flag.IntVar(&cfg.nodes, "nodes", 2, "number of fake GPU nodes")
	flag.IntVar(&cfg.gpusPerNode, "gpus-per-node", 8, "nvidia.com/gpu capacity of each fake node")
	flag.StringVar(&cfg.nodeCPU, "node-cpu", "64", "cpu capacity of each fake node")
	flag.StringVar(&cfg.nodeMemory, "node-memory", "512Gi", "memory capacity of each fake node")
	flag.StringVar(&cfg.nodePods, "node-pods", "250", "pod capacity of each fake node")
	flag.DurationVar(&cfg.readyWait, "ready-timeout", 3*time.Minute, "how long to wait for the cluster to become ready")
	_ = flag.Set("logtostderr", "true")
	flag.Parse()
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

	creds, err := ensureCredentials(cfg.stateDir)
	if err != nil {
		return fmt.Errorf("credentials: %w", err)
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

	api, err := startAPIServer(compCtx, cfg, creds, etcdURL)
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
		if kwok != nil {
			kwok.stop(10 * time.Second)
			kwok = nil
		}
	}
	defer stopKwok()

	readyCtx, cancelReady := context.WithTimeout(ctx, cfg.readyWait)
	err = waitClusterReady(readyCtx, client, cfg, api.errCh, kwok)
	cancelReady()
	if err != nil {
		return fmt.Errorf("cluster not ready: %w", err)
	}
	if err := os.WriteFile(readyFile, fmt.Appendf(nil, "pid=%d\nkubeconfig=%s\nserver=%s\n", os.Getpid(), kubeconfig, api.url), 0o600); err != nil {
		return err
	}
	klog.InfoS("kubeenv ready", "kubeconfig", kubeconfig)

	var runErr error
	select {
	case <-ctx.Done():
		klog.Info("shutting down")
	case err := <-api.errCh:
		runErr = fmt.Errorf("kube-apiserver exited: %w", err)
	case <-kwokExited(kwok):
		runErr = errors.New("kwok exited unexpectedly")
	}
	_ = os.Remove(readyFile)
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
