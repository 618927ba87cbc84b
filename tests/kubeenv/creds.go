package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// credentials are created once per state dir and reused on restart.
type credentials struct {
	adminToken string
	nodeTokens map[string]string // real node name -> token of user system:node:<name> (group system:nodes)
	tokenFile  string            // static token file: the admin user in system:masters, the real nodes
	saKeyFile  string            // ECDSA key signing and verifying ServiceAccount tokens
}

const adminUser = "kubeenv-admin"

func ensureCredentials(stateDir string, realNodes []string) (credentials, error) {
	pki := filepath.Join(stateDir, "pki")
	c := credentials{tokenFile: filepath.Join(pki, "tokens.csv"), saKeyFile: filepath.Join(pki, "sa.key"), nodeTokens: map[string]string{}}

	if data, err := os.ReadFile(c.tokenFile); err == nil {
		for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
			f := strings.SplitN(line, ",", 3)
			if len(f) < 2 {
				continue
			}
			if f[1] == adminUser {
				c.adminToken = f[0]
			} else {
				c.nodeTokens[strings.TrimPrefix(f[1], "system:node:")] = f[0]
			}
		}
	} else if errors.Is(err, os.ErrNotExist) {
		var lines strings.Builder
		if c.adminToken, err = randomToken(); err != nil {
			return c, err
		}
		fmt.Fprintf(&lines, "%s,%s,%s,\"system:masters\"\n", c.adminToken, adminUser, adminUser)
		for _, name := range realNodes {
			if c.nodeTokens[name], err = randomToken(); err != nil {
				return c, err
			}
			fmt.Fprintf(&lines, "%s,system:node:%s,system:node:%s,\"system:nodes\"\n", c.nodeTokens[name], name, name)
		}
		if err := os.WriteFile(c.tokenFile, []byte(lines.String()), 0o600); err != nil {
			return c, err
		}
	} else {
		return c, err
	}

	if _, err := os.Stat(c.saKeyFile); errors.Is(err, os.ErrNotExist) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return c, err
		}
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return c, err
		}
		pemBytes := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
		if err := os.WriteFile(c.saKeyFile, pemBytes, 0o600); err != nil {
			return c, err
		}
	} else if err != nil {
		return c, err
	}
	return c, nil
}

// writeKubeconfig writes the admin kubeconfig used by tests, kwok and the controllers.
func writeKubeconfig(path, server string, caPEM []byte, token string) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kubeenv"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: caPEM}
	cfg.AuthInfos["kubeenv"] = &clientcmdapi.AuthInfo{Token: token}
	cfg.Contexts["kubeenv"] = &clientcmdapi.Context{Cluster: "kubeenv", AuthInfo: "kubeenv", Namespace: "default"}
	cfg.CurrentContext = "kubeenv"
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func randomToken() (string, error) {
	buf := make([]byte, 32)
	if _, err := rand.Read(buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(buf), nil
}

func adminClient(kubeconfig string) (kubernetes.Interface, *rest.Config, error) {
	restCfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, nil, err
	}
	restCfg.QPS, restCfg.Burst = 100, 200
	client, err := kubernetes.NewForConfig(restCfg)
	return client, restCfg, err
}
