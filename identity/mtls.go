package identity

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ServerMTLS is ServerTLS that also verifies a client certificate when
// one is sent (tls.VerifyClientCertIfGiven) against the CA's current
// roots, read at each handshake so a rotated root is trusted at once:
// SVID callers find their chain in tls.ConnectionState.VerifiedChains,
// callers with a bearer token send no certificate.
func ServerMTLS(ca *CA, id spiffeid.ID) *tls.Config {
	base := ServerTLS(ca, id)
	return &tls.Config{
		MinVersion:     tls.VersionTLS13,
		GetCertificate: base.GetCertificate,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pool := x509.NewCertPool()
			for _, r := range ca.Roots() {
				pool.AddCert(r)
			}
			c := base.Clone() // shares base's GetCertificate and its cached SVID
			c.ClientAuth = tls.VerifyClientCertIfGiven
			c.ClientCAs = pool
			return c, nil
		},
	}
}

// SelfSVID is an x509svid.Source of the caller's own X.509-SVID, signed
// by the issuance API for the identity of the client's token (a node
// agent's mTLS identity towards the controller). It is renewed at
// half-life, the rule every other SVID holder follows.
type SelfSVID struct {
	Client *IssuanceClient
	// Now is the clock (default time.Now); Timeout bounds one issuance
	// call (default 10s).
	Now     func() time.Time
	Timeout time.Duration

	mu  sync.Mutex
	cur *x509svid.SVID
}

var _ x509svid.Source = (*SelfSVID)(nil)

// GetX509SVID implements x509svid.Source: the cached SVID before its
// renewal time, a new one after.
func (s *SelfSVID) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	if s.cur != nil && now().Before(RenewAt(s.cur.Certificates[0])) {
		return s.cur, nil
	}
	timeout := s.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, err
	}
	resp, err := s.Client.Sign(ctx, SignRequest{CSR: csr})
	if err != nil {
		if s.cur != nil && now().Before(s.cur.Certificates[0].NotAfter) {
			// Still valid: keep using it and retry at the next handshake.
			return s.cur, nil
		}
		return nil, fmt.Errorf("identity: own SVID: %w", err)
	}
	chain, err := parsePEMCerts([]byte(resp.ChainPEM))
	if err != nil {
		return nil, err
	}
	if len(chain) == 0 {
		return nil, errors.New("identity: own SVID: empty chain")
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return nil, fmt.Errorf("identity: own SVID: %w", err)
	}
	s.cur = &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}
	return s.cur, nil
}
