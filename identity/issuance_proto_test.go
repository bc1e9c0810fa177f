package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"sync/atomic"
	"testing"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// frontendIssuance is an Issuance over ca that knows one pod,
// shop/frontend-abc, and its token "frontend-token"; and the controller's ID.
func frontendIssuance(t *testing.T, ca *CA) (*Issuance, spiffeid.ID) {
	t.Helper()
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "frontend-abc", Namespace: "shop", ServiceAccount: "frontend", Node: "node-a", UID: "uid-1"}})
	iss, err := NewIssuance(IssuanceConfig{CA: ca, Pods: reg, Reviewer: StaticTokenReviewer{
		"frontend-token": {Namespace: "shop", ServiceAccount: "frontend", PodName: "frontend-abc", PodUID: "uid-1", NodeName: "node-a"}}})
	if err != nil {
		t.Fatal(err)
	}
	return iss, spiffeid.RequireFromString("spiffe://cluster.local/ns/kordon-system/sa/kordon-controller")
}

// TestIssuanceRunsInterceptors: the generated service descriptor hands
// calls to the server's interceptors (the hand-written one dropped them).
func TestIssuanceRunsInterceptors(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, nil)
	iss, ctrlID := frontendIssuance(t, ca)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var seen atomic.Value
	intercept := grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		seen.Store(info.FullMethod)
		return h(ctx, req)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = ServeIssuance(ctx, ln, iss, ServerTLS(ca, ctrlID), intercept) }()
	t.Cleanup(func() { cancel(); <-done })
	c, err := DialIssuance(ln.Addr().String(), ca.Roots(), ctrlID, func() (string, error) { return "frontend-token", nil })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Sign(context.Background(), SignRequest{CSR: csrFor(t, p256(t), &x509.CertificateRequest{})})
	if err != nil {
		t.Fatal(err)
	}
	if resp.SPIFFEID != "spiffe://cluster.local/ns/shop/sa/frontend" || resp.ChainPEM == "" || resp.BundlePEM == "" || len(resp.Bundle) == 0 {
		t.Fatalf("response %+v", resp)
	}
	if got, _ := seen.Load().(string); got != "/kordon.identity.v1.Issuance/Sign" {
		t.Fatalf("interceptor saw %q, want /kordon.identity.v1.Issuance/Sign", got)
	}
}

// TestIssuanceAnswersPreProtoClients: a node agent of the previous
// version sends JSON in a google.protobuf.BytesValue to the same method
// and reads JSON back from one; the controller still answers it, so a
// rolling upgrade does not cut SVIDs.
func TestIssuanceAnswersPreProtoClients(t *testing.T) {
	t.Parallel()
	ca := newTestCA(t, nil)
	iss, ctrlID := frontendIssuance(t, ca)
	ln := serveIssuance(t, iss, ca, ctrlID)
	pool := x509.NewCertPool()
	for _, r := range ca.Roots() {
		pool.AddCert(r)
	}
	// The old client verified the SPIFFE ID itself; here the test trusts
	// the roots and skips the hostname check only.
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, InsecureSkipVerify: true, //nolint:gosec // a test of the payload, not of TLS
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	call := func(body []byte) (*wrapperspb.BytesValue, error) {
		ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer frontend-token")
		out := new(wrapperspb.BytesValue)
		return out, conn.Invoke(ctx, "/kordon.identity.v1.Issuance/Sign", wrapperspb.Bytes(body), out)
	}
	body, err := json.Marshal(SignRequest{CSR: csrFor(t, p256(t), &x509.CertificateRequest{})})
	if err != nil {
		t.Fatal(err)
	}
	out, err := call(body)
	if err != nil {
		t.Fatal(err)
	}
	var resp SignResponse
	if err := json.Unmarshal(out.Value, &resp); err != nil {
		t.Fatalf("legacy response is not JSON: %v (%q)", err, out.Value)
	}
	if resp.SPIFFEID != "spiffe://cluster.local/ns/shop/sa/frontend" || resp.ChainPEM == "" {
		t.Fatalf("legacy response %+v", resp)
	}
	if _, err := call([]byte("{not json")); err == nil || err.Error() != "rpc error: code = InvalidArgument desc = request is not valid JSON" {
		t.Fatalf("bad legacy JSON: err = %v", err)
	}
}
