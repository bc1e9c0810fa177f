package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/kordon-dev/kordon/identity"
)

// CAIdentities serves SDS from kordon's CA: each SVID gets a fresh P-256
// key signed by CA; the trust bundles are the CA's plus Federated.
type CAIdentities struct {
	CA *identity.CA
	// TTL of the SVIDs (0: the CA's default).
	TTL time.Duration
	// Federated returns the PEM bundles of other trusted trust domains,
	// keyed by trust domain (nil: none).
	Federated func() map[string][]byte
}

var _ Identities = (*CAIdentities)(nil)

// SVID implements Identities.
func (c *CAIdentities) SVID(_ context.Context, id string) (SVID, error) {
	if c.CA == nil {
		return SVID{}, errors.New("xds: CAIdentities has no CA")
	}
	sid, err := spiffeid.FromString(id)
	if err != nil {
		return SVID{}, fmt.Errorf("xds: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return SVID{}, fmt.Errorf("xds: %w", err)
	}
	svid, err := c.CA.SignPublicKey(&key.PublicKey, sid, c.TTL)
	if err != nil {
		return SVID{}, fmt.Errorf("xds: sign %s: %w", id, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return SVID{}, fmt.Errorf("xds: %w", err)
	}
	leaf := svid.Chain[0]
	return SVID{
		CertChainPEM: svid.ChainPEM(),
		KeyPEM:       pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
		NotBefore:    leaf.NotBefore,
		NotAfter:     leaf.NotAfter,
	}, nil
}

// TrustBundles implements Identities.
func (c *CAIdentities) TrustBundles() map[string][]byte {
	out := map[string][]byte{}
	if c.Federated != nil {
		for td, b := range c.Federated() {
			out[td] = b
		}
	}
	// The mesh's own bundle always comes from the CA: a federation entry
	// cannot replace it.
	out[c.CA.TrustDomain().Name()] = c.CA.BundlePEM()
	return out
}
