package main

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// controllerHook is the webhook forwarding this node's alerts to the
// controller's feed at feedURL. Over https the agent presents its own
// SVID (kordon-node, signed through the issuance API with its token) and
// accepts only the controller's SVID from the published trust bundle:
// the controller takes alerts only from node agents.
func (w *workloadAPIFlags) controllerHook(ctx context.Context, clients *kube.Clients, feedURL string) alert.WebhookConfig {
	hook := alert.WebhookConfig{Name: "controller", URL: strings.TrimSuffix(feedURL, "/") + "/v1/alerts"}
	if !strings.HasPrefix(feedURL, "https://") {
		return hook
	}
	bundles := &bundleSource{ctx: ctx, clients: clients, namespace: w.namespace}
	svid := &agentSVID{ctx: ctx, w: w, clients: clients, bundles: bundles}
	ctrlPath := "/ns/" + w.namespace + "/sa/kordon-controller"
	cfg := tlsconfig.MTLSClientConfig(svid, bundles, func(id spiffeid.ID, _ [][]*x509.Certificate) error {
		// The chain was verified against this trust domain's bundle.
		if id.Path() != ctrlPath {
			return fmt.Errorf("feed server is %s, not the controller", id)
		}
		return nil
	})
	hook.Client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	return hook
}

// bundleSource reads the published trust bundle at each handshake, so a
// rotated root is trusted as soon as the controller publishes it.
type bundleSource struct {
	ctx       context.Context
	clients   *kube.Clients
	namespace string
}

func (b *bundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	sb, err := kube.ReadBundle(ctx, b.clients.Kube, b.namespace)
	if err != nil {
		return nil, err
	}
	return sb.GetX509BundleForTrustDomain(td)
}

// agentSVID dials the issuance API on first use (the trust domain comes
// from the published bundle, which may not exist yet when the agent
// starts) and then serves identity.SelfSVID.
type agentSVID struct {
	ctx     context.Context
	w       *workloadAPIFlags
	clients *kube.Clients
	bundles *bundleSource

	mu   sync.Mutex
	self *identity.SelfSVID
}

func (a *agentSVID) GetX509SVID() (*x509svid.SVID, error) {
	a.mu.Lock()
	if a.self == nil {
		ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
		b, err := kube.ReadBundle(ctx, a.clients.Kube, a.w.namespace)
		cancel()
		if err != nil {
			a.mu.Unlock()
			return nil, fmt.Errorf("trust bundle: %w", err)
		}
		client, err := a.w.dialIssuance(a.ctx, a.clients, b.TrustDomain())
		if err != nil {
			a.mu.Unlock()
			return nil, err
		}
		context.AfterFunc(a.ctx, func() { client.Close() })
		a.self = &identity.SelfSVID{Client: client}
	}
	self := a.self
	a.mu.Unlock()
	return self.GetX509SVID()
}
