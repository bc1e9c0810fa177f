package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// MaxSVIDTTL bounds any requested X.509-SVID TTL.
const MaxSVIDTTL = 24 * time.Hour

// SVID is a signed X.509-SVID: the leaf, the chain up to (not including)
// the root, and the ID it carries.
type SVID struct {
	ID    spiffeid.ID
	Chain []*x509.Certificate
}

// ChainPEM encodes leaf and intermediates as PEM.
func (s *SVID) ChainPEM() []byte {
	var out []byte
	for _, c := range s.Chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// NotAfter is the leaf's expiry.
func (s *SVID) NotAfter() time.Time { return s.Chain[0].NotAfter }

// RejectReason says why a signing request was refused. Its text is
// stable and asserted in tests.
type RejectReason string

// Reasons a CSR or request is refused.
const (
	RejectBadCSR         RejectReason = "CSR is malformed or its signature is invalid"
	RejectExtraSANs      RejectReason = "CSR must carry no SAN other than the requested SPIFFE ID"
	RejectWrongID        RejectReason = "CSR URI SAN does not match the requested SPIFFE ID"
	RejectWrongTD        RejectReason = "SPIFFE ID is not in this CA's trust domain"
	RejectCARequest      RejectReason = "CSR requests a CA certificate"
	RejectWeakKey        RejectReason = "CSR key is too weak"
	RejectTTLTooLong     RejectReason = "requested TTL is longer than the CA's lifetime"
	RejectBadWorkloadID  RejectReason = "not a workload SPIFFE ID"
	RejectNoActiveSigner RejectReason = "CA has no valid signing certificate"
)

// RejectError is a refused signing request.
type RejectError struct {
	Reason RejectReason
	Detail string
}

func (e *RejectError) Error() string {
	if e.Detail == "" {
		return "identity: " + string(e.Reason)
	}
	return "identity: " + string(e.Reason) + ": " + e.Detail
}

func reject(r RejectReason, format string, args ...any) error {
	return &RejectError{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// IsReject reports whether err is a RejectError with reason r.
func IsReject(err error, r RejectReason) bool {
	var re *RejectError
	return errors.As(err, &re) && re.Reason == r
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// WorkloadID builds spiffe://<td>/ns/<ns>/sa/<sa>, refusing namespace and
// service-account names Kubernetes would not accept (they come from
// tokens and API objects, so they are untrusted input).
func WorkloadID(td spiffeid.TrustDomain, namespace, serviceAccount string) (spiffeid.ID, error) {
	if len(namespace) > 63 || !dnsLabel.MatchString(namespace) {
		return spiffeid.ID{}, reject(RejectBadWorkloadID, "invalid namespace %q", namespace)
	}
	if len(serviceAccount) > 253 || !dnsSubdomain.MatchString(serviceAccount) {
		return spiffeid.ID{}, reject(RejectBadWorkloadID, "invalid service account %q", serviceAccount)
	}
	return spiffeid.FromSegments(td, "ns", namespace, "sa", serviceAccount)
}

// ParseWorkloadID extracts namespace and service account from a workload
// SPIFFE ID of this shape.
func ParseWorkloadID(id spiffeid.ID) (namespace, serviceAccount string, err error) {
	var ns, sa string
	n, _ := fmt.Sscanf(id.Path(), "/ns/%s", &ns)
	if n != 1 {
		return "", "", reject(RejectBadWorkloadID, "%s", id)
	}
	for i := 0; i < len(ns); i++ {
		if ns[i] == '/' {
			rest := ns[i:]
			ns = ns[:i]
			if len(rest) > 4 && rest[:4] == "/sa/" {
				sa = rest[4:]
			}
			break
		}
	}
	if _, err := WorkloadID(id.TrustDomain(), ns, sa); err != nil {
		return "", "", err
	}
	return ns, sa, nil
}

// SignCSR validates a PKCS#10 CSR and signs an X.509-SVID for id. The CSR
// may name id as its only URI SAN or carry no SAN at all; anything else is
// refused rather than silently dropped, so a confused or malicious client
// learns that its request was wrong. ttl 0 means the default.
func (ca *CA) SignCSR(csrDER []byte, id spiffeid.ID, ttl time.Duration) (svid *SVID, err error) {
	start := time.Now()
	defer func() { ca.observeX509(start, svid, err) }()
	return ca.signCSR(csrDER, id, ttl)
}

// observeX509 records one X.509 signing request in the metrics.
func (ca *CA) observeX509(start time.Time, svid *SVID, err error) {
	ca.metrics.observeSign("x509", start, err)
	if err == nil {
		ca.metrics.svidExpiry.Set(float64(svid.NotAfter().Unix()))
	}
}

func (ca *CA) signCSR(csrDER []byte, id spiffeid.ID, ttl time.Duration) (*SVID, error) {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, reject(RejectBadCSR, "%v", err)
	}
	// Key strength first: Go refuses to even verify signatures of weak
	// RSA keys, and "too weak" is the useful answer.
	if err := checkKey(csr.PublicKey); err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, reject(RejectBadCSR, "%v", err)
	}
	if len(csr.DNSNames) > 0 || len(csr.EmailAddresses) > 0 || len(csr.IPAddresses) > 0 || len(csr.URIs) > 1 {
		return nil, reject(RejectExtraSANs, "dns=%v email=%v ip=%v uri=%d", csr.DNSNames, csr.EmailAddresses, csr.IPAddresses, len(csr.URIs))
	}
	if len(csr.URIs) == 1 {
		got, err := spiffeid.FromURI(csr.URIs[0])
		if err != nil {
			return nil, reject(RejectWrongID, "%s: %v", csr.URIs[0], err)
		}
		if got.TrustDomain() != ca.td {
			return nil, reject(RejectWrongTD, "%s (CA trust domain %s)", got, ca.td.Name())
		}
		if got != id {
			return nil, reject(RejectWrongID, "CSR has %s, request is for %s", got, id)
		}
	}
	for _, ext := range csr.Extensions {
		// Why: basicConstraints with cA=TRUE in a CSR is an attempt to get
		// a certificate that could mint other identities.
		if ext.Id.Equal(oidBasicConstraints) {
			var bc struct {
				IsCA       bool `asn1:"optional"`
				MaxPathLen int  `asn1:"optional,default:-1"`
			}
			if _, err := asn1.Unmarshal(ext.Value, &bc); err == nil && bc.IsCA {
				return nil, reject(RejectCARequest, "basicConstraints cA=TRUE")
			}
		}
	}
	return ca.signPublicKey(csr.PublicKey, id, ttl)
}

var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

// checkKey refuses keys that are weak or of unsupported types.
func checkKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return reject(RejectWeakKey, "ECDSA curve %s (want P-256 or P-384)", k.Curve.Params().Name)
		}
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return reject(RejectWeakKey, "RSA %d bits (minimum 2048)", k.N.BitLen())
		}
	case ed25519.PublicKey:
	default:
		return reject(RejectWeakKey, "unsupported key type %T", pub)
	}
	return nil
}

// SignPublicKey signs an X.509-SVID for id over pub (for callers that
// generate keys themselves, such as the node agent for its pods).
func (ca *CA) SignPublicKey(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration) (svid *SVID, err error) {
	start := time.Now()
	defer func() { ca.observeX509(start, svid, err) }()
	return ca.signPublicKey(pub, id, ttl)
}

func (ca *CA) signPublicKey(pub crypto.PublicKey, id spiffeid.ID, ttl time.Duration) (*SVID, error) {
	if err := checkKey(pub); err != nil {
		return nil, err
	}
	if id.TrustDomain() != ca.td {
		return nil, reject(RejectWrongTD, "%s (CA trust domain %s)", id, ca.td.Name())
	}
	if ttl <= 0 {
		ttl = ca.cfg.SVIDTTL
	}
	ca.mu.RLock()
	active := ca.active
	ca.mu.RUnlock()
	now := ca.cfg.Now()
	caLife := active.cert.NotAfter.Sub(active.cert.NotBefore)
	if ttl > MaxSVIDTTL || ttl > caLife {
		return nil, reject(RejectTTLTooLong, "requested %s, CA lifetime %s, maximum %s", ttl, caLife.Round(time.Second), MaxSVIDTTL)
	}
	if !now.Before(active.cert.NotAfter) {
		return nil, reject(RejectNoActiveSigner, "CA expired at %s", active.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"kordon"}},
		URIs:         []*url.URL{id.URL()},
		NotBefore:    now.Add(-backdate),
		// Why: a leaf must never outlive its issuer (SPIRE caps the same way).
		NotAfter:              minTime(now.Add(ttl), active.cert.NotAfter),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, active.cert, pub, active.key)
	if err != nil {
		return nil, fmt.Errorf("identity: sign SVID: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	// Chain: leaf, then the CA and any upstream intermediates, but not the
	// self-signed root (verifiers have it in the bundle).
	chain := []*x509.Certificate{leaf}
	for _, c := range active.chain {
		if !isSelfSigned(c) {
			chain = append(chain, c)
		}
	}
	return &SVID{ID: id, Chain: chain}, nil
}

// RenewAt is when an SVID is due for renewal: half of its life (SPIRE's
// agent renews at half-life too). The life is counted from when it was
// issued, not from its NotBefore, which kordon backdates by 30 s for clock
// skew: with a 15 s SVID the backdated half-life would have passed already
// when the SVID is signed.
func RenewAt(c *x509.Certificate) time.Time { return RenewTime(c.NotBefore, c.NotAfter) }

// RenewTime is RenewAt for an SVID known by its validity window only (the
// xDS server's cached SVIDs): half of the lifetime counted from issue, not
// from the backdated NotBefore.
func RenewTime(notBefore, notAfter time.Time) time.Time {
	issued := notBefore.Add(backdate)
	if !issued.Before(notAfter) {
		issued = notBefore
	}
	return issued.Add(notAfter.Sub(issued) / 2)
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

// jwtKeyID derives a stable key ID from the authority certificate.
func jwtKeyID(c *x509.Certificate) string {
	sum := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return base64.RawURLEncoding.EncodeToString(sum[:12])
}

// SignJWTSVID signs a JWT-SVID (ES256) for id with the given audiences.
func (ca *CA) SignJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (token string, exp time.Time, err error) {
	start := time.Now()
	defer func() { ca.metrics.observeSign("jwt", start, err) }()
	return ca.signJWTSVID(id, audience, ttl)
}

func (ca *CA) signJWTSVID(id spiffeid.ID, audience []string, ttl time.Duration) (string, time.Time, error) {
	if id.TrustDomain() != ca.td {
		return "", time.Time{}, reject(RejectWrongTD, "%s (CA trust domain %s)", id, ca.td.Name())
	}
	if len(audience) == 0 {
		return "", time.Time{}, errors.New("identity: a JWT-SVID needs at least one audience")
	}
	if ttl <= 0 || ttl > 5*time.Minute {
		ttl = 5 * time.Minute // SPIRE's default JWT-SVID lifetime
	}
	ca.mu.RLock()
	active := ca.active
	ca.mu.RUnlock()
	key, ok := active.key.(*ecdsa.PrivateKey)
	if !ok {
		return "", time.Time{}, errors.New("identity: JWT signing needs an ECDSA CA key")
	}
	now := ca.cfg.Now()
	exp := minTime(now.Add(ttl), active.cert.NotAfter)
	header := map[string]string{"alg": "ES256", "kid": jwtKeyID(active.cert), "typ": "JWT"}
	claims := map[string]any{"sub": id.String(), "aud": audience, "exp": exp.Unix(), "iat": now.Unix()}
	hb, _ := json.Marshal(header)
	cb, _ := json.Marshal(claims)
	signing := base64.RawURLEncoding.EncodeToString(hb) + "." + base64.RawURLEncoding.EncodeToString(cb)
	digest := sha256.Sum256([]byte(signing))
	r, s, err := ecdsa.Sign(rand.Reader, key, digest[:])
	if err != nil {
		return "", time.Time{}, err
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signing + "." + base64.RawURLEncoding.EncodeToString(sig), exp, nil
}
