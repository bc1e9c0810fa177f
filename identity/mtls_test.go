package identity

import (
	"crypto/tls"
	"errors"
	"io"
	"net"
	"testing"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestSelfSVIDOverServerMTLS: a node agent gets its own SVID from the
// issuance API and presents it to a ServerMTLS server, which verifies it
// (VerifiedChains); a client with no certificate still connects; a
// certificate from another CA is refused in the handshake.
func TestSelfSVIDOverServerMTLS(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, nil)
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "kordon-node-1", Namespace: "kordon-system", ServiceAccount: "kordon-node", Node: "node-a", UID: "uid-n"}})
	iss, err := NewIssuance(IssuanceConfig{CA: ca, Pods: reg, Reviewer: StaticTokenReviewer{
		"agent": {Namespace: "kordon-system", ServiceAccount: "kordon-node", PodName: "kordon-node-1", PodUID: "uid-n", NodeName: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	ctrlID := spiffeid.RequireFromString("spiffe://cluster.local/ns/kordon-system/sa/kordon-controller")
	issLn := serveIssuance(t, iss, ca, ctrlID)
	client, err := DialIssuance(issLn.Addr().String(), ca.Roots(), ctrlID, func() (string, error) { return "agent", nil })
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	self := &SelfSVID{Client: client}
	svid, err := self.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != "spiffe://cluster.local/ns/kordon-system/sa/kordon-node" {
		t.Fatalf("own SVID %s", svid.ID)
	}
	if again, _ := self.GetX509SVID(); again != svid {
		t.Fatal("SVID re-signed before its half-life")
	}

	ln, err := tls.Listen("tcp", "127.0.0.1:0", ServerMTLS(ca, ctrlID))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	states := make(chan tls.ConnectionState, 3)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				states <- tc.ConnectionState()
			}
			c.Close()
		}
	}()
	dial := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		// TLS 1.3: the server's verdict on the client certificate arrives
		// with the first read.
		_, err = c.Read(make([]byte, 1))
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			return nil
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		return err
	}
	bundle := ca.X509Bundle()
	if err := dial(tlsconfig.MTLSClientConfig(self, bundle, tlsconfig.AuthorizeID(ctrlID))); err != nil {
		t.Fatalf("mTLS with the own SVID: %v", err)
	}
	st := <-states
	if len(st.VerifiedChains) == 0 || st.VerifiedChains[0][0].URIs[0].String() != svid.ID.String() {
		t.Fatalf("server did not verify the client SVID: %+v", st.VerifiedChains)
	}
	if err := dial(tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ctrlID))); err != nil {
		t.Fatalf("TLS without a client certificate: %v", err)
	}
	if st := <-states; len(st.VerifiedChains) != 0 {
		t.Fatal("verified chains without a client certificate")
	}
	// The same SPIFFE ID from another CA: refused.
	other := newTestCA(t, nil)
	key := p256(t)
	forged, err := other.SignPublicKey(key.Public(), svid.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	src := &x509svid.SVID{ID: forged.ID, Certificates: forged.Chain, PrivateKey: key}
	if err := dial(tlsconfig.MTLSClientConfig(src, bundle, tlsconfig.AuthorizeID(ctrlID))); err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	}
}
