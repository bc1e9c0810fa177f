package identity

import (
	"crypto"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
)

// Names of the files WriteSVIDFiles produces, as grpc-go's file_watcher
// certificate provider expects them.
const (
	CertFile      = "svid.pem"
	KeyFile       = "svid_key.pem"
	BundleFile    = "bundle.pem"
	BundleMapFile = "spiffe_bundle_map.json"
)

// WriteSVIDFiles writes an SVID's chain, its private key and the trust
// bundle into dir, each atomically (temporary file and rename) with mode
// 0600, key first so that a watcher never pairs a new certificate with an
// old key for longer than one refresh.
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
		{KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})},
		{CertFile, svid.ChainPEM()},
		{BundleFile, bundlePEM},
	}
	for _, f := range files {
		if err := WriteFileAtomic(filepath.Join(dir, f.name), f.data, 0o600); err != nil {
			return fmt.Errorf("identity: write %s: %w", f.name, err)
		}
	}
	return nil
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
