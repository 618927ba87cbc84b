package main

import (
	_ "embed"
	"os"
	"path/filepath"
)

//go:embed kwok-stages.yaml
var kwokStages []byte

// startKwok runs kwok as the kubelet of the fake nodes. Pod IPs outside a node's podCIDR
// and the fallback node IP are loopback addresses too.
func startKwok(cfg config, kubeconfig string) (*childProcess, error) {
	cfgPath := filepath.Join(cfg.stateDir, "kwok.yaml")
	if err := os.WriteFile(cfgPath, kwokStages, 0o600); err != nil {
		return nil, err
	}
	return startChild(cfg.stateDir, "kwok", nil, cfg.kwokPath,
		"--kubeconfig="+kubeconfig,
		"--config="+cfgPath,
		"--manage-nodes-with-annotation-selector="+nodeManagedAnnotation+"=fake",
		"--node-ip=127.0.1.254",
		"--cidr=127.65.0.1/16",
	)
}
