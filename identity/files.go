package identity

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Names of the files WriteSVIDFiles produces, as grpc-go's file_watcher
// certificate provider expects them.
const (
	CertFile      = "svid.pem"
	KeyFile       = "svid_key.pem"
	BundleFile    = "bundle.pem"
	BundleMapFile = "spiffe_bundle_map.json"
)

// WriteSVIDFiles writes the trust bundle, an SVID's private key and its
// chain into dir, each atomically (temporary file and rename) with mode
// 0600. The bundle goes first: it must hold the root of the SVID being
// written (read it after signing) and, as roots leave the bundle only once
// every SVID they signed has expired, it still verifies the SVID being
// replaced; so at no moment does dir hold an SVID that the bundle beside
// it does not verify. The key goes before the certificate, so that a
// watcher never pairs a new certificate with an old key for longer than
// one refresh.
func WriteSVIDFiles(dir string, svid *SVID, key crypto.Signer, bundlePEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	files := []struct {
		name string
		data []byte
	}{
		{BundleFile, bundlePEM},
		{KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
		{CertFile, svid.ChainPEM()},
	}
	for _, f := range files {
		if err := WriteFileAtomic(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return fmt.Errorf("identity: write %s: %w", f.name, err)
		}
	}
	return nil
}

// WriteBundleFile replaces only the bundle in dir (after a root was
// published or pruned), atomically with mode 0600.
func WriteBundleFile(dir string, bundlePEM []byte) error {
	if err := WriteFileAtomic(filepath.Join(dir, BundleFile), bundlePEM, 0o600); err != nil {
		return fmt.Errorf("identity: write %s: %w", BundleFile, err)
	}
	return nil
}

// ReadSVIDFiles reads the chain and then the bundle of a file set written
// by WriteSVIDFiles (the order in which a reader that checks one against
// the other would).
func ReadSVIDFiles(dir string) (*SVID, []byte, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, nil, fmt.Errorf("identity: %w", err)
	}
	bundle, err := os.ReadFile(filepath.Join(dir, BundleFile))
	if err != nil {
		return nil, nil, fmt.Errorf("identity: %w", err)
	}
	chain, err := parsePEMCerts(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: %s: %w", CertFile, err)
	}
	if len(chain) == 0 {
		return nil, nil, fmt.Errorf("identity: no certificate in %s", CertFile)
	}
	return &SVID{Chain: chain}, bundle, nil
}

// VerifySVIDWithBundle checks svid against a PEM bundle of trustDomain at
// time now, with go-spiffe's verifier.
func VerifySVIDWithBundle(svid *SVID, bundlePEM []byte, trustDomain spiffeid.TrustDomain, now time.Time) error {
	roots, err := parsePEMCerts(bundlePEM)
	if err != nil {
		return err
	}
	_, _, err = x509svid.Verify(svid.Chain, x509bundle.FromX509Authorities(trustDomain, roots), x509svid.WithTime(now))
	return err
}

// BundleMap renders grpc-go's spiffe_trust_bundle_map_file:
// {"trust_domains": {"<td>": <SPIFFE bundle JWKS>}}, for several trust
// domains (federation).
func BundleMap(bundles ...*spiffebundle.Bundle) ([]byte, error) {
	m := map[string]json.RawMessage{}
	for _, b := range bundles {
		raw, err := b.Marshal()
		if err != nil {
			return nil, fmt.Errorf("identity: marshal bundle %s: %w", b.TrustDomain(), err)
		}
		m[b.TrustDomain().Name()] = raw
	}
	return json.MarshalIndent(map[string]any{"trust_domains": m}, "", "  ")
}

// parsePEMCerts decodes every CERTIFICATE block.
func parsePEMCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("identity: no certificate in PEM data")
	}
	return out, nil
}
