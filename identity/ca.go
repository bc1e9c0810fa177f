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

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Defaults, SPIRE's (default_x509_svid_ttl 1h, ca_ttl 24h) and for SPIRE's
// reasons: a short CA lifetime bounds what a leaked signing key can do,
// and with rotation scheduled at fixed fractions of that lifetime (see
// RotateIfDue) a CA TTL of at least six SVID TTLs means no SVID is ever
// shortened by the cap at its issuer's NotAfter. With these values a new
// root is published 12 h before expiry, signs from 4 h before, and the
// root rotates every 12 h.
const (
	DefaultSVIDTTL = time.Hour
	DefaultCATTL   = 24 * time.Hour
	// backdate tolerates clock skew between the CA and verifiers.
	backdate = 30 * time.Second
)

// Config configures a CA.
type Config struct {
	// TrustDomain, e.g. "cluster.local".
	TrustDomain string
	// Store persists the CA state. Required.
	Store Store
	// CATTL is the lifetime of each root (or intermediate) this CA makes
	// (default DefaultCATTL). RotateIfDue replaces it before it expires.
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
	// Metrics, if set, receives the kordon_identity_* metrics.
	Metrics prometheus.Registerer
}

// CA signs SVIDs. It is safe for concurrent use.
type CA struct {
	cfg Config
	td  spiffeid.TrustDomain
	log *slog.Logger

	rotateMu sync.Mutex // serialises Rotate and RotateIfDue
	mu       sync.RWMutex
	state    *State
	version  string
	active   *authority
	next     *authority // prepared: in the bundle, not yet signing; nil if none
	all      []*authority
	metrics  *caMetrics
}

// authority is a parsed State.Authorities entry.
type authority struct {
	cert     *x509.Certificate
	chain    []*x509.Certificate // cert, then intermediates up to (not incl.) the root
	root     *x509.Certificate   // what goes in the bundle
	key      crypto.Signer
	retire   time.Time // zero while active; then when it may leave the bundle
	prepared bool      // the next authority: published, not yet signing
}

// Errors with stable texts, asserted in tests.
var (
	ErrNoStore = errors.New("identity: Config.Store is required")
)

// checkTTLs refuses lifetimes under which SVIDs would outlive their CA.
func checkTTLs(caTTL, svidTTL time.Duration) error {
	if svidTTL > MaxSVIDTTL {
		return fmt.Errorf("identity: SVID TTL %s is longer than the maximum %s", svidTTL, MaxSVIDTTL)
	}
	// Why: an SVID is capped at its issuer's NotAfter, and rotation
	// activates the next authority when a sixth of the current one's life
	// is left; below two SVID lifetimes most SVIDs would be cut short.
	if caTTL < 2*svidTTL {
		return fmt.Errorf("identity: CA TTL %s must be at least twice the SVID TTL %s", caTTL, svidTTL)
	}
	return nil
}

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
	if err := checkTTLs(cfg.CATTL, cfg.SVIDTTL); err != nil {
		return nil, err
	}
	if cfg.CATTL < 6*cfg.SVIDTTL {
		// SPIRE warns the same way: SVIDs signed shortly before a
		// rotation are shortened to the CA's NotAfter.
		cfg.Logger.Warn("CA TTL is less than six SVID TTLs: SVIDs signed shortly before a root rotation are shortened",
			"ca_ttl_seconds", cfg.CATTL.Seconds(), "svid_ttl_seconds", cfg.SVIDTTL.Seconds())
	}
	ca := &CA{cfg: cfg, td: td, log: cfg.Logger}
	var err2 error
	if ca.metrics, err2 = newCAMetrics(cfg.Metrics, cfg.CATTL, cfg.SVIDTTL); err2 != nil {
		return nil, err2
	}
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
	var active, next *authority
	for i, sa := range st.Authorities {
		a, err := parseAuthority(sa)
		if err != nil {
			return fmt.Errorf("identity: stored authority %d: %w", i, err)
		}
		all = append(all, a)
		switch {
		case a.prepared:
			next = a
		case a.retire.IsZero():
			active = a
		}
	}
	if active == nil {
		return errors.New("identity: stored CA state has no active authority")
	}
	ca.mu.Lock()
	ca.state, ca.version, ca.all, ca.active, ca.next = st, version, all, active, next
	ca.mu.Unlock()
	ca.metrics.observeAuthorities(ca.Authorities())
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
	a := &authority{cert: certs[0], chain: certs, key: signer, retire: sa.RetireAfter, prepared: sa.Prepared}
	a.root = certs[len(certs)-1]
	return a, nil
}

// Rotation schedule, SPIRE's (pkg/server/ca/manager): the next authority
// is prepared, and published in the bundle, when half of the active one's
// lifetime is left (at most 30 days before it expires); it starts signing
// when a sixth is left (at most 7 days before). Between the two, a third of
// the lifetime, every verifier fetches a bundle that already trusts it, so
// an SVID from the new root is never met by a peer that cannot verify it.
const (
	prepareDivisor  = 2
	activateDivisor = 6
	prepareCap      = 30 * 24 * time.Hour
	activateCap     = 7 * 24 * time.Hour
)

// prepareAt is when the next authority should be prepared.
func prepareAt(c *x509.Certificate) time.Time {
	return c.NotAfter.Add(-min(lifetime(c)/prepareDivisor, prepareCap))
}

// activateAt is when the next authority should start signing.
func activateAt(c *x509.Certificate) time.Time {
	return c.NotAfter.Add(-min(lifetime(c)/activateDivisor, activateCap))
}

// lifetime is a CA certificate's validity without the backdating.
func lifetime(c *x509.Certificate) time.Duration {
	return c.NotAfter.Sub(c.NotBefore.Add(backdate))
}

// Rotation says what one RotateIfDue (or Rotate) call changed.
type Rotation struct {
	// Prepared: a new authority was made and added to the bundle.
	Prepared bool
	// Activated: the prepared authority became the signer; the previous
	// one stays in the bundle until RetireAfter.
	Activated bool
	// Pruned is how many retired authorities left the bundle.
	Pruned int
}

// Changed reports whether the CA state changed.
func (r Rotation) Changed() bool { return r.Prepared || r.Activated || r.Pruned > 0 }

// RotateIfDue advances the rotation schedule to the CA's clock: it drops
// retired authorities every SVID of which has expired, prepares the next
// authority at half-life and activates it when a sixth of the active one's
// life is left. Only one replica (the leader) should call it; the others
// Reload. A stale state (another writer) is reloaded and the step retried.
func (ca *CA) RotateIfDue(ctx context.Context) (Rotation, error) {
	ca.rotateMu.Lock()
	defer ca.rotateMu.Unlock()
	return ca.step(ctx, false)
}

// Rotate makes a new authority active now (an operator's forced
// rotation): the prepared one if there is one, otherwise a new one. The
// previous one stays in the bundle until every SVID it signed has expired
// (its retire time is the latest NotAfter it could have issued), so
// verifiers that already trust it never see a gap; verifiers that have not
// yet fetched a bundle with the new root will refuse SVIDs it signs until
// they do, which is why scheduled rotation (RotateIfDue) publishes first.
func (ca *CA) Rotate(ctx context.Context) error {
	ca.rotateMu.Lock()
	defer ca.rotateMu.Unlock()
	_, err := ca.step(ctx, true)
	return err
}

func (ca *CA) step(ctx context.Context, force bool) (Rotation, error) {
	for attempt := 0; ; attempt++ {
		st, version, res, err := ca.plan(force)
		if err != nil {
			return Rotation{}, err
		}
		if !res.Changed() {
			return res, nil
		}
		ver, err := ca.cfg.Store.Update(ctx, st, version)
		if errors.Is(err, ErrConflict) && attempt < 2 {
			// Another writer (a former leader) changed the state: plan
			// again from what it wrote.
			if err := ca.reload(ctx); err != nil {
				return Rotation{}, err
			}
			continue
		}
		if err != nil {
			return Rotation{}, fmt.Errorf("identity: store rotated CA: %w", err)
		}
		if err := ca.adopt(st, ver); err != nil {
			return Rotation{}, err
		}
		ca.metrics.observeRotation(res)
		active := ca.ActiveCertificate()
		ca.log.Info("rotated CA", "trust_domain", ca.td.Name(), "prepared", res.Prepared, "activated", res.Activated,
			"pruned", res.Pruned, "active_not_after", active.NotAfter.UTC())
		return res, nil
	}
}

// plan computes the next state from the current one at the CA's clock.
func (ca *CA) plan(force bool) (*State, string, Rotation, error) {
	now := ca.cfg.Now()
	ca.mu.RLock()
	st := &State{TrustDomain: ca.state.TrustDomain}
	auths := append([]StoredAuthority(nil), ca.state.Authorities...)
	parsed := append([]*authority(nil), ca.all...)
	active, next, version := ca.active, ca.next, ca.version
	ca.mu.RUnlock()

	var res Rotation
	activeIdx, nextIdx := -1, -1
	for i, a := range parsed {
		sa := auths[i]
		switch {
		case a == active:
		case a == next && now.Before(a.cert.NotAfter):
		case !sa.RetireAfter.IsZero() && now.After(sa.RetireAfter), a == next:
			// Every SVID it signed has expired (or a prepared authority
			// expired unused): it leaves the bundle.
			res.Pruned++
			if a == next {
				next = nil
			}
			continue
		}
		if a == active {
			activeIdx = len(st.Authorities)
		}
		if a == next {
			nextIdx = len(st.Authorities)
		}
		st.Authorities = append(st.Authorities, sa)
	}
	if next == nil && (force || !now.Before(prepareAt(active.cert))) {
		na, err := ca.newAuthority()
		if err != nil {
			return nil, "", Rotation{}, err
		}
		pa, err := parseAuthority(na)
		if err != nil {
			return nil, "", Rotation{}, err
		}
		if !pa.cert.NotAfter.After(now) {
			return nil, "", Rotation{}, errors.New("identity: the upstream CA has expired: cannot make a new authority")
		}
		// Why RetireAfter on a prepared authority: kordon versions that do
		// not know Prepared sign with the authority whose RetireAfter is
		// zero, so during a rolling upgrade they publish this one but
		// never sign with it early.
		na.Prepared, na.RetireAfter = true, pa.cert.NotAfter
		nextIdx = len(st.Authorities)
		st.Authorities = append(st.Authorities, na)
		next = pa
		res.Prepared = true
	}
	if next != nil && ca.dueForActivation(now, active.cert, next.cert, force) {
		old := &st.Authorities[activeIdx]
		// Why: an SVID signed just before the switch lives at most the
		// longest TTL we grant, and never past the CA's NotAfter.
		old.RetireAfter = minTime(now.Add(ca.maxTTL()), active.cert.NotAfter)
		nw := &st.Authorities[nextIdx]
		nw.Prepared, nw.RetireAfter = false, time.Time{}
		res.Activated = true
	}
	return st, version, res, nil
}

// dueForActivation: the schedule says so and the next authority has been
// published long enough, or the active one can no longer sign.
func (ca *CA) dueForActivation(now time.Time, active, next *x509.Certificate, force bool) bool {
	if force || !now.Before(active.NotAfter) {
		return true
	}
	if now.Before(activateAt(active)) {
		return false
	}
	// Why: a replica that was down at the preparation time prepares late;
	// the new root still gets half of the usual publication window before
	// it signs, unless the active authority expires first.
	published := now.Sub(next.NotBefore.Add(backdate))
	window := activateAt(active).Sub(prepareAt(active))
	return published >= window/2
}

// Reload re-reads the store (another replica may have rotated). It is
// cheap when nothing changed. It is serialised with rotation steps: a
// load that started before this replica's own rotation must not be
// adopted after it.
func (ca *CA) Reload(ctx context.Context) error {
	ca.rotateMu.Lock()
	defer ca.rotateMu.Unlock()
	return ca.reload(ctx)
}

func (ca *CA) reload(ctx context.Context) error {
	st, ver, err := ca.cfg.Store.Load(ctx)
	if err != nil {
		return fmt.Errorf("identity: reload CA state: %w", err)
	}
	ca.mu.RLock()
	same := ver != "" && ver == ca.version
	ca.mu.RUnlock()
	if same {
		return nil
	}
	return ca.adopt(st, ver)
}

// CheckInterval is how often RunRotation and RunReload look at the
// schedule by default: a sixtieth of the CA TTL, between 1 s and 10 s
// (SPIRE's CA manager checks every 10 s), so that a short test CA still
// rotates on time.
func (ca *CA) CheckInterval() time.Duration {
	return min(max(ca.cfg.CATTL/60, time.Second), 10*time.Second)
}

// RunRotation calls RotateIfDue every interval (0: CheckInterval) until
// ctx ends, and onChange after each change (for example to publish the
// bundle). Errors are logged and retried at the next tick: the active
// authority keeps signing meanwhile.
func (ca *CA) RunRotation(ctx context.Context, interval time.Duration, onChange func()) {
	ca.runEvery(ctx, interval, func() {
		res, err := ca.RotateIfDue(ctx)
		if err != nil {
			if ctx.Err() == nil {
				ca.log.Error("CA rotation failed", "trust_domain", ca.td.Name(), "error", err)
			}
			return
		}
		if res.Changed() && onChange != nil {
			onChange()
		}
	})
}

// RunReload calls Reload every interval (0: CheckInterval) until ctx ends:
// what follower replicas run, so that they sign with the root the leader
// activated and serve the bundle it published.
func (ca *CA) RunReload(ctx context.Context, interval time.Duration) {
	ca.runEvery(ctx, interval, func() {
		before := ca.ActiveCertificate()
		if err := ca.Reload(ctx); err != nil {
			if ctx.Err() == nil {
				ca.log.Warn("CA reload failed", "trust_domain", ca.td.Name(), "error", err)
			}
			return
		}
		if !ca.ActiveCertificate().Equal(before) {
			ca.log.Info("reloaded rotated CA", "trust_domain", ca.td.Name())
		}
	})
}

func (ca *CA) runEvery(ctx context.Context, interval time.Duration, f func()) {
	if interval <= 0 {
		interval = ca.CheckInterval()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		f()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// AuthorityStatus is where an authority is in its life.
type AuthorityStatus string

// Authority statuses.
const (
	StatusActive   AuthorityStatus = "active"
	StatusPrepared AuthorityStatus = "prepared"
	StatusRetired  AuthorityStatus = "retired"
)

// AuthorityInfo describes one authority of the CA.
type AuthorityInfo struct {
	Status      AuthorityStatus
	Certificate *x509.Certificate
	// RetireAfter is when a retired authority leaves the bundle.
	RetireAfter time.Time
}

// Authorities lists the CA's authorities (every one is in the bundle).
func (ca *CA) Authorities() []AuthorityInfo {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	out := make([]AuthorityInfo, 0, len(ca.all))
	for _, a := range ca.all {
		ai := AuthorityInfo{Status: StatusRetired, Certificate: a.cert, RetireAfter: a.retire}
		switch a {
		case ca.active:
			ai.Status, ai.RetireAfter = StatusActive, time.Time{}
		case ca.next:
			ai.Status, ai.RetireAfter = StatusPrepared, time.Time{}
		}
		out = append(out, ai)
	}
	return out
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
