// Package identity is kordon's SPIFFE identity provider: a CA that signs
// X.509-SVIDs and JWT-SVIDs for spiffe://<trust-domain>/ns/<ns>/sa/<sa>,
// with persisted, rotatable roots and federation-ready bundles; the
// attested issuance API the node agents call; and the SPIFFE Workload API
// served to pods.
package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults.
const (
	DefaultSVIDTTL = time.Hour
	DefaultCATTL   = 30 * 24 * time.Hour
	// backdate tolerates clock skew between the CA and verifiers.
	backdate = 30 * time.Second
)

// Config configures a CA.
type Config struct {
	// TrustDomain, e.g. "cluster.local".
	TrustDomain string
	// Store persists the CA state. Required.
	Store Store
	// CATTL is the lifetime of self-signed roots (default 30 days).
	CATTL time.Duration
	// SVIDTTL is the default X.509-SVID lifetime (default 1h).
	SVIDTTL time.Duration
	// UpstreamCert and UpstreamKey, when set, make this CA an intermediate
	// signed by an existing PKI (cert-manager, an enterprise root) instead
	// of a self-signed root. The upstream chain's root goes in the bundle.
	UpstreamCert []*x509.Certificate
	UpstreamKey  crypto.Signer
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Logger (default slog.Default()).
	Logger *slog.Logger
}

// CA signs SVIDs. It is safe for concurrent use.
type CA struct {
	cfg Config
	td  spiffeid.TrustDomain
	log *slog.Logger

	rotateMu sync.Mutex // serialises Rotate
	mu       sync.RWMutex
	state    *State
	version  string
	active   *authority
	all      []*authority
}

// authority is a parsed State.Authorities entry.
type authority struct {
	cert   *x509.Certificate
	chain  []*x509.Certificate // cert, then intermediates up to (not incl.) the root
	root   *x509.Certificate   // what goes in the bundle
	key    crypto.Signer
	retire time.Time // zero while active; then when it may leave the bundle
}

// Errors with stable texts, asserted in tests.
var (
	ErrNoStore = errors.New("identity: Config.Store is required")
)

// New loads the CA state from the store or, if there is none, creates a
// root. When two replicas race to create, one Create fails with ErrExists
// and that replica loads the winner's root, so a cluster never has two.
func New(ctx context.Context, cfg Config) (*CA, error) {
	if cfg.Store == nil {
		return nil, ErrNoStore
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = "cluster.local"
	}
	td, err := spiffeid.TrustDomainFromString(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("identity: trust domain: %w", err)
	}
	if cfg.CATTL <= 0 {
		cfg.CATTL = DefaultCATTL
	}
	if cfg.SVIDTTL <= 0 {
		cfg.SVIDTTL = DefaultSVIDTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if (cfg.UpstreamKey == nil) != (len(cfg.UpstreamCert) == 0) {
		return nil, errors.New("identity: UpstreamCert and UpstreamKey must be set together")
	}
	ca := &CA{cfg: cfg, td: td, log: cfg.Logger}
	for attempt := 0; attempt < 3; attempt++ {
		st, ver, err := cfg.Store.Load(ctx)
		if err == nil {
			if err := ca.adopt(st, ver); err != nil {
				return nil, err
			}
			return ca, nil
		}
		if !errors.Is(err, ErrNotFound) {
			return nil, fmt.Errorf("identity: load CA state: %w", err)
		}
		a, err := ca.newAuthority()
		if err != nil {
			return nil, err
		}
		st = &State{TrustDomain: td.Name(), Authorities: []StoredAuthority{a}}
		err = cfg.Store.Create(ctx, st)
		if errors.Is(err, ErrExists) {
			continue // another replica won: load its root
		}
		if err != nil {
			return nil, fmt.Errorf("identity: create CA state: %w", err)
		}
		ca.log.Info("created CA", "trust_domain", td.Name())
	}
	st, ver, err := cfg.Store.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("identity: load CA state: %w", err)
	}
	if err := ca.adopt(st, ver); err != nil {
		return nil, err
	}
	return ca, nil
}

// TrustDomain is the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// newAuthority makes a new signing key and certificate: a self-signed
// root, or an intermediate under the upstream PKI.
func (ca *CA) newAuthority() (StoredAuthority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return StoredAuthority{}, err
	}
	now := ca.cfg.Now()
	serial, err := randomSerial()
	if err != nil {
		return StoredAuthority{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"kordon"}, CommonName: "kordon CA " + ca.td.Name()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ca.cfg.CATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		URIs:                  []*url.URL{ca.td.ID().URL()},
	}
	parent, signer := tmpl, crypto.Signer(key)
	var chain []*x509.Certificate
	if ca.cfg.UpstreamKey != nil {
		parent, signer = ca.cfg.UpstreamCert[0], ca.cfg.UpstreamKey
		// Why: an intermediate cannot outlive its issuer.
		if tmpl.NotAfter.After(parent.NotAfter) {
			tmpl.NotAfter = parent.NotAfter
		}
		tmpl.MaxPathLen = 0
		tmpl.MaxPathLenZero = true
		chain = ca.cfg.UpstreamCert
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		return StoredAuthority{}, fmt.Errorf("identity: sign CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return StoredAuthority{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	for _, c := range chain {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return StoredAuthority{CertPEM: string(certPEM), KeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))}, nil
}

// adopt parses a stored state and makes it current.
func (ca *CA) adopt(st *State, version string) error {
	if st.TrustDomain != ca.td.Name() {
		return fmt.Errorf("identity: stored CA is for trust domain %q, configured %q", st.TrustDomain, ca.td.Name())
	}
	var all []*authority
	var active *authority
	for i, sa := range st.Authorities {
		a, err := parseAuthority(sa)
		if err != nil {
			return fmt.Errorf("identity: stored authority %d: %w", i, err)
		}
		all = append(all, a)
		if a.retire.IsZero() {
			active = a
		}
	}
	if active == nil {
		return errors.New("identity: stored CA state has no active authority")
	}
	ca.mu.Lock()
	ca.state, ca.version, ca.all, ca.active = st, version, all, active
	ca.mu.Unlock()
	return nil
}

func parseAuthority(sa StoredAuthority) (*authority, error) {
	certs, err := parsePEMCerts([]byte(sa.CertPEM))
	if err != nil {
		return nil, err
	}
	kb, _ := pem.Decode([]byte(sa.KeyPEM))
	if kb == nil {
		return nil, errors.New("no private key")
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("private key cannot sign")
	}
	a := &authority{cert: certs[0], chain: certs, key: signer, retire: sa.RetireAfter}
	a.root = certs[len(certs)-1]
	return a, nil
}

// Rotate makes a new authority active. The previous one stays in the
// bundle until every SVID it signed has expired (its retire time is the
// latest NotAfter it could have issued), so verifiers never see a gap.
func (ca *CA) Rotate(ctx context.Context) error {
	ca.rotateMu.Lock()
	defer ca.rotateMu.Unlock()
	na, err := ca.newAuthority()
	if err != nil {
		return err
	}
	now := ca.cfg.Now()
	ca.mu.RLock()
	st := &State{TrustDomain: ca.state.TrustDomain}
	for i, a := range ca.all {
		sa := ca.state.Authorities[i]
		if a == ca.active {
			// Why: an SVID signed just before rotation lives at most the
			// longest TTL we grant, and never past the CA's NotAfter.
			sa.RetireAfter = minTime(now.Add(ca.maxTTL()), a.cert.NotAfter)
		}
		if !sa.RetireAfter.IsZero() && now.After(sa.RetireAfter) {
			continue // every SVID it signed has expired: drop it
		}
		st.Authorities = append(st.Authorities, sa)
	}
	st.Authorities = append(st.Authorities, na)
	version := ca.version
	ca.mu.RUnlock()
	ver, err := ca.cfg.Store.Update(ctx, st, version)
	if err != nil {
		return fmt.Errorf("identity: store rotated CA: %w", err)
	}
	if err := ca.adopt(st, ver); err != nil {
		return err
	}
	ca.log.Info("rotated CA", "trust_domain", ca.td.Name())
	return nil
}

// Reload re-reads the store (another replica may have rotated).
func (ca *CA) Reload(ctx context.Context) error {
	st, ver, err := ca.cfg.Store.Load(ctx)
	if err != nil {
		return fmt.Errorf("identity: reload CA state: %w", err)
	}
	return ca.adopt(st, ver)
}

// maxTTL is the longest SVID lifetime this CA hands out.
func (ca *CA) maxTTL() time.Duration { return max(ca.cfg.SVIDTTL, MaxSVIDTTL) }

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// ActiveCertificate returns the certificate currently signing.
func (ca *CA) ActiveCertificate() *x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.active.cert
}

// Roots returns every root in the bundle (active and retiring).
func (ca *CA) Roots() []*x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	seen := map[string]bool{}
	var out []*x509.Certificate
	for _, a := range ca.all {
		if !seen[string(a.root.Raw)] {
			seen[string(a.root.Raw)] = true
			out = append(out, a.root)
		}
	}
	return out
}

// X509Bundle is the trust bundle for this trust domain.
func (ca *CA) X509Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, ca.Roots())
}

// BundlePEM is the trust bundle as concatenated PEM certificates.
func (ca *CA) BundlePEM() []byte {
	var out []byte
	for _, c := range ca.Roots() {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// SPIFFEBundle is the federation bundle (X.509 roots and JWT keys), whose
// Marshal gives the SPIFFE bundle format (JWKS).
func (ca *CA) SPIFFEBundle() *spiffebundle.Bundle {
	b := spiffebundle.New(ca.td)
	b.SetX509Authorities(ca.Roots())
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	for _, a := range ca.all {
		_ = b.AddJWTAuthority(jwtKeyID(a.cert), a.key.Public())
	}
	b.SetRefreshHint(5 * time.Minute)
	return b
}

func randomSerial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}
