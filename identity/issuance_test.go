package identity

import (
	"context"
	"crypto/x509"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// serveIssuance serves iss on loopback with ca's certificate for id until
// the test ends.
func serveIssuance(t *testing.T, iss *Issuance, ca *CA, id spiffeid.ID) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ServeIssuance(ctx, ln, iss, ServerTLS(ca, id)) }()
	t.Cleanup(func() { cancel(); <-done })
	return ln
}

func TestIssuanceAttestationAndNodeScoping(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, nil)
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{
		{Name: "frontend-abc", Namespace: "shop", ServiceAccount: "frontend", Node: "node-a", UID: "uid-1"},
		{Name: "payments-xyz", Namespace: "shop", ServiceAccount: "payments", Node: "node-b", UID: "uid-2"},
	})
	reviewer := StaticTokenReviewer{
		"frontend-token":  {Namespace: "shop", ServiceAccount: "frontend", PodName: "frontend-abc", PodUID: "uid-1", NodeName: "node-a"},
		"stale-token":     {Namespace: "shop", ServiceAccount: "frontend", PodName: "frontend-old", PodUID: "uid-0", NodeName: "node-a"},
		"node-a-agent":    {Namespace: "kordon-system", ServiceAccount: "kordon-node", PodName: "kordon-node-1", NodeName: "node-a"},
		"unbound-agent":   {Namespace: "kordon-system", ServiceAccount: "kordon-node"},
		"unbound-payment": {Namespace: "shop", ServiceAccount: "payments"},
	}
	iss, err := NewIssuance(IssuanceConfig{CA: ca, Reviewer: reviewer, Pods: reg})
	if err != nil {
		t.Fatal(err)
	}
	controllerID := spiffeid.RequireFromString("spiffe://cluster.local/ns/kordon-system/sa/kordon-controller")
	ln := serveIssuance(t, iss, ca, controllerID)

	dial := func(token string, serverID spiffeid.ID) *IssuanceClient {
		c, err := DialIssuance(ln.Addr().String(), ca.Roots(), serverID, func() (string, error) { return token, nil })
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	csr := func(uri string) []byte {
		tmpl := &x509.CertificateRequest{}
		if uri != "" {
			u, _ := url.Parse(uri)
			tmpl.URIs = []*url.URL{u}
		}
		return csrFor(t, p256(t), tmpl)
	}
	cases := []struct {
		name, token, ns, pod, csrURI string
		wantID                       string
		wantCode                     codes.Code
		wantMsg                      string
	}{
		{name: "workload gets its own identity", token: "frontend-token", wantID: "spiffe://cluster.local/ns/shop/sa/frontend"},
		{name: "workload cannot ask for another pod", token: "frontend-token", ns: "shop", pod: "payments-xyz", wantCode: codes.PermissionDenied, wantMsg: "a workload token may only request its own identity"},
		{name: "CSR for another identity refused", token: "frontend-token", csrURI: "spiffe://cluster.local/ns/shop/sa/payments", wantCode: codes.InvalidArgument, wantMsg: "CSR URI SAN does not match"},
		{name: "deleted pod's token is revoked", token: "stale-token", wantCode: codes.PermissionDenied, wantMsg: "pod shop/frontend-old no longer exists"},
		{name: "node agent for a pod on its node", token: "node-a-agent", ns: "shop", pod: "frontend-abc", wantID: "spiffe://cluster.local/ns/shop/sa/frontend"},
		{name: "node agent for a pod on another node", token: "node-a-agent", ns: "shop", pod: "payments-xyz", wantCode: codes.PermissionDenied, wantMsg: "pod shop/payments-xyz is not scheduled on node node-a"},
		{name: "node agent without node claim", token: "unbound-agent", ns: "shop", pod: "frontend-abc", wantCode: codes.PermissionDenied, wantMsg: "node agent token carries no node claim"},
		{name: "unbound workload token", token: "unbound-payment", wantID: "spiffe://cluster.local/ns/shop/sa/payments"},
		{name: "unknown token", token: "forged", wantCode: codes.Unauthenticated},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := dial(tc.token, controllerID).Sign(context.Background(), SignRequest{CSR: csr(tc.csrURI), Namespace: tc.ns, Pod: tc.pod})
			if tc.wantID != "" {
				if err != nil || resp.SPIFFEID != tc.wantID {
					t.Fatalf("got %v %v, want %s", resp, err, tc.wantID)
				}
				chain, err := parsePEMCerts([]byte(resp.ChainPEM))
				if err != nil || chain[0].URIs[0].String() != tc.wantID {
					t.Fatalf("chain: %v", err)
				}
				return
			}
			if status.Code(err) != tc.wantCode || !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
				t.Fatalf("got %v, want %s %q", err, tc.wantCode, tc.wantMsg)
			}
		})
	}
	// The client refuses a server that is not the expected identity.
	wrong := spiffeid.RequireFromString("spiffe://cluster.local/ns/kordon-system/sa/impostor")
	if _, err := dial("frontend-token", wrong).Sign(context.Background(), SignRequest{CSR: csr("")}); err == nil {
		t.Fatal("client accepted a server with the wrong SPIFFE ID")
	}
}

func TestParseServiceAccountUsername(t *testing.T) {
	t.Parallel()
	ns, sa, err := ParseServiceAccountUsername("system:serviceaccount:shop:frontend")
	if err != nil || ns != "shop" || sa != "frontend" {
		t.Fatal(ns, sa, err)
	}
	for _, bad := range []string{"alice", "system:serviceaccount:shop", "system:serviceaccount::x", "system:serviceaccount:a:b:c"} {
		if _, _, err := ParseServiceAccountUsername(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func FuzzParseServiceAccountUsername(f *testing.F) {
	f.Add("system:serviceaccount:shop:frontend")
	f.Add("system:serviceaccount:a:b:c")
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	f.Fuzz(func(t *testing.T, u string) {
		ns, sa, err := ParseServiceAccountUsername(u)
		if err != nil {
			return
		}
		if strings.Contains(ns, ":") || strings.Contains(sa, ":") {
			t.Fatalf("%q -> %q %q", u, ns, sa)
		}
		// Whatever a token claims, building an ID never yields a path
		// outside /ns/<ns>/sa/<sa>.
		if id, err := WorkloadID(td, ns, sa); err == nil && id.Path() != "/ns/"+ns+"/sa/"+sa {
			t.Fatalf("id %s", id)
		}
	})
}

// TestIssuanceClientFollowsRotatedRoots: after a root rotation the server
// presents a certificate from the new root; a client that reads the
// bundle at each handshake (DialIssuanceRoots, what the node agent does)
// keeps connecting, one holding the roots from before the rotation does
// not.
func TestIssuanceClientFollowsRotatedRoots(t *testing.T) {
	t.Parallel()
	// The clock is the real one until the test steps it past the server
	// certificate's half-life: TLS clients verify with the real clock.
	clk := &fakeClock{now: time.Now()}
	ca, err := New(context.Background(), Config{Store: &FileStore{Path: t.TempDir() + "/ca.json"}, SVIDTTL: 2 * time.Second, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	iss, controllerID := frontendIssuance(t, ca)
	ln := serveIssuance(t, iss, ca, controllerID)
	token := func() (string, error) { return "frontend-token", nil }
	sign := func(c *IssuanceClient) error {
		defer c.Close()
		_, err := c.Sign(context.Background(), SignRequest{CSR: csrFor(t, p256(t), &x509.CertificateRequest{})})
		return err
	}
	before := ca.Roots()
	// A first handshake, so that the server holds a certificate from the
	// old root when it rotates.
	first, err := DialIssuance(ln.Addr().String(), before, controllerID, token)
	if err != nil {
		t.Fatal(err)
	}
	if err := sign(first); err != nil {
		t.Fatalf("client with the first root: %v", err)
	}
	if err := ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	clk.Add(1100 * time.Millisecond) // past the server certificate's half-life
	following, err := DialIssuanceRoots(ln.Addr().String(), func() ([]*x509.Certificate, error) { return ca.Roots(), nil }, controllerID, token)
	if err != nil {
		t.Fatal(err)
	}
	if err := sign(following); err != nil {
		t.Fatalf("client following the bundle: %v", err)
	}
	// The old root is still in the bundle, but a client that never learnt
	// the new one cannot verify the server's new certificate.
	stale, err := DialIssuance(ln.Addr().String(), before, controllerID, token)
	if err != nil {
		t.Fatal(err)
	}
	if err := sign(stale); err == nil {
		t.Fatal("a client with only the old roots verified a certificate from the new root")
	}
}
