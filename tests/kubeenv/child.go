package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// childProcess is a supervised child (kwok, containerd, a kubelet, ...) that dies with us.
type childProcess struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// startChild runs argv with its output appended to <stateDir>/<name>.log. Pdeathsig makes
// the kernel stop it when we die, even by SIGKILL.
func startChild(stateDir, name string, env []string, argv ...string) (*childProcess, error) {
	logFile, err := os.OpenFile(filepath.Join(stateDir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if env != nil {
		cmd.Env = env
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &childProcess{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		logFile.Close()
		klog.InfoS("child exited", "name", name, "err", err)
		close(c.exited)
	}()
	return c, nil
}

// stop sends SIGTERM and waits, then SIGKILL after the timeout. A nil child is a no-op.
func (c *childProcess) stop(timeout time.Duration) {
	if c == nil {
		return
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(timeout):
		_ = c.cmd.Process.Kill()
		<-c.exited
	}
}

// done returns a channel closed when the child exits; nil (blocks forever) for no child.
func (c *childProcess) done() <-chan struct{} {
	if c == nil {
		return nil
	}
	return c.exited
}
