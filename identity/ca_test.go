package identity

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func newTestCA(t testing.TB, clk *fakeClock) *CA {
	t.Helper()
	if clk == nil {
		clk = &fakeClock{now: time.Now()}
	}
	ca, err := New(context.Background(), Config{TrustDomain: "cluster.local", Store: &FileStore{Path: filepath.Join(t.TempDir(), "ca.json")}, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

var shopFrontend = spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/frontend")

func csrFor(t testing.TB, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func p256(t testing.TB) *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestSignCSRProducesValidSVID(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, nil)
	key := p256(t)
	svid, err := ca.SignCSR(csrFor(t, key, &x509.CertificateRequest{URIs: []*url.URL{shopFrontend.URL()}}), shopFrontend, 0)
	if err != nil {
		t.Fatal(err)
	}
	leaf := svid.Chain[0]
	if leaf.IsCA || len(leaf.URIs) != 1 || leaf.URIs[0].String() != shopFrontend.String() || len(leaf.DNSNames) != 0 {
		t.Fatalf("bad leaf: ca=%v uris=%v dns=%v", leaf.IsCA, leaf.URIs, leaf.DNSNames)
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 || leaf.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Fatalf("key usage %v", leaf.KeyUsage)
	}
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != time.Hour+backdate {
		t.Fatalf("lifetime %s", got)
	}
	// The real verifier: go-spiffe's x509svid.Verify against our bundle.
	id, _, err := x509svid.Verify(svid.Chain, ca.X509Bundle())
	if err != nil || id != shopFrontend {
		t.Fatalf("go-spiffe verify: %v %v", id, err)
	}
	// A CSR without SANs is fine too: the CA adds the one URI SAN.
	if _, err := ca.SignCSR(csrFor(t, key, &x509.CertificateRequest{}), shopFrontend, 0); err != nil {
		t.Fatal(err)
	}
}

// TestSignCSRAdversarial mirrors SPIRE's evil-CSR tests: each request is
// refused with a stable reason.
func TestSignCSRAdversarial(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, nil)
	// Go refuses to generate RSA keys under 1024 bits, so the weak-key CSR
	// is a fixture made with: openssl req -new -newkey rsa:512 -nodes -outform DER
	rsa512, err := os.ReadFile("testdata/csr-weak-rsa-512.der")
	if err != nil {
		t.Fatal(err)
	}
	bc, _ := asn1.Marshal(struct{ IsCA bool }{true})
	other := spiffeid.RequireFromString("spiffe://evil.example/ns/shop/sa/frontend")
	worker := spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/worker")
	cases := []struct {
		name   string
		der    []byte
		tmpl   x509.CertificateRequest
		id     spiffeid.ID
		ttl    time.Duration
		reason RejectReason
		text   string
	}{
		{name: "extra-dns-san", tmpl: x509.CertificateRequest{DNSNames: []string{"payments.shop.svc"}, URIs: []*url.URL{shopFrontend.URL()}}, id: shopFrontend, reason: RejectExtraSANs,
			text: "identity: CSR must carry no SAN other than the requested SPIFFE ID: dns=[payments.shop.svc] email=[] ip=[] uri=1"},
		{name: "second-uri-san", tmpl: x509.CertificateRequest{URIs: []*url.URL{shopFrontend.URL(), worker.URL()}}, id: shopFrontend, reason: RejectExtraSANs,
			text: "identity: CSR must carry no SAN other than the requested SPIFFE ID: dns=[] email=[] ip=[] uri=2"},
		{name: "other-identity", tmpl: x509.CertificateRequest{URIs: []*url.URL{worker.URL()}}, id: shopFrontend, reason: RejectWrongID,
			text: "identity: CSR URI SAN does not match the requested SPIFFE ID: CSR has spiffe://cluster.local/ns/shop/sa/worker, request is for spiffe://cluster.local/ns/shop/sa/frontend"},
		{name: "different-trust-domain", tmpl: x509.CertificateRequest{URIs: []*url.URL{other.URL()}}, id: shopFrontend, reason: RejectWrongTD,
			text: "identity: SPIFFE ID is not in this CA's trust domain: spiffe://evil.example/ns/shop/sa/frontend (CA trust domain cluster.local)"},
		{name: "different-trust-domain-request", tmpl: x509.CertificateRequest{}, id: other, reason: RejectWrongTD,
			text: "identity: SPIFFE ID is not in this CA's trust domain: spiffe://evil.example/ns/shop/sa/frontend (CA trust domain cluster.local)"},
		{name: "ca-flag", tmpl: x509.CertificateRequest{ExtraExtensions: []pkix.Extension{{Id: oidBasicConstraints, Critical: true, Value: bc}}}, id: shopFrontend, reason: RejectCARequest,
			text: "identity: CSR requests a CA certificate: basicConstraints cA=TRUE"},
		{name: "rsa-512", der: rsa512, tmpl: x509.CertificateRequest{}, id: shopFrontend, reason: RejectWeakKey,
			text: "identity: CSR key is too weak: RSA 512 bits (minimum 2048)"},
		{name: "ttl-longer-than-ca", tmpl: x509.CertificateRequest{}, id: shopFrontend, ttl: 90 * 24 * time.Hour, reason: RejectTTLTooLong,
			text: "identity: requested TTL is longer than the CA's lifetime: requested 2160h0m0s, CA lifetime 24h0m30s, maximum 24h0m0s"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			der := tc.der
			if der == nil {
				der = csrFor(t, p256(t), &tc.tmpl)
			}
			_, err := ca.SignCSR(der, tc.id, tc.ttl)
			if !IsReject(err, tc.reason) || err.Error() != tc.text {
				t.Fatalf("got  %v\nwant %s", err, tc.text)
			}
		})
	}
	if _, err := ca.SignCSR([]byte("not a csr"), shopFrontend, 0); !IsReject(err, RejectBadCSR) {
		t.Fatalf("garbage CSR: %v", err)
	}
}

func TestTTLCappedAtCANotAfter(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{now: time.Now()}
	ca := newTestCA(t, clk)
	clk.Add(DefaultCATTL - 10*time.Minute)
	svid, err := ca.SignPublicKey(p256(t).Public(), shopFrontend, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !svid.NotAfter().Equal(ca.ActiveCertificate().NotAfter) {
		t.Fatalf("SVID NotAfter %s, CA NotAfter %s", svid.NotAfter(), ca.ActiveCertificate().NotAfter)
	}
	clk.Add(time.Hour)
	if _, err := ca.SignPublicKey(p256(t).Public(), shopFrontend, 0); !IsReject(err, RejectNoActiveSigner) {
		t.Fatalf("expired CA signed: %v", err)
	}
}

func TestRestartKeepsRootAndReplicasShareOne(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "ca.json")
	const replicas = 8
	cas := make([]*CA, replicas)
	var wg sync.WaitGroup
	errs := make(chan error, replicas)
	for i := range cas {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ca, err := New(context.Background(), Config{Store: &FileStore{Path: path}})
			cas[i] = ca
			errs <- err
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	root := cas[0].Roots()[0]
	for i, ca := range cas {
		if !ca.Roots()[0].Equal(root) {
			t.Fatalf("replica %d has a different root", i)
		}
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("state file mode %v %v", st.Mode(), err)
	}
	again, err := New(context.Background(), Config{Store: &FileStore{Path: path}})
	if err != nil || !again.Roots()[0].Equal(root) {
		t.Fatalf("restart changed the root: %v", err)
	}
}

func TestRotationOverlap(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{now: time.Now()}
	ca := newTestCA(t, clk)
	old, err := ca.SignPublicKey(p256(t).Public(), shopFrontend, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(ca.Roots()); n != 2 {
		t.Fatalf("bundle has %d roots during overlap, want 2", n)
	}
	fresh, err := ca.SignPublicKey(p256(t).Public(), shopFrontend, 0)
	if err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*SVID{"old": old, "new": fresh} {
		if _, _, err := x509svid.Verify(s.Chain, ca.X509Bundle()); err != nil {
			t.Fatalf("%s SVID does not verify during overlap: %v", name, err)
		}
	}
	if fresh.Chain[0].CheckSignatureFrom(old.Chain[0]) == nil || ca.ActiveCertificate().Equal(ca.Roots()[0]) && len(ca.Roots()) == 1 {
		t.Fatal("rotation did not change the signer")
	}
	// After every old SVID has expired the next rotation drops the old root.
	clk.Add(MaxSVIDTTL + time.Minute)
	if err := ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(old.Chain, ca.X509Bundle()); err == nil {
		t.Fatal("old root still trusted long after its SVIDs expired")
	}
	// A second replica reloads the rotated state.
	if err := ca.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestIntermediateFromUpstream(t *testing.T) {
	t.Parallel()
	upKey := p256(t)
	tmpl := &x509.Certificate{SerialNumber: bigOne(), Subject: pkix.Name{CommonName: "enterprise root"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(12 * time.Hour), // shorter than DefaultCATTL
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, upKey.Public(), upKey)
	if err != nil {
		t.Fatal(err)
	}
	upCert, _ := x509.ParseCertificate(der)
	ca, err := New(context.Background(), Config{Store: &FileStore{Path: filepath.Join(t.TempDir(), "ca.json")}, UpstreamCert: []*x509.Certificate{upCert}, UpstreamKey: upKey})
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Roots()[0].Equal(upCert) {
		t.Fatal("bundle root is not the upstream root")
	}
	if !ca.ActiveCertificate().NotAfter.Equal(upCert.NotAfter) {
		t.Fatal("intermediate outlives its upstream")
	}
	svid, err := ca.SignPublicKey(p256(t).Public(), shopFrontend, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(svid.Chain) != 2 {
		t.Fatalf("chain should carry the intermediate: %d certs", len(svid.Chain))
	}
	if _, _, err := x509svid.Verify(svid.Chain, ca.X509Bundle()); err != nil {
		t.Fatal(err)
	}
}

func TestFederationBundleRoundTrip(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, nil)
	raw, err := ca.SPIFFEBundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	b, err := spiffebundle.Parse(ca.TrustDomain(), raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) != 1 {
		t.Fatalf("bundle: %d x509, %d jwt", len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
	m, err := BundleMap(b)
	if err != nil || len(m) == 0 {
		t.Fatal(err)
	}
}

func TestWorkloadID(t *testing.T) {
	t.Parallel()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	for _, bad := range [][2]string{{"Shop", "a"}, {"shop", ""}, {"a/b", "c"}, {"shop", "../x"}, {"-x", "a"}} {
		if _, err := WorkloadID(td, bad[0], bad[1]); !IsReject(err, RejectBadWorkloadID) {
			t.Errorf("%q/%q accepted: %v", bad[0], bad[1], err)
		}
	}
	id, err := WorkloadID(td, "shop", "frontend")
	if err != nil || id != shopFrontend {
		t.Fatal(id, err)
	}
	ns, sa, err := ParseWorkloadID(id)
	if err != nil || ns != "shop" || sa != "frontend" {
		t.Fatal(ns, sa, err)
	}
}

func FuzzSignCSR(f *testing.F) {
	ca := newTestCA(f, nil)
	key := p256(f)
	f.Add(csrFor(f, key, &x509.CertificateRequest{URIs: []*url.URL{shopFrontend.URL()}}))
	f.Add(csrFor(f, key, &x509.CertificateRequest{DNSNames: []string{"x"}}))
	f.Add([]byte{0x30, 0x82})
	f.Fuzz(func(t *testing.T, der []byte) {
		svid, err := ca.SignCSR(der, shopFrontend, 0)
		if err != nil {
			var re *RejectError
			if !errors.As(err, &re) {
				t.Fatalf("unexpected error type: %v", err)
			}
			return
		}
		if len(svid.Chain[0].URIs) != 1 || svid.Chain[0].IsCA || len(svid.Chain[0].DNSNames) != 0 {
			t.Fatal("fuzzed CSR produced a bad SVID")
		}
	})
}

func FuzzWorkloadID(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	f.Add("shop", "frontend")
	f.Add("a/b", "c/../d")
	f.Fuzz(func(t *testing.T, ns, sa string) {
		id, err := WorkloadID(td, ns, sa)
		if err != nil {
			return
		}
		gns, gsa, err := ParseWorkloadID(id)
		if err != nil || gns != ns || gsa != sa {
			t.Fatalf("round trip %q/%q -> %s -> %q/%q %v", ns, sa, id, gns, gsa, err)
		}
	})
}

func bigOne() *big.Int { return big.NewInt(1) }
