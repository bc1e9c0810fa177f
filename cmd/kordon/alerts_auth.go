package main

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/pflag"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"k8s.io/client-go/tools/clientcmd"
)

// feedClientFlags are how kordon alerts authenticates to a controller's
// feed: a bearer token (flag, file or the kubeconfig's), and the trust
// bundle that verifies the controller's SVID.
type feedClientFlags struct {
	token, tokenFile, caFile, kubeconfig, serverID string
}

func (c *feedClientFlags) register(fl *pflag.FlagSet) {
	fl.StringVar(&c.token, "token", "", "bearer token for the controller's feed (default: --token-file, else the kubeconfig's token)")
	fl.StringVar(&c.tokenFile, "token-file", "", "file holding the bearer token")
	fl.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig whose current user's token is sent when neither --token nor --token-file is given (default: $KUBECONFIG, ~/.kube/config)")
	fl.StringVar(&c.caFile, "ca-file", "", "PEM trust bundle verifying the controller's SVID (kubectl -n kordon-system get configmap kordon-trust-bundle -o jsonpath='{.data.bundle\\.pem}')")
	fl.StringVar(&c.serverID, "server-spiffe-id", "spiffe://cluster.local/ns/kordon-system/sa/kordon-controller", "SPIFFE ID the feed's certificate must carry (with --ca-file)")
}

// httpClient trusts --ca-file's roots for the controller's SPIFFE ID
// (its SVID has no DNS name, so the usual hostname check cannot apply),
// or the system roots without it.
func (c *feedClientFlags) httpClient() (*http.Client, error) {
	if c.caFile == "" {
		return &http.Client{}, nil
	}
	id, err := spiffeid.FromString(c.serverID)
	if err != nil {
		return nil, fmt.Errorf("--server-spiffe-id: %w", err)
	}
	data, err := os.ReadFile(c.caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	var roots []*x509.Certificate
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("--ca-file %s: %w", c.caFile, err)
		}
		roots = append(roots, cert)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("--ca-file %s: no PEM certificates", c.caFile)
	}
	cfg := tlsconfig.TLSClientConfig(x509bundle.FromX509Authorities(id.TrustDomain(), roots), tlsconfig.AuthorizeID(id))
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}, nil
}

// bearer returns the token to send to server, "" for none. The
// kubeconfig's token, a credential for the API server, is sent only over
// https, never in the clear to a dev-mode http address.
func (c *feedClientFlags) bearer(server string) (string, error) {
	switch {
	case c.token != "":
		return c.token, nil
	case c.tokenFile != "":
		b, err := os.ReadFile(c.tokenFile)
		if err != nil {
			return "", fmt.Errorf("--token-file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	case !strings.HasPrefix(server, "https://"):
		return "", nil
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = c.kubeconfig
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{}).ClientConfig()
	if err != nil {
		if c.kubeconfig == "" && clientcmd.IsEmptyConfig(err) {
			return "", nil // no kubeconfig at all: send no token
		}
		return "", fmt.Errorf("--kubeconfig: %w", err)
	}
	if cfg.BearerToken != "" {
		return cfg.BearerToken, nil
	}
	if cfg.BearerTokenFile != "" {
		b, err := os.ReadFile(cfg.BearerTokenFile)
		if err != nil {
			return "", fmt.Errorf("kubeconfig token file: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	}
	if c.kubeconfig != "" {
		return "", errors.New("--kubeconfig: the current user has no bearer token (exec and auth-provider plugins are not run: pass --token)")
	}
	return "", nil
}
