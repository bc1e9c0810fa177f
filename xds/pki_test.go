package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/kordon-dev/kordon/identity"
)

// testCA is a minimal SPIFFE CA for tests: one self-signed root per trust
// domain that signs leaf SVIDs with one URI SAN.
type testCA struct {
	td     string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	pem    []byte
	serial atomic.Int64
}

func newTestCA(t testing.TB, td string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	uri, _ := url.Parse("spiffe://" + td)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{Organization: []string{td}},
		URIs:                  []*url.URL{uri},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{td: td, cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	ca.serial.Store(100)
	return ca
}

// issue signs a leaf for spiffeID (plus IP SANs) and returns cert and key
// PEM and the serial.
func (ca *testCA) issue(t testing.TB, spiffeID string, ips ...net.IP) (certPEM, keyPEM []byte, serial int64) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	uri, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	serial = ca.serial.Add(1)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		URIs:         []*url.URL{uri},
		IPAddresses:  ips,
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), serial
}

func (ca *testCA) tlsCert(t testing.TB, spiffeID string, ips ...net.IP) tls.Certificate {
	c, k, _ := ca.issue(t, spiffeID, ips...)
	pair, err := tls.X509KeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return pair
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// meshCA is kordon's real CA (package identity) as the tests use it.
type meshCA struct {
	*identity.CA
	td string
}

func newMeshCA(t testing.TB, td string, now func() time.Time) *meshCA {
	t.Helper()
	ca, err := identity.New(context.Background(), identity.Config{
		TrustDomain: td,
		Store:       &identity.FileStore{Path: filepath.Join(t.TempDir(), "ca.json")},
		Now:         now,
		Logger:      testLogger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	return &meshCA{CA: ca, td: td}
}

// issue signs an SVID for spiffeID over a fresh key.
func (ca *meshCA) issue(t testing.TB, spiffeID string) (*identity.SVID, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.SignPublicKey(&key.PublicKey, spiffeid.RequireFromString(spiffeID), 0)
	if err != nil {
		t.Fatal(err)
	}
	return svid, key
}

func (ca *meshCA) tlsCert(t testing.TB, spiffeID string) tls.Certificate {
	t.Helper()
	svid, key := ca.issue(t, spiffeID)
	c := tls.Certificate{PrivateKey: key, Leaf: svid.Chain[0]}
	for _, cert := range svid.Chain {
		c.Certificate = append(c.Certificate, cert.Raw)
	}
	return c
}

func (ca *meshCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	for _, r := range ca.Roots() {
		p.AddCert(r)
	}
	return p
}

// svidFiles are a workload's SVID files as the node agent writes them.
type svidFiles struct {
	dir, cert, key, ca string
}

// writeSVID writes (or rewrites) a fresh SVID for spiffeID into dir with
// identity.WriteSVIDFiles and returns its serial.
func writeSVID(t testing.TB, dir string, ca *meshCA, spiffeID string) (svidFiles, string) {
	t.Helper()
	svid, key := ca.issue(t, spiffeID)
	if err := identity.WriteSVIDFiles(dir, svid, key, ca.BundlePEM()); err != nil {
		t.Fatal(err)
	}
	f := svidFiles{dir: dir, cert: filepath.Join(dir, identity.CertFile), key: filepath.Join(dir, identity.KeyFile), ca: filepath.Join(dir, identity.BundleFile)}
	return f, svid.Chain[0].SerialNumber.String()
}
