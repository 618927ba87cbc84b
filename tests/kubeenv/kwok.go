package main

import (
	_ "embed"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

//go:embed kwok-stages.yaml
var kwokStages []byte

// childProcess is a supervised child (kwok) that dies with us.
type childProcess struct {
	cmd    *exec.Cmd
	exited chan struct{}
}

// startKwok runs kwok as the kubelet of the fake nodes. Pod IPs outside a node's podCIDR
// and the fallback node IP are loopback addresses too.
func startKwok(cfg config, kubeconfig string) (*childProcess, error) {
	cfgPath := filepath.Join(cfg.stateDir, "kwok.yaml")
	if err := os.WriteFile(cfgPath, kwokStages, 0o600); err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(filepath.Join(cfg.stateDir, "kwok.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(cfg.kwokPath,
		"--kubeconfig="+kubeconfig,
		"--config="+cfgPath,
		"--manage-nodes-with-annotation-selector="+nodeManagedAnnotation+"=fake",
		"--node-ip=127.0.1.254",
		"--cidr=127.65.0.1/16",
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, err
	}
	c := &childProcess{cmd: cmd, exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		logFile.Close()
		klog.InfoS("kwok exited", "err", err)
		close(c.exited)
	}()
	return c, nil
}

// stop sends SIGTERM and waits, then SIGKILL after the timeout.
func (c *childProcess) stop(timeout time.Duration) {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// kwokExited returns a channel closed when kwok exits; nil (blocks forever) without kwok.
func kwokExited(c *childProcess) <-chan struct{} {
	if c == nil {
		return nil
	}
	return c.exited
}
