// Package e2e holds kordon's end-to-end tests against a real
// kube-apiserver and etcd (built from the Go module proxy by
// hack/e2e-bins.sh) and real DNS and gRPC clients. Cluster starts and
// stops the control plane on loopback.
package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/rest"
)

// Cluster is a running etcd + kube-apiserver.
type Cluster struct {
	Dir        string
	URL        string
	AdminToken string
	procs      []*exec.Cmd
}

// BinDir is where hack/e2e-bins.sh puts the binaries; KORDON_E2E_BIN
// overrides it.
func BinDir() string {
	if d := os.Getenv("KORDON_E2E_BIN"); d != "" {
		return d
	}
	gopath, err := exec.Command("go", "env", "GOPATH").Output()
	if err != nil {
		return ""
	}
	return filepath.Join(string(trimNL(gopath)), "kordon-cache", "e2e-bin", "k8s-v1.34.4-etcd-v3.6.16")
}

func trimNL(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == '\n' || b[len(b)-1] == '\r') {
		b = b[:len(b)-1]
	}
	return b
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartCluster starts etcd and kube-apiserver with binaries from binDir,
// state in dir, and waits until the API server is ready.
func StartCluster(ctx context.Context, binDir, dir string, logs *os.File) (*Cluster, error) {
	c := &Cluster{Dir: dir, AdminToken: "kordon-e2e-admin"}
	etcdPort, err := freePort()
	if err != nil {
		return nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return nil, err
	}
	apiPort, err := freePort()
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	etcd := exec.Command(filepath.Join(binDir, "etcd"),
		"--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-advertise-peer-urls", "http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--initial-cluster", "default=http://127.0.0.1:"+strconv.Itoa(peerPort),
		"--unsafe-no-fsync", "--log-level", "error")
	etcd.Stdout, etcd.Stderr = logs, logs
	if err := etcd.Start(); err != nil {
		return nil, fmt.Errorf("e2e: start etcd: %w", err)
	}
	c.procs = append(c.procs, etcd)

	// Service-account signing key and a static admin token.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		c.Stop()
		return nil, err
	}
	der, _ := x509.MarshalECPrivateKey(key)
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)
	saKey, saPub := filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	tokens := filepath.Join(dir, "tokens.csv")
	for path, data := range map[string][]byte{
		saKey:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}),
		saPub:  pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		tokens: []byte(c.AdminToken + `,admin,admin,"system:masters"` + "\n"),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			c.Stop()
			return nil, err
		}
	}
	api := exec.Command(filepath.Join(binDir, "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
		"--secure-port", strconv.Itoa(apiPort),
		"--cert-dir", filepath.Join(dir, "certs"),
		"--token-auth-file", tokens,
		"--authorization-mode", "Node,RBAC",
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file", saPub,
		"--service-account-signing-key-file", saKey,
		"--service-cluster-ip-range", "10.96.0.0/16",
		"--endpoint-reconciler-type", "none",
		"--enable-priority-and-fairness=false",
		"--disable-admission-plugins", "ServiceAccount",
		// As kubeadm, kind and managed clusters run it: node agents of
		// CNIs and of kordon (its init container) are privileged.
		"--allow-privileged=true",
		"--v", "0")
	api.Stdout, api.Stderr = logs, logs
	if err := api.Start(); err != nil {
		c.Stop()
		return nil, fmt.Errorf("e2e: start kube-apiserver: %w", err)
	}
	c.procs = append(c.procs, api)
	c.URL = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	if err := c.waitReady(ctx); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *Cluster) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // self-signed test apiserver
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+c.AdminToken)
		resp, err := client.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		for _, p := range c.procs {
			if p.ProcessState != nil {
				return errors.New("e2e: a control-plane process exited")
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond): // polling readiness, bounded by the deadline
		}
	}
	return errors.New("e2e: kube-apiserver not ready within 90s")
}

// Config is an admin rest.Config.
func (c *Cluster) Config() *rest.Config {
	return c.ConfigForToken(c.AdminToken)
}

// ConfigForToken is a rest.Config authenticating with a bearer token.
func (c *Cluster) ConfigForToken(token string) *rest.Config {
	return &rest.Config{Host: c.URL, BearerToken: token, TLSClientConfig: rest.TLSClientConfig{Insecure: true}, QPS: 100, Burst: 200}
}

// Stop kills the processes, apiserver first.
func (c *Cluster) Stop() {
	for i := len(c.procs) - 1; i >= 0; i-- {
		p := c.procs[i]
		if p.Process != nil {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
	}
	c.procs = nil
}
