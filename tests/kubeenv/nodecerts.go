package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// nodePKI is the node CA and what it signed: each kubelet's serving certificate (so the
// apiserver verifies the kubelet it reaches for logs and exec) and the apiserver's client
// certificate for kubelets (a kubelet authenticates nothing else: no anonymous access, no
// bearer tokens, so a pod's ServiceAccount token gets nowhere there).
type nodePKI struct {
	caFile, clientCert, clientKey string
	kubeletCert, kubeletKey       map[string]string
}

// kubeletClientGroup lets the apiserver's client certificate pass the kubelets' webhook
// authorization (the RBAC superuser group); only the apiserver holds its key.
const kubeletClientGroup = "system:masters"

func ensureNodePKI(stateDir string, nodes []realNode) (nodePKI, error) {
	dir := filepath.Join(stateDir, "pki", "nodes")
	p := nodePKI{
		caFile:      filepath.Join(dir, "ca.crt"),
		clientCert:  filepath.Join(dir, "apiserver-kubelet-client.crt"),
		clientKey:   filepath.Join(dir, "apiserver-kubelet-client.key"),
		kubeletCert: map[string]string{},
		kubeletKey:  map[string]string{},
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return p, err
	}
	caKey, err := newKey()
	if err != nil {
		return p, err
	}
	caTmpl := certTemplate("kubeenv-node-ca")
	caTmpl.IsCA, caTmpl.BasicConstraintsValid = true, true
	caTmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return p, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return p, err
	}
	if err := writePEM(p.caFile, "CERTIFICATE", caDER); err != nil {
		return p, err
	}

	client := certTemplate("kubeenv-apiserver-kubelet-client")
	client.Subject.Organization = []string{kubeletClientGroup}
	client.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	if err := issue(client, ca, caKey, p.clientCert, p.clientKey); err != nil {
		return p, err
	}
	for _, n := range nodes {
		serving := certTemplate("system:node:" + n.name)
		serving.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		serving.DNSNames = []string{n.name}
		serving.IPAddresses = []net.IP{net.ParseIP(n.ip)}
		p.kubeletCert[n.name] = filepath.Join(dir, n.name+".crt")
		p.kubeletKey[n.name] = filepath.Join(dir, n.name+".key")
		if err := issue(serving, ca, caKey, p.kubeletCert[n.name], p.kubeletKey[n.name]); err != nil {
			return p, err
		}
	}
	return p, nil
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func certTemplate(cn string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(365 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
}

// issue signs tmpl with the CA and writes the certificate and a fresh key.
func issue(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey, certFile, keyFile string) error {
	key, err := newKey()
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(certFile, "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(keyFile, "EC PRIVATE KEY", keyDER)
}

func writePEM(path, kind string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}
