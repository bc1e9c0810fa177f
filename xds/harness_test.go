package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	grpcxds "google.golang.org/grpc/xds"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

const testTD = "cluster.local"

// testLogger writes Warn and above to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// mesh is a running kordon xDS server with a registry and a CA.
type mesh struct {
	t        testing.TB
	ca       *meshCA
	cpCA     *testCA
	cpCAFile string
	reg      *workload.Registry
	srv      *Server
	metrics  *prometheus.Registry
	addr     string
	controlC tls.Certificate
}

func loopbackWorkload(ns, name, sa string, labels map[string]string) *workload.Workload {
	return &workload.Workload{Namespace: ns, Name: name, ServiceAccount: sa, Labels: labels, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.1")}}
}

func startMesh(t testing.TB, ws []*workload.Workload, mutate func(*Config)) *mesh {
	t.Helper()
	m := &mesh{t: t, ca: newMeshCA(t, testTD, nil), reg: workload.NewRegistry(), metrics: prometheus.NewRegistry()}
	m.reg.Replace(ws)
	// The control plane's serving certificate (with an IP SAN, for TLS
	// hostname checks) comes from its own PKI; workloads verify it with
	// XDSCAFile. Client SVIDs come from the mesh CA.
	m.cpCA = newTestCA(t, "control-plane")
	m.controlC = m.cpCA.tlsCert(t, "spiffe://"+testTD+"/ns/kordon-system/sa/kordon", net.ParseIP("127.0.0.1"))
	m.cpCAFile = filepath.Join(t.TempDir(), "control-plane-ca.pem")
	if err := os.WriteFile(m.cpCAFile, m.cpCA.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Registry:      m.reg,
		TrustDomain:   testTD,
		Authenticator: SVIDAuthenticator{TrustDomain: testTD},
		TLS: &tls.Config{
			Certificates: []tls.Certificate{m.controlC},
			ClientCAs:    m.ca.pool(),
			ClientAuth:   tls.VerifyClientCertIfGiven,
			MinVersion:   tls.VersionTLS12,
		},
		DebounceQuiet: 20 * time.Millisecond,
		DebounceMax:   200 * time.Millisecond,
		Logger:        testLogger(t),
		Metrics:       m.metrics,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m.srv = srv
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return m
}

// bootstrap writes an SVID for the workload and returns its bootstrap.
func (m *mesh) bootstrap(t testing.TB, nodeID string) ([]byte, svidFiles) {
	t.Helper()
	ns, pod, _ := strings.Cut(nodeID, "/")
	w, ok := m.reg.ByPod(ns, pod)
	if !ok {
		t.Fatalf("no workload %s", nodeID)
	}
	dir := filepath.Join(t.TempDir(), strings.ReplaceAll(nodeID, "/", "_"))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	files, _ := writeSVID(t, dir, m.ca, w.SPIFFEID(testTD))
	bs, err := ProxylessBootstrap(BootstrapConfig{
		ServerURI: m.addr, NodeID: nodeID,
		CertFile: files.cert, KeyFile: files.key, CAFile: files.ca, XDSCAFile: m.cpCAFile,
		RefreshInterval: 100 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return bs, files
}

// startEcho starts a proxyless gRPC xDS server (the health service) for
// nodeID on lis.
// connCounter counts the connections a gRPC server accepted.
type connCounter struct{ n atomic.Int64 }

func (c *connCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (c *connCounter) HandleRPC(context.Context, stats.RPCStats)                         {}
func (c *connCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (c *connCounter) HandleConn(_ context.Context, s stats.ConnStats) {
	if _, ok := s.(*stats.ConnBegin); ok {
		c.n.Add(1)
	}
}

func startEcho(t testing.TB, bs []byte, lis net.Listener) *connCounter {
	t.Helper()
	conns := &connCounter{}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	gs, err := grpcxds.NewGRPCServer(grpc.Creds(creds), grpc.StatsHandler(conns), grpcxds.BootstrapContentsForTesting(bs))
	if err != nil {
		t.Fatal(err)
	}
	healthpb.RegisterHealthServer(gs, health.NewServer())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); wg.Wait() })
	return conns
}

// dialXDS returns a proxyless gRPC client connection to target.
func dialXDS(t testing.TB, bs []byte, target string) *grpc.ClientConn {
	t.Helper()
	rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bs)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient("xds:///"+target, grpc.WithResolvers(rb), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func check(cc *grpc.ClientConn, opts ...grpc.CallOption) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}, opts...)
	return err
}

// eventually polls f until it returns nil or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	var err error
	for time.Now().Before(deadline) {
		if err = f(); err == nil {
			return time.Since(start)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s: not reached in %v: %v", what, d, err)
	return 0
}

func mustPolicies(t testing.TB, yaml string) *policy.Set {
	t.Helper()
	set, err := policy.Parse("test.yaml", []byte(yaml), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

func allowPolicy(sa string) string {
	return fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: echo-allow, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/%s"]}}]
    to: [{operation: {paths: ["/grpc.health.v1.Health/Check"]}}]
`, sa)
}

var errNotYet = errors.New("not yet")

func mustCompiled(t testing.TB) *policy.Compiled {
	t.Helper()
	c, err := policy.Compile(&policy.Set{}, policy.Target{Namespace: "shop"}, policy.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// echoService listens on loopback for the echo workload and makes it the
// service shop/echo on that port.
func (m *mesh) echoService(t testing.TB) (net.Listener, uint32) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint32(lis.Addr().(*net.TCPAddr).Port)
	if err := m.srv.SetServices([]Service{{Name: "echo", Namespace: "shop", Port: port, Selector: map[string]string{"app": "echo"}}}); err != nil {
		t.Fatal(err)
	}
	return lis, port
}
