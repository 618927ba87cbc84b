package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/coredns/coredns/coremain"
	"k8s.io/component-base/cli"
	proxyapp "k8s.io/kubernetes/cmd/kube-proxy/app"
	kubeletapp "k8s.io/kubernetes/cmd/kubelet/app"

	// The CoreDNS plugins the real nodes' DNS uses; nothing that forwards or resolves elsewhere.
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
)

// runKubelet is `kubelet` from k8s.io/kubernetes, as cmd/kubelet's main runs it.
func runKubelet(args []string) int {
	cmd := kubeletapp.NewKubeletCommand(context.Background())
	cmd.SetArgs(args)
	return cli.Run(cmd)
}

// runKubeProxy is `kube-proxy` from k8s.io/kubernetes, as cmd/kube-proxy's main runs it.
func runKubeProxy(args []string) int {
	cmd := proxyapp.NewProxyCommand()
	cmd.SetArgs(args)
	return cli.Run(cmd)
}

// runCoreDNS is CoreDNS's own main with the plugins imported above.
func runCoreDNS(args []string) int {
	os.Args = append([]string{os.Args[0]}, args...)
	coremain.Run()
	return 0
}

// runCleanup removes what the real nodes of a state dir left on the host after a crash.
func runCleanup(args []string) int {
	fs := flag.NewFlagSet("cleanup", flag.ContinueOnError)
	stateDir := fs.String("state-dir", "", "the state dir of the kubeenv to clean up after")
	if err := fs.Parse(args); err != nil || *stateDir == "" {
		fmt.Fprintln(os.Stderr, "usage: kubeenv cleanup --state-dir=DIR")
		return 2
	}
	abs, err := filepath.Abs(*stateDir)
	if err == nil {
		// Cleanup is machine-wide (bridges, cgroups, tables): never while another kubeenv's real
		// nodes run. The lock a crashed control plane left is free, and removed here.
		var lock *os.File
		if lock, err = lockMachine(abs); err == nil {
			err = cleanupHost(abs)
			unlockMachine(lock)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "cleanup:", err)
		return 1
	}
	return 0
}
