package main

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/pflag"

	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
	"k8s.io/kubernetes/cmd/kube-apiserver/app/options"
)

func init() {
	// Three components share this process; like Kubernetes' own test servers, let the
	// second and third ignore the logging configuration the first one applied.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	// The loopback clients of the components would otherwise print every API warning.
	rest.SetDefaultWarningHandler(rest.NoWarnings{})
}

// serviceCIDR holds the virtual Service IPs. Without real nodes nothing routes them (there
// is no kube-proxy), so they sit in 127.0.0.0/8 where even a stray connection stays on
// loopback; with real nodes kube-proxy serves them from a pod can reach (realnode.go).
func serviceCIDR(cfg config) string {
	if cfg.realNodes > 0 {
		return realServiceCIDR
	}
	return "127.96.0.0/16"
}

type apiServer struct {
	url     string
	caPEM   []byte
	caFile  string
	errCh   chan error    // receives an error if the server exits on its own
	stopped chan struct{} // closed once the server has returned
}

// startAPIServer configures kube-apiserver the way cmd/kube-apiserver/app/testing does,
// but with RBAC, a static admin token, ServiceAccount token signing and state kept in
// the state dir, and runs it until ctx is cancelled.
func startAPIServer(ctx context.Context, cfg config, creds credentials, pki nodePKI, etcdURL string) (*apiServer, error) {
	s := options.NewServerRunOptions()
	fs := pflag.NewFlagSet("kube-apiserver", pflag.ContinueOnError)
	for _, f := range s.Flags().FlagSets {
		fs.AddFlagSet(f)
	}
	certDir := filepath.Join(cfg.stateDir, "pki", "serving")
	args := []string{
		"--bind-address=127.0.0.1",
		"--cert-dir=" + certDir,
		"--etcd-servers=" + etcdURL,
		"--authorization-mode=RBAC",
		"--token-auth-file=" + creds.tokenFile,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + creds.saKeyFile,
		"--service-account-signing-key-file=" + creds.saKeyFile,
		"--api-audiences=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + serviceCIDR(cfg),
		"--allow-privileged=true",
		"--profiling=false",
		// Reach kubelets (logs, exec) by their InternalIP only (loopback for kwok's, a bridge
		// address for real ones): the default prefers the node's Hostname, which would send a
		// DNS query off the machine.
		"--kubelet-preferred-address-types=InternalIP",
		"--enable-priority-and-fairness=false",
		// Real kubelets: verify them with the node CA, show them the apiserver's client certificate.
		"--kubelet-certificate-authority=" + pki.caFile,
		"--kubelet-client-certificate=" + pki.clientCert,
		"--kubelet-client-key=" + pki.clientKey,
	}
	if cfg.realNodes > 0 {
		// Pods reach the API through the `kubernetes` Service: its endpoint is the first node's
		// address, where a forwarder passes connections to the loopback listener.
		args = append(args, "--advertise-address="+realNodesOf(cfg)[0].ip, "--endpoint-reconciler-type=lease")
	} else {
		args = append(args, "--endpoint-reconciler-type=none")
	}
	// Extra flags from --apiserver-arg (hack/kubeenv: KUBEENV_APISERVER_ARGS) come last and win,
	// e.g. --enable-priority-and-fairness=true or --watch-cache=false for the fault tests.
	args = append(args, cfg.apiserverArgs...)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}

	var err error
	addr := fmt.Sprintf("127.0.0.1:%d", cfg.port)
	s.SecureServing.Listener, err = net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	tcpAddr := s.SecureServing.Listener.Addr().(*net.TCPAddr)
	s.SecureServing.BindPort = tcpAddr.Port
	if cfg.realNodes > 0 {
		nodeAddr := net.JoinHostPort(realNodesOf(cfg)[0].ip, fmt.Sprint(tcpAddr.Port))
		if err := forwardTCP(ctx, nodeAddr, tcpAddr.String()); err != nil {
			return nil, err
		}
		if err := allowPodPort(tcpAddr.Port); err != nil {
			return nil, err
		}
	}
	// Loopback, as the test servers do; with real nodes --advertise-address says the node's.
	s.SecureServing.ExternalAddress = tcpAddr.IP

	if err := s.GenericServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return nil, err
	}
	completed, err := s.Complete(ctx)
	if err != nil {
		return nil, fmt.Errorf("complete options: %w", err)
	}
	if errs := completed.Validate(); len(errs) != 0 {
		return nil, fmt.Errorf("validate options: %w", utilerrors.NewAggregate(errs))
	}
	apiCfg, err := app.NewConfig(completed)
	if err != nil {
		return nil, err
	}
	completedCfg, err := apiCfg.Complete()
	if err != nil {
		return nil, err
	}
	server, err := app.CreateServerChain(completedCfg)
	if err != nil {
		return nil, fmt.Errorf("create server chain: %w", err)
	}
	prepared, err := server.PrepareRun()
	if err != nil {
		return nil, err
	}

	caFile := filepath.Join(cfg.stateDir, "pki", "ca.crt")
	caPEM, err := extractCA(filepath.Join(certDir, "apiserver.crt"), caFile)
	if err != nil {
		return nil, fmt.Errorf("serving CA: %w", err)
	}
	a := &apiServer{
		url:     fmt.Sprintf("https://127.0.0.1:%d", tcpAddr.Port),
		caPEM:   caPEM,
		caFile:  caFile,
		errCh:   make(chan error, 1),
		stopped: make(chan struct{}),
	}
	go func() {
		defer close(a.stopped)
		if err := prepared.Run(ctx); err != nil {
			a.errCh <- err
		} else if ctx.Err() == nil {
			a.errCh <- fmt.Errorf("exited without error")
		}
	}()
	return a, nil
}

// waitAPIServerReady polls /readyz until every check passes.
func waitAPIServerReady(ctx context.Context, client kubernetes.Interface, errCh <-chan error) error {
	var last string
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		select {
		case err := <-errCh:
			return false, err
		default:
		}
		body, err := client.CoreV1().RESTClient().Get().AbsPath("/readyz").Param("verbose", "1").DoRaw(ctx)
		if err != nil {
			last = strings.TrimSpace(string(body)) + " " + err.Error()
			return false, nil
		}
		return true, nil
	})
	if err != nil && last != "" {
		return fmt.Errorf("%w (last /readyz: %s)", err, last)
	}
	return err
}

// extractCA writes the CA certificates of the self-signed serving bundle (leaf first,
// then its CA) to caFile: the root CA file and ClusterTrustBundle must hold CAs only.
func extractCA(bundleFile, caFile string) ([]byte, error) {
	data, err := os.ReadFile(bundleFile)
	if err != nil {
		return nil, err
	}
	var out []byte
	for rest := data; ; {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		if c.IsCA {
			out = append(out, pem.EncodeToMemory(block)...)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no CA certificate in %s", bundleFile)
	}
	return out, os.WriteFile(caFile, out, 0o600)
}
