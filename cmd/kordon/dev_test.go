package main

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/demo/exfilsim"
	"github.com/kordon-dev/kordon/internal/demo/meshdemo"
	"github.com/kordon-dev/kordon/internal/testtool"
	"github.com/kordon-dev/kordon/xds"
	"github.com/miekg/dns"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
)

// lockedBuffer is a bytes.Buffer safe for a writer goroutine and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// copyDir copies the regular files of src into a new temporary folder.
func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// devHarness is kordon dev started in-process on :0 ports.
type devHarness struct {
	d      *devServer
	dir    string
	stderr *lockedBuffer
	stdout *lockedBuffer
}

func startDevHarness(t *testing.T) *devHarness {
	t.Helper()
	return startDevHarnessWith(t, func(string) {})
}

// startDevHarnessWith lets edit change the copied dev folder before
// start, and opts the flags.
func startDevHarnessWith(t *testing.T, edit func(dir string), opts ...func(*devOptions)) *devHarness {
	t.Helper()
	h := &devHarness{dir: copyDir(t, "../../examples/dev"), stderr: &lockedBuffer{}, stdout: &lockedBuffer{}}
	edit(h.dir)
	o := devOptions{
		configDir:     h.dir,
		httpListen:    "127.0.0.1:0",
		xdsListen:     "127.0.0.1:0",
		dnsListen:     "127.0.0.1:0",
		queryLog:      filepath.Join(t.TempDir(), "queries.log"),
		upstreamZones: "../../examples/upstream/zones.yaml",
		stateDir:      t.TempDir(),
		addrFile:      filepath.Join(t.TempDir(), "addrs"),
		logLevel:      "info",
		pollInterval:  20 * time.Millisecond,
	}
	for _, opt := range opts {
		opt(&o)
	}
	d, err := startDev(context.Background(), o, h.stdout, h.stderr)
	if err != nil {
		t.Fatal(err)
	}
	h.d = d
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := d.Shutdown(ctx); err != nil {
			t.Error(err)
		}
	})
	return h
}

func (h *devHarness) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + h.d.httpAddr.String() + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func (h *devHarness) config(t *testing.T) configStatus {
	t.Helper()
	code, body := h.get(t, "/v1/config")
	if code != http.StatusOK {
		t.Fatalf("/v1/config: %d %s", code, body)
	}
	var st configStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// waitFor polls cond until it holds or 10 seconds pass.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testtool.WaitFor(t, what, cond)
}

// TestUnrelatedDevsStayReady: a second kordon dev on its own DNS address
// (another test, a second demo) is not a successor of the first, which
// stays ready; only a process serving the same DNS address supersedes.
func TestUnrelatedDevsStayReady(t *testing.T) {
	first := startDevHarness(t)
	second := startDevHarness(t)
	for i, h := range []*devHarness{first, second} {
		if code, body := h.get(t, "/readyz"); code != http.StatusOK {
			t.Errorf("dev %d /readyz: %d %q", i, code, body)
		}
	}
}

func TestDevStartsServesAndSummarises(t *testing.T) {
	h := startDevHarness(t)
	for _, path := range []string{"/healthz", "/readyz"} {
		if code, body := h.get(t, path); code != http.StatusOK || body != "ok\n" {
			t.Errorf("%s: %d %q", path, code, body)
		}
	}
	code, metrics := h.get(t, "/metrics")
	if code != http.StatusOK || !strings.Contains(metrics, "kordon_devconfig_config_valid 1") {
		t.Errorf("/metrics: %d, config_valid missing:\n%.400s", code, metrics)
	}
	st := h.config(t)
	if len(st.Workloads) != 5 || len(st.Policies) != 9 || st.Error != "" {
		t.Errorf("config: %d workloads, %d policies, error %q", len(st.Workloads), len(st.Policies), st.Error)
	}
	addrs, err := os.ReadFile(h.d.opts.addrFile)
	if err != nil {
		t.Fatal(err)
	}
	if want := "http=" + h.d.httpAddr.String() + "\n"; !strings.Contains(string(addrs), want) {
		t.Errorf("addr file %q lacks %q", addrs, want)
	}
	var out bytes.Buffer
	h.d.printSummary(&out)
	for _, want := range []string{
		"workloads (5):",
		"shop/report-worker       127.0.0.13       sa=report-worker  app=report-worker,tier=batch",
		"AuthorizationPolicies (5):",
		"kordon-system/deny-batch-to-pci      DENY",
		"EgressPolicies (4):",
		"shop/batch-watch                     Enforce, 0 allow, 1 deny, on detection: Quarantine",
		"shop/checkout-egress                 Audit, 2 allow, 0 deny",
		"http://" + h.d.httpAddr.String(),
		"upstream",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
}

func TestDevReloadsLiveAndKeepsLastGood(t *testing.T) {
	h := startDevHarness(t)
	first := h.config(t)
	egress := filepath.Join(h.dir, "egress.yaml")
	good, err := os.ReadFile(egress)
	if err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(string(good), "  allow:\n  - api.paygate.example\n  deny:", "  alow:\n  - api.paygate.example\n  deny:", 1)
	if bad == string(good) {
		t.Fatal("test edit did not apply")
	}
	if err := os.WriteFile(egress, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rejection", func() bool { return h.config(t).Error != "" })
	st := h.config(t)
	if !strings.Contains(st.Error, egress+`:25:3: spec.alow: unknown field (did you mean "allow"?)`) {
		t.Errorf("error %q lacks the position", st.Error)
	}
	if st.Digest != first.Digest {
		t.Error("a bad file replaced the config in force")
	}
	if !strings.Contains(h.stderr.String(), "config rejected, last good config stays in force") {
		t.Errorf("no rejection log line:\n%s", h.stderr.String())
	}
	if code, _ := h.get(t, "/readyz"); code != http.StatusOK {
		t.Error("not ready after a rejected change: the last good config is still in force")
	}

	fixed := strings.Replace(string(good), "api.shop.example\n", "api.shop.example\n  - fonts.shop.example\n", 1)
	if err := os.WriteFile(egress, []byte(fixed), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the reload", func() bool { s := h.config(t); return s.Error == "" && s.Digest != first.Digest })
	if !strings.Contains(h.stderr.String(), `"msg":"config reloaded"`) {
		t.Errorf("no reload log line:\n%s", h.stderr.String())
	}
}

func TestDevShutdownReleasesEverything(t *testing.T) {
	h := startDevHarness(t)
	addr := h.d.httpAddr.String()
	state := h.d.stateDir
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.d.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("%s still accepts connections after shutdown", addr)
	}
	if _, err := os.Stat(state); err != nil {
		t.Errorf("--state-dir removed: %v", err)
	}
}

func TestDevBadConfigFailsAtStart(t *testing.T) {
	dir := copyDir(t, "../../examples/dev")
	if err := os.WriteFile(filepath.Join(dir, "workloads.yaml"), []byte("- name: a\n  ips: [not-an-ip]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := startDev(context.Background(), devOptions{configDir: dir, httpListen: "127.0.0.1:0", xdsListen: "127.0.0.1:0", dnsListen: "127.0.0.1:0", upstreams: []string{"127.0.0.1:9"}, logLevel: "info"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "workloads.yaml:2:9: [0].ips[0]: invalid IP address \"not-an-ip\"") {
		t.Fatalf("err = %v", err)
	}
}

// TestDevServesXDS asks the dev xDS server, as a real ADS client, for the
// payments workload's server Listener: it exists only if the workloads,
// the services and the policies of the dev folder all reached xDS.
func TestDevServesXDS(t *testing.T) {
	h := startDevHarness(t)
	cc, err := grpc.NewClient(h.d.xdsAddr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	lname := xds.ServerListenerPrefix + "127.0.0.12:8082"
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "shop/payments"}, TypeUrl: resourcev3.ListenerType, ResourceNames: []string{lname}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 1 {
		t.Fatalf("%d listeners, want 1", len(resp.Resources))
	}
	var l listenerv3.Listener
	if err := resp.Resources[0].UnmarshalTo(&l); err != nil {
		t.Fatal(err)
	}
	if l.GetName() != lname {
		t.Errorf("listener %q, want %q", l.GetName(), lname)
	}
	// The RBAC of payments (ALLOW from checkout, DENY from the batch
	// worker mesh-wide) travels in the route configuration.
	if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "shop/payments"}, TypeUrl: resourcev3.ListenerType, ResourceNames: []string{lname}, VersionInfo: resp.VersionInfo, ResponseNonce: resp.Nonce}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the ACK in /v1/xds/status", func() bool {
		_, body := h.get(t, "/v1/xds/status")
		return strings.Contains(body, "shop/payments")
	})
}

// query sends one real DNS query from a workload's source address.
func (h *devHarness) query(t *testing.T, from, name string, qtype uint16) *dns.Msg {
	t.Helper()
	c := &dns.Client{Timeout: 5 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(from)}}}
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	r, _, err := c.Exchange(m, h.d.dnsAddr.String())
	if err != nil {
		t.Fatalf("query %s from %s: %v", name, from, err)
	}
	return r
}

// queryLogLines returns the query log's records, waiting until at least n
// were written (the log is batched).
func (h *devHarness) queryLogLines(t *testing.T, n int) []map[string]any {
	t.Helper()
	var recs []map[string]any
	waitFor(t, fmt.Sprintf("%d query log records", n), func() bool {
		b, err := os.ReadFile(h.d.opts.queryLog)
		if err != nil {
			t.Fatal(err)
		}
		recs = recs[:0]
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if line == "" {
				continue
			}
			var rec map[string]any
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("query log line %q: %v", line, err)
			}
			recs = append(recs, rec)
		}
		return len(recs) >= n
	})
	return recs
}

// TestDevDNSFlow is the flow of make demo, in process: real queries from
// the shop's workload addresses, answered, blocked with an EDE, audited.
func TestDevDNSFlow(t *testing.T) {
	h := startDevHarness(t)
	tests := []struct {
		name, from, qname string
		wantRcode         int
		wantAnswer        string
		wantEDE           string // substring of the EDE text; "" for none
		wantVerdict       string
		wantPolicy        string
	}{
		{name: "frontend allowed", from: "127.0.0.10", qname: "api.shop.example", wantRcode: dns.RcodeSuccess, wantAnswer: "198.51.100.10", wantVerdict: "allowed", wantPolicy: "shop/frontend-egress"},
		{name: "frontend CDN wildcard", from: "127.0.0.10", qname: "img.cdn.shopassets.example", wantRcode: dns.RcodeSuccess, wantAnswer: "198.51.100.21", wantVerdict: "allowed", wantPolicy: "shop/frontend-egress"},
		{name: "frontend not allowed", from: "127.0.0.10", qname: "tracker.adnet.example", wantRcode: dns.RcodeNameError, wantEDE: "shop/frontend-egress", wantVerdict: "blocked", wantPolicy: "shop/frontend-egress"},
		{name: "payments allowed", from: "127.0.0.12", qname: "api.paygate.example", wantRcode: dns.RcodeSuccess, wantAnswer: "203.0.113.10", wantVerdict: "allowed", wantPolicy: "shop/payments-egress"},
		{name: "payments deny wins", from: "127.0.0.12", qname: "eu.sandbox.paygate.example", wantRcode: dns.RcodeNameError, wantEDE: "shop/payments-egress", wantVerdict: "blocked", wantPolicy: "shop/payments-egress"},
		{name: "checkout audit", from: "127.0.0.11", qname: "collect.analytics.example", wantRcode: dns.RcodeSuccess, wantAnswer: "203.0.113.70", wantVerdict: "audit", wantPolicy: "shop/checkout-egress"},
		{name: "catalog no policy", from: "127.0.0.14", qname: "collect.analytics.example", wantRcode: dns.RcodeSuccess, wantAnswer: "203.0.113.70", wantVerdict: "allowed"},
		{name: "worker denied", from: "127.0.0.13", qname: "tracker.adnet.example", wantRcode: dns.RcodeNameError, wantEDE: "shop/batch-watch", wantVerdict: "blocked", wantPolicy: "shop/batch-watch"},
	}
	for _, tc := range tests {
		r := h.query(t, tc.from, tc.qname, dns.TypeA)
		if r.Rcode != tc.wantRcode {
			t.Errorf("%s: rcode %s, want %s", tc.name, dns.RcodeToString[r.Rcode], dns.RcodeToString[tc.wantRcode])
		}
		var got []string
		for _, rr := range r.Answer {
			if a, ok := rr.(*dns.A); ok {
				got = append(got, a.A.String())
			}
		}
		if tc.wantAnswer != "" && strings.Join(got, ",") != tc.wantAnswer {
			t.Errorf("%s: answers %v, want %s", tc.name, got, tc.wantAnswer)
		}
		ede := exfilsim.EDE(r)
		switch {
		case tc.wantEDE == "" && ede != nil:
			t.Errorf("%s: unexpected EDE %q", tc.name, ede.ExtraText)
		case tc.wantEDE != "" && (ede == nil || !strings.Contains(ede.ExtraText, tc.wantEDE)):
			t.Errorf("%s: EDE %v, want one naming %s", tc.name, ede, tc.wantEDE)
		}
	}
	recs := h.queryLogLines(t, len(tests))
	for _, tc := range tests {
		// Records are written after the answers, so their order may
		// differ from the queries': find each by client and name.
		var rec map[string]any
		for _, r := range recs {
			if c, _ := r["client"].(map[string]any); c["ip"] == tc.from && r["qname"] == tc.qname+"." {
				rec = r
			}
		}
		if rec == nil || rec["verdict"] != tc.wantVerdict {
			t.Errorf("%s: log record %v", tc.name, rec)
			continue
		}
		if pol, _ := rec["policy"].(string); pol != tc.wantPolicy {
			t.Errorf("%s: logged policy %q, want %q", tc.name, pol, tc.wantPolicy)
		}
	}
	// A change to the folder reaches the resolver: allow the tracker for
	// the frontend and the same query is answered.
	egress := filepath.Join(h.dir, "egress.yaml")
	b, err := os.ReadFile(egress)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(egress, []byte(strings.Replace(string(b), "  - api.shop.example\n", "  - api.shop.example\n  - tracker.adnet.example\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the frontend to resolve the tracker after the change", func() bool {
		return h.query(t, "127.0.0.10", "tracker.adnet.example", dns.TypeA).Rcode == dns.RcodeSuccess
	})
}

// TestDevMeshCalls runs the gRPC part of the demo in process: payments as a
// proxyless xDS server with its SVID files from dev mode's CA, called by the
// checkout (allowed by shop/payments-from-checkout) and by the compromised
// worker (denied mesh-wide by kordon-system/deny-batch-to-pci).
func TestDevMeshCalls(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.12:0")
	if err != nil {
		t.Fatal(err)
	}
	port := lis.Addr().(*net.TCPAddr).Port
	h := startDevHarnessWith(t, func(dir string) {
		svc := fmt.Sprintf("- {name: payments, namespace: shop, port: %d, protocol: grpc, selector: {app: payments}}\n", port)
		if err := os.WriteFile(filepath.Join(dir, "services.yaml"), []byte(svc), 0o644); err != nil {
			t.Fatal(err)
		}
	})
	bootstrap := func(name string) []byte {
		dir := h.d.ident.svidDir("shop", name)
		bs, err := xds.ProxylessBootstrap(xds.BootstrapConfig{
			ServerURI: h.d.xdsAddr.String(), NodeID: "shop/" + name, InsecureXDS: true,
			CertFile: filepath.Join(dir, identity.CertFile), KeyFile: filepath.Join(dir, identity.KeyFile), CAFile: filepath.Join(dir, identity.BundleFile),
		})
		if err != nil {
			t.Fatal(err)
		}
		return bs
	}
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	gs, err := grpcxds.NewGRPCServer(grpc.Creds(creds), grpcxds.BootstrapContentsForTesting(bootstrap("payments")))
	if err != nil {
		t.Fatal(err)
	}
	meshdemo.Register(gs)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-served })

	dial := func(name string) *grpc.ClientConn {
		rb, err := grpcxds.NewXDSResolverWithConfigForTesting(bootstrap(name))
		if err != nil {
			t.Fatal(err)
		}
		cc, err := grpc.NewClient(fmt.Sprintf("xds:///payments.shop:%d", port), grpc.WithResolvers(rb), grpc.WithTransportCredentials(mustClientCreds(t)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		return cc
	}
	charge := func(cc *grpc.ClientConn) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		out, err := meshdemo.Charge(ctx, cc, "order-7")
		return out.GetFields()["caller"].GetStringValue(), err
	}
	checkout, worker := dial("checkout"), dial("report-worker")
	var caller string
	waitFor(t, "checkout's call to succeed", func() bool {
		c, err := charge(checkout)
		caller = c
		return err == nil
	})
	if caller != "spiffe://cluster.local/ns/shop/sa/checkout" {
		t.Errorf("payments saw caller %q", caller)
	}
	waitFor(t, "the worker's call to be denied", func() bool {
		_, err := charge(worker)
		return status.Code(err) == codes.PermissionDenied
	})
}

func mustClientCreds(t *testing.T) credentials.TransportCredentials {
	t.Helper()
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	return creds
}

// TestDevWorkloadAPI fetches SVIDs over the per-workload Workload API
// sockets with go-spiffe's own client, and checks a removed workload's
// socket goes away.
func TestDevWorkloadAPI(t *testing.T) {
	h := startDevHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	path := h.d.sockets.Path("shop", "checkout")
	svid, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("unix://"+path))
	if err != nil {
		t.Fatal(err)
	}
	if got := svid.ID.String(); got != "spiffe://cluster.local/ns/shop/sa/checkout" {
		t.Errorf("SVID for %s", got)
	}
	// The SVID chains to the same root as the files written for xDS.
	bundle, err := os.ReadFile(filepath.Join(h.d.ident.svidDir("shop", "checkout"), identity.BundleFile))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(bundle) {
		t.Fatal("no certificate in bundle.pem")
	}
	if _, err := svid.Certificates[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("Workload API SVID does not chain to the bundle: %v", err)
	}

	wl := filepath.Join(h.dir, "workloads.yaml")
	b, err := os.ReadFile(wl)
	if err != nil {
		t.Fatal(err)
	}
	i := strings.Index(string(b), "- name: catalog")
	if i < 0 {
		t.Fatal("catalog not in workloads.yaml")
	}
	if err := os.WriteFile(wl, b[:i], 0o644); err != nil {
		t.Fatal(err)
	}
	gone := h.d.sockets.Path("shop", "catalog")
	waitFor(t, "the catalog's socket to go", func() bool {
		_, err := os.Stat(gone)
		return os.IsNotExist(err)
	})
	// The socket follows the registry (identity.WorkloadSockets.Run), so
	// it may go before the snapshot's apply reaches the SVID files.
	waitFor(t, "the catalog's SVID files to go", func() bool {
		_, err := os.Stat(h.d.ident.svidDir("shop", "catalog"))
		return os.IsNotExist(err)
	})
}

// TestDevExfiltrationAlertAndQuarantine is the end of make demo, in
// process: the compromised worker leaks a file over DNS, the detector
// raises an alert in the feed, and the worker's EgressPolicy (action
// Quarantine) blocks that domain for the worker only.
func TestDevExfiltrationAlertAndQuarantine(t *testing.T) {
	h := startDevHarness(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := exfilsim.Run(ctx, exfilsim.Config{
		Server: h.d.dnsAddr.String(), Source: netip.MustParseAddr("127.0.0.13"),
		Zone: "telemetry-cdn.example", Data: exfilsim.FakeSecret(6000),
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent != 200 || res.Failed != 0 {
		t.Fatalf("exfiltration result %+v", res)
	}
	if err := h.d.inspector.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	var alerts []alert.Alert
	waitFor(t, "an exfiltration alert in /v1/alerts", func() bool {
		code, body := h.get(t, "/v1/alerts?kind=exfiltration")
		if code != http.StatusOK {
			t.Fatalf("/v1/alerts: %d %s", code, body)
		}
		alerts = decodeAlerts(t, body)
		return len(alerts) > 0
	})
	a := alerts[0]
	if a.Namespace != "shop" || a.Pod != "report-worker" || a.SPIFFEID != "spiffe://cluster.local/ns/shop/sa/report-worker" || a.Domain != "telemetry-cdn.example" || a.ClientIP != "127.0.0.13" {
		t.Errorf("alert %+v", a)
	}
	if !strings.Contains(a.Action, "quarantine") {
		t.Errorf("alert action %q, want a quarantine (shop/batch-watch)", a.Action)
	}
	// Quarantined for the worker: a new name under the domain is blocked...
	r := h.query(t, "127.0.0.13", "x1.telemetry-cdn.example", dns.TypeA)
	if ede := exfilsim.EDE(r); r.Rcode != dns.RcodeNameError || ede == nil {
		t.Errorf("worker after quarantine: rcode %s, EDE %v", dns.RcodeToString[r.Rcode], ede)
	}
	// ...but only for the worker.
	if r := h.query(t, "127.0.0.14", "x1.telemetry-cdn.example", dns.TypeA); r.Rcode != dns.RcodeSuccess {
		t.Errorf("catalog: rcode %s, want NOERROR", dns.RcodeToString[r.Rcode])
	}
	if code, body := h.get(t, "/v1/quarantines"); code != http.StatusOK || !strings.Contains(body, "telemetry-cdn.example") {
		t.Errorf("/v1/quarantines: %d %s", code, body)
	}
}

// decodeAlerts reads a GET /v1/alerts answer: {"alerts": [...]}.
func decodeAlerts(t *testing.T, body string) []alert.Alert {
	t.Helper()
	var out struct {
		Alerts []alert.Alert `json:"alerts"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		t.Fatalf("/v1/alerts body %q: %v", body, err)
	}
	return out.Alerts
}

// TestDevListenFlagsCheckedFirst: a listen address kordon dev refuses is
// refused before anything is written to the state folder (no CA, no SVIDs).
func TestDevListenFlagsCheckedFirst(t *testing.T) {
	t.Parallel()
	const notLoopback = " is not a loopback address: kordon dev serves unauthenticated and listens on 127.0.0.0/8 or ::1 only"
	for _, tc := range []struct {
		name           string
		http, xds, dns string
		firewall       bool
		wantErr        string
	}{
		{name: "http unspecified", http: "0.0.0.0:0", wantErr: "--http-listen: 0.0.0.0:0" + notLoopback},
		{name: "xds unspecified", xds: "[::]:0", wantErr: "--xds-listen: [::]:0" + notLoopback},
		{name: "dns not loopback", dns: "192.0.2.1:53", wantErr: "--dns-listen: 192.0.2.1:53" + notLoopback},
		{name: "dns no port", dns: "127.0.0.1", wantErr: "--dns-listen: address 127.0.0.1: missing port in address"},
		{name: "firewall dns loopback", firewall: true, wantErr: "--dns-listen 127.0.0.1:0: with --egress-firewall the workloads' DNS is redirected to this address, so it must be one they reach (this namespace's address on their network, e.g. 10.96.0.53:53), not loopback or unspecified"},
		{name: "firewall dns port 0", firewall: true, dns: "10.96.0.53:0", wantErr: "--dns-listen 10.96.0.53:0: with --egress-firewall the port must be fixed (DNS is redirected to it)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			state := t.TempDir()
			o := devOptions{configDir: "../../examples/dev", stateDir: state, httpListen: "127.0.0.1:0", xdsListen: "127.0.0.1:0", dnsListen: "127.0.0.1:0", upstreams: []string{"127.0.0.1:9"}, logLevel: "info"}
			for dst, v := range map[*string]string{&o.httpListen: tc.http, &o.xdsListen: tc.xds, &o.dnsListen: tc.dns} {
				if v != "" {
					*dst = v
				}
			}
			o.egress.firewall = tc.firewall
			_, err := startDev(context.Background(), o, io.Discard, io.Discard)
			if err == nil || err.Error() != tc.wantErr {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if ents, err := os.ReadDir(state); err != nil || len(ents) != 0 {
				t.Errorf("state folder after refusal: %v %v", ents, err)
			}
		})
	}
}
