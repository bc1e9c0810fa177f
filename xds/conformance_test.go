package xds

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	jwtauthnv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/jwt_authn/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/emptypb"

	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds/adsclient"
)

// The tests in this file load the exact output of `kordon policy compile`
// (policy.Compiled.FiltersJSON, parsed back from its bytes) into real
// grpc-go xDS servers, served by a bare go-control-plane ADS server with
// none of kordon's snapshot logic in between: the compile output is a
// contract other tools load into proxyless gRPC.

// rawPlane is a go-control-plane ADS server over plaintext loopback that
// serves one Listener per node, and records NACKs.
type rawPlane struct {
	cache cachev3.SnapshotCache
	addr  string

	mu    sync.Mutex
	nacks map[string]string // node id -> error detail
}

func startRawPlane(t *testing.T) *rawPlane {
	t.Helper()
	p := &rawPlane{cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), nacks: map[string]string{}}
	cb := serverv3.CallbackFuncs{StreamRequestFunc: func(_ int64, req *discoveryv3.DiscoveryRequest) error {
		if req.GetErrorDetail() != nil {
			p.mu.Lock()
			p.nacks[req.GetNode().GetId()] = req.GetErrorDetail().GetMessage()
			p.mu.Unlock()
		}
		return nil
	}}
	ctx, cancel := context.WithCancel(context.Background())
	gs := grpc.NewServer()
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(gs, serverv3.NewServer(ctx, p.cache, cb))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = lis.Addr().String()
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(func() { cancel(); gs.Stop() })
	return p
}

func (p *rawPlane) nack(node string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.nacks[node]
}

// parseCompiledHTTPFilters reads FiltersJSON output back into Envoy
// HttpFilters, as a tool consuming `kordon policy compile` would.
func parseCompiledHTTPFilters(t testing.TB, out []byte) []*hcmv3.HttpFilter {
	t.Helper()
	var doc struct {
		HTTPFilters []json.RawMessage `json:"httpFilters"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		t.Fatal(err)
	}
	var fs []*hcmv3.HttpFilter
	for _, raw := range doc.HTTPFilters {
		f := &hcmv3.HttpFilter{}
		if err := protojson.Unmarshal(raw, f); err != nil {
			t.Fatalf("compile output is not an Envoy HttpFilter: %v\n%s", err, raw)
		}
		fs = append(fs, f)
	}
	return fs
}

// compiledServer is a grpc-go xDS server whose inbound Listener carries a
// compile output's HTTP filters (then the router) in its
// HttpConnectionManager, with mTLS from the mesh CA.
type compiledServer struct {
	addr netip.AddrPort
	ca   *meshCA
}

// serveCompiled starts a grpc-go xDS server for node with filters and waits
// until it serves; it fails the test if grpc-go rejects the Listener.
func serveCompiled(t *testing.T, p *rawPlane, ca *meshCA, node string, filters []*hcmv3.HttpFilter) *compiledServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(lis.Addr().String())
	name := ServerListenerPrefix + addr.String()
	l := serverListener(name, addr, buildOptions{trustDomain: testTD, certProvider: DefaultCertProviderInstance})
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "inbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			Name: "inbound",
			VirtualHosts: []*routev3.VirtualHost{{Name: "inbound", Domains: []string{"*"}, Routes: []*routev3.Route{{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
			}}}},
		}},
		HttpFilters: append(append([]*hcmv3.HttpFilter{}, filters...), routerFilter()),
	}
	l.FilterChains[0].Filters = []*listenerv3.Filter{{Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}}
	if err := l.ValidateAll(); err != nil {
		t.Fatal(err)
	}
	snap, err := cachev3.NewSnapshot("1", map[resourcev3.Type][]types.Resource{resourcev3.ListenerType: {l}})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cache.SetSnapshot(context.Background(), node, snap); err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "svid")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	files, _ := writeSVID(t, dir, ca, "spiffe://"+testTD+"/ns/foo/sa/httpbin")
	bs, err := ProxylessBootstrap(BootstrapConfig{ServerURI: p.addr, NodeID: node, InsecureXDS: true,
		CertFile: files.cert, KeyFile: files.key, CAFile: files.ca})
	if err != nil {
		t.Fatal(err)
	}
	serving := make(chan error, 4)
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	gs, err := grpcxds.NewGRPCServer(grpc.Creds(creds), grpcxds.BootstrapContentsForTesting(bs),
		grpcxds.ServingModeCallback(func(_ net.Addr, a grpcxds.ServingModeChangeArgs) {
			if a.Mode == connectivity.ServingModeServing {
				serving <- nil
			} else if a.Err != nil {
				serving <- a.Err
			}
		}),
		// Every method exists: the RBAC filters alone decide.
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			var in emptypb.Empty
			if err := stream.RecvMsg(&in); err != nil {
				return err
			}
			return stream.SendMsg(&emptypb.Empty{})
		}))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); wg.Wait() })
	deadline := time.After(10 * time.Second)
	for {
		select {
		case err := <-serving:
			if err == nil {
				return &compiledServer{addr: addr, ca: ca}
			}
			if n := p.nack(node); n != "" {
				t.Fatalf("grpc-go rejected the compile output: %s", n)
			}
		case <-time.After(20 * time.Millisecond):
			if n := p.nack(node); n != "" {
				t.Fatalf("grpc-go rejected the compile output: %s", n)
			}
		case <-deadline:
			t.Fatalf("grpc-go xDS server for %s not serving after 10s (nack: %q)", node, p.nack(node))
		}
	}
}

// client dials the server as spiffeID with :authority host.
func (s *compiledServer) client(t testing.TB, spiffeID, host string) *grpc.ClientConn {
	t.Helper()
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{s.ca.tlsCert(t, spiffeID)},
		// The server's identity is not under test here.
		InsecureSkipVerify: true, //nolint:gosec
	})
	cc, err := grpc.NewClient(s.addr.String(), grpc.WithTransportCredentials(creds), grpc.WithAuthority(host))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// decide makes one RPC and reports grpc-go's decision: ALLOW (OK) or DENY
// (PermissionDenied).
func decide(t testing.TB, cc *grpc.ClientConn, path string, headers map[string]string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for k, v := range headers {
		ctx = metadata.AppendToOutgoingContext(ctx, k, v)
	}
	err := cc.Invoke(ctx, path, &emptypb.Empty{}, &emptypb.Empty{})
	switch status.Code(err) {
	case codes.OK:
		return "ALLOW"
	case codes.PermissionDenied:
		return "DENY"
	}
	t.Fatalf("RPC %s: %v", path, err)
	return ""
}

// conformanceRequest is one generated request.
type conformanceRequest struct {
	principal, host, path string
	headers               map[string]string
}

func (r conformanceRequest) String() string {
	var hs []string
	for k, v := range r.headers {
		hs = append(hs, k+"="+v)
	}
	sort.Strings(hs)
	return fmt.Sprintf("principal=%s host=%s path=%s headers=%v", r.principal, r.host, r.path, hs)
}

// checkDecisions sends reqs to s and compares grpc-go's decisions with
// policy.Explain's for the same set: what `kordon policy explain` says is
// what the data plane does.
func checkDecisions(t *testing.T, s *compiledServer, set *policy.Set, target policy.Target, reqs []conformanceRequest, opts policy.CompileOptions) map[string]string {
	t.Helper()
	conns := map[[2]string]*grpc.ClientConn{}
	got := map[string]string{}
	for _, r := range reqs {
		key := [2]string{r.principal, r.host}
		cc, ok := conns[key]
		if !ok {
			cc = s.client(t, r.principal, r.host)
			conns[key] = cc
		}
		engine := decide(t, cc, r.path, r.headers)
		d, err := policy.Explain(set, target, policy.Request{
			Principal: r.principal, SourceIP: s.addr.Addr(), DestinationIP: s.addr.Addr(), Port: uint32(s.addr.Port()),
			Method: "POST", Path: r.path, Host: r.host, Headers: r.headers,
		}, opts)
		if err != nil {
			t.Fatal(err)
		}
		if d.Decision != engine {
			t.Errorf("%v: grpc-go decided %s, explain %s (%s)", r, engine, d.Decision, d.Reason)
		}
		got[r.String()] = engine
	}
	return got
}

// candidates generates requests for a policy set: principals, hosts,
// paths and header values taken from its rules (wildcards filled in), plus
// a few that match none of them.
func candidates(set *policy.Set) []conformanceRequest {
	principals := map[string]bool{"spiffe://cluster.local/ns/foo/sa/sleep": true, "spiffe://cluster.local/ns/bar/sa/default": true}
	hosts := map[string]bool{"httpbin.foo": true}
	paths := map[string]bool{"/grpc.health.v1.Health/Check": true, "/other/thing": true}
	headerSets := []map[string]string{nil}
	fill := func(v string) string { return strings.ReplaceAll(v, "*", "x") }
	pathOf := func(v string) string {
		v = strings.ReplaceAll(strings.ReplaceAll(v, "{**}", "a/b"), "{*}", "a")
		return fill(v)
	}
	for _, p := range set.Authorization {
		for _, r := range p.Spec.Rules {
			for _, f := range r.From {
				s := f.Source
				for _, v := range append(append([]string{}, s.Principals...), s.NotPrincipals...) {
					if rest, ok := strings.CutPrefix(v, "*"); ok {
						v = "cluster.local" + rest // a suffix match: any trust domain
					}
					if !strings.HasPrefix(v, "spiffe://") {
						v = "spiffe://" + v
					}
					// The mesh CA signs only its own trust domain.
					if id, err := spiffeid.FromString(fill(v)); err == nil && id.TrustDomain().Name() == testTD {
						principals[id.String()] = true
					}
				}
				for _, v := range append(append([]string{}, s.Namespaces...), s.NotNamespaces...) {
					principals["spiffe://cluster.local/ns/"+fill(v)+"/sa/default"] = true
				}
				for _, v := range append(append([]string{}, s.ServiceAccounts...), s.NotServiceAccounts...) {
					ns, name, ok := strings.Cut(v, "/")
					if !ok {
						ns, name = p.Metadata.Namespace, v
					}
					principals["spiffe://cluster.local/ns/"+ns+"/sa/"+name] = true
				}
			}
			for _, to := range r.To {
				o := to.Operation
				for _, v := range append(append([]string{}, o.Hosts...), o.NotHosts...) {
					hosts[strings.TrimPrefix(strings.TrimSuffix(fill(v), ":x"), "x")] = true
					hosts[strings.ToUpper(fill(v))] = true
					hosts[strings.TrimSuffix(strings.TrimSuffix(v, "*"), ":")+":8080"] = true
				}
				for _, v := range append(append([]string{}, o.Paths...), o.NotPaths...) {
					paths[pathOf(v)] = true
					paths[pathOf(v)+"/m"] = true
				}
			}
			for _, w := range r.When {
				if h, ok := strings.CutPrefix(w.Key, "request.headers["); ok {
					h = strings.ToLower(strings.TrimSuffix(h, "]"))
					for _, v := range append(append([]string{}, w.Values...), w.NotValues...) {
						headerSets = append(headerSets, map[string]string{h: fill(v)})
					}
				}
			}
		}
	}
	var reqs []conformanceRequest
	for _, pr := range sortedKeys(principals) {
		for _, h := range sortedKeys(hosts) {
			for _, pa := range sortedKeys(paths) {
				if !strings.HasPrefix(pa, "/") || !strings.Contains(pa[1:], "/") {
					continue // grpc-go refuses a method that is not /service/method before any filter runs
				}
				for _, hs := range headerSets {
					reqs = append(reqs, conformanceRequest{principal: pr, host: h, path: pa, headers: hs})
				}
			}
		}
	}
	return reqs
}

func sortedKeys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		if k != "" {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// compileOutput runs what `kordon policy compile -n foo -l app=httpbin,version=v1`
// runs and returns its exact bytes.
func compileOutput(t testing.TB, set *policy.Set, target policy.Target, opts policy.CompileOptions) []byte {
	t.Helper()
	c, err := policy.Compile(set, target, opts)
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.FiltersJSON()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// serveGoldenCase serves the compile output of golden case name of
// package policy, for goldenTarget, on a grpc-go xDS server of its own.
func serveGoldenCase(t *testing.T, name string, opts policy.CompileOptions) (*policy.Set, *compiledServer) {
	t.Helper()
	set, err := policy.LoadPaths(policy.LoadOptions{}, "../policy/testdata/"+name+"-in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out := compileOutput(t, set, goldenTarget, opts)
	return set, serveCompiled(t, startRawPlane(t), newMeshCA(t, testTD, nil), "foo/httpbin", parseCompiledHTTPFilters(t, out))
}

// goldenTarget is the proxy of Istio's builder tests (and of policy's
// golden cases): namespace foo, app=httpbin, version=v1.
var goldenTarget = policy.Target{Namespace: "foo", Labels: map[string]string{"app": "httpbin", "version": "v1"}}

// TestCompileOutputDenyAllowAudit loads the compile output of a workload
// with DENY, ALLOW and AUDIT policies at once (three RBAC filters in one
// chain, which grpc-go NACKs when their names repeat) into a grpc-go xDS
// server, and checks its decisions.
func TestCompileOutputDenyAllowAudit(t *testing.T) {
	t.Parallel()
	set := mustPolicies(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: foo}
spec:
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin.*"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  action: ALLOW
  rules: [{from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: foo}
spec:
  action: AUDIT
  rules: [{}]
`)
	out := compileOutput(t, set, goldenTarget, policy.CompileOptions{})
	filters := parseCompiledHTTPFilters(t, out)
	var names []string
	for _, f := range filters {
		names = append(names, f.Name)
	}
	if got, want := strings.Join(names, ","), "envoy.filters.http.rbac.audit,envoy.filters.http.rbac.deny,envoy.filters.http.rbac.allow"; got != want {
		t.Fatalf("filter names %s, want %s", got, want)
	}
	p := startRawPlane(t)
	s := serveCompiled(t, p, newMeshCA(t, testTD, nil), "foo/httpbin", filters)
	sleep := "spiffe://cluster.local/ns/foo/sa/sleep"
	other := "spiffe://cluster.local/ns/bar/sa/default"
	cases := []struct {
		name, principal, path, want string
	}{
		{name: "allowed principal", principal: sleep, path: "/shop.Catalog/List", want: "ALLOW"},
		{name: "DENY before ALLOW", principal: sleep, path: "/admin.Users/Delete", want: "DENY"},
		{name: "no ALLOW matches", principal: other, path: "/shop.Catalog/List", want: "DENY"},
	}
	for _, tc := range cases {
		reqs := []conformanceRequest{{principal: tc.principal, host: "httpbin.foo", path: tc.path}}
		got := checkDecisions(t, s, set, goldenTarget, reqs, policy.CompileOptions{})
		if d := got[reqs[0].String()]; d != tc.want {
			t.Errorf("%s: %s, want %s", tc.name, d, tc.want)
		}
	}
}

// TestCompileGoldenConformance feeds every golden case of package policy
// (policy/testdata/*-in.yaml) through the compiler into a real grpc-go
// xDS server: grpc-go must accept every output, and decide every generated
// request as policy.Explain does.
func TestCompileGoldenConformance(t *testing.T) {
	t.Parallel()
	ins, err := filepath.Glob("../policy/testdata/*-in.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(ins) < 40 {
		t.Fatalf("only %d golden cases", len(ins))
	}
	p := startRawPlane(t)
	ca := newMeshCA(t, testTD, nil)
	for _, in := range ins {
		name := strings.TrimSuffix(filepath.Base(in), "-in.yaml")
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			set, err := policy.LoadPaths(policy.LoadOptions{}, in)
			if err != nil {
				t.Fatal(err)
			}
			// As policy's TestCompileGolden.
			opts := policy.CompileOptions{DynamicMetadata: strings.HasSuffix(name, "-dynamic-metadata"), JWTAuthn: strings.HasSuffix(name, "-jwt-authn")}
			if opts.JWTAuthn {
				t.Skip("Envoy only: grpc-go has no jwt_authn filter")
			}
			out := compileOutput(t, set, goldenTarget, opts)
			s := serveCompiled(t, p, ca, "golden/"+name, parseCompiledHTTPFilters(t, out))
			checkDecisions(t, s, set, goldenTarget, candidates(set), opts)
		})
	}
}

// TestCompileOutputDryRun checks on grpc-go that dry-run policies are
// never enforced (Istio: pilot/pkg/security/authz/builder/builder.go,
// Builder.build puts them in shadowRules and drops the enforced rules of
// an action that has only dry-run policies): a dry-run DENY denies
// nothing, a dry-run ALLOW makes nothing denied, while the enforced DENY
// beside them still denies. Explain reports what the dry-run policies
// would have done.
func TestCompileOutputDryRun(t *testing.T) {
	t.Parallel()
	set, s := serveGoldenCase(t, "dry-run-allow-and-deny", policy.CompileOptions{})
	sleep := "spiffe://cluster.local/ns/foo/sa/sleep"
	other := "spiffe://cluster.local/ns/bar/sa/default"
	cases := []struct {
		name, principal, path, want string
		dryRun                      []policy.DryRunResult
	}{
		{name: "dry-run DENY matches: not denied", principal: sleep, path: "/shop.Admin/Delete", want: "ALLOW",
			dryRun: []policy.DryRunResult{{Action: policy.ActionDeny, Decision: "DENY", Rule: "ns[foo]-policy[deny-admin-dry-run]-rule[0]"}, {Action: policy.ActionAllow, Decision: "ALLOW", Rule: "ns[foo]-policy[allow-dry-run]-rule[0]"}}},
		{name: "dry-run ALLOW does not match: not denied", principal: other, path: "/shop.Catalog/List", want: "ALLOW",
			dryRun: []policy.DryRunResult{{Action: policy.ActionDeny, Decision: "ALLOW"}, {Action: policy.ActionAllow, Decision: "DENY"}}},
		{name: "enforced DENY still denies", principal: other, path: "/shop.Debug/Dump", want: "DENY",
			dryRun: []policy.DryRunResult{{Action: policy.ActionDeny, Decision: "ALLOW"}, {Action: policy.ActionAllow, Decision: "DENY"}}},
	}
	for _, tc := range cases {
		req := conformanceRequest{principal: tc.principal, host: "httpbin.foo", path: tc.path}
		got := checkDecisions(t, s, set, goldenTarget, []conformanceRequest{req}, policy.CompileOptions{})
		if d := got[req.String()]; d != tc.want {
			t.Errorf("%s: grpc-go decided %s, want %s", tc.name, d, tc.want)
		}
		d, err := policy.Explain(set, goldenTarget, policy.Request{Principal: tc.principal, Method: "POST", Path: tc.path}, policy.CompileOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if fmt.Sprint(d.DryRun) != fmt.Sprint(tc.dryRun) {
			t.Errorf("%s: explain dry-run %v, want %v", tc.name, d.DryRun, tc.dryRun)
		}
	}
}

// TestProxylessDryRun pushes dry-run policies through kordon's own xDS
// server (RBACPerRoute overrides) to a proxyless gRPC server: once the
// enforced ALLOW that denied the intruder becomes a dry-run one, and a
// dry-run DENY of every caller is added, nobody is denied.
func TestProxylessDryRun(t *testing.T) {
	t.Parallel()
	m := startMesh(t, shopWorkloads(), nil)
	lis, port := m.echoService(t)
	m.srv.SetPolicies(mustPolicies(t, allowPolicy("frontend")))
	echoBS, _ := m.bootstrap(t, "shop/echo-0")
	startEcho(t, echoBS, lis)
	target := fmt.Sprintf("echo.shop:%d", port)
	frontBS, _ := m.bootstrap(t, "shop/frontend-0")
	front := dialXDS(t, frontBS, target)
	intruderBS, _ := m.bootstrap(t, "shop/intruder-0")
	intruder := dialXDS(t, intruderBS, target)
	eventually(t, 20*time.Second, "intruder denied by the enforced ALLOW", func() error {
		if err := check(intruder); status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	dryRun := strings.Replace(allowPolicy("frontend"), "metadata: {name: echo-allow, namespace: shop}",
		"metadata: {name: echo-allow, namespace: shop, annotations: {istio.io/dry-run: \"true\"}}", 1) + `---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-everyone, namespace: shop, annotations: {istio.io/dry-run: "true"}}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules: [{}]
`
	m.srv.SetPolicies(mustPolicies(t, dryRun))
	eventually(t, 20*time.Second, "intruder allowed once the ALLOW is dry-run", func() error { return check(intruder) })
	if err := check(front); err != nil {
		t.Fatalf("frontend under a dry-run DENY of everyone: %v", err)
	}
}

// TestCompileOutputPathTemplates checks Istio's path templates on grpc-go:
// {*} is exactly one segment, {**} any number of segments (Istio:
// pkg/config/security/security.go, pilot/pkg/security/authz/model/generator.go
// pathGenerator; kordon's RE2 form of Envoy's uri_template).
func TestCompileOutputPathTemplates(t *testing.T) {
	t.Parallel()
	set, s := serveGoldenCase(t, "allow-path-templates", policy.CompileOptions{})
	sleep := "spiffe://cluster.local/ns/foo/sa/sleep"
	for path, want := range map[string]string{
		"/shop.Catalog/List":        "ALLOW", // {*}: one segment
		"/shop.Catalog/List/x":      "DENY",  // not two
		"/v1/books/items/a":         "ALLOW", // {**}: one segment
		"/v1/books/items/a/b/c":     "ALLOW", // or several
		"/v1/books/shelf/items/a":   "DENY",  // {*} in the middle is one segment
		"/shop.Catalog/Internal":    "DENY",  // notPaths /{*}/Internal
		"/shop.Catalog/Internal%2F": "ALLOW", // pct-encoded is a literal character
	} {
		req := conformanceRequest{principal: sleep, host: "httpbin.foo", path: path}
		if got := checkDecisions(t, s, set, goldenTarget, []conformanceRequest{req}, policy.CompileOptions{})[req.String()]; got != want {
			t.Errorf("%s: %s, want %s", path, got, want)
		}
	}
}

// TestCompileOutputJWTFailsClosed: proxyless gRPC validates no JWT, so
// requestPrincipals are unknowable there. istiod's form (a metadata
// matcher, which grpc-go accepts and never matches) lets a DENY on a JWT
// attribute silently stop firing; kordon's default drops the attribute
// from the DENY (it denies more) and leaves an ALLOW that needs it out
// (it matches nothing), as Istio treats HTTP fields on TCP.
func TestCompileOutputJWTFailsClosed(t *testing.T) {
	t.Parallel()
	set := mustPolicies(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-banned-issuer, namespace: foo}
spec:
  action: DENY
  rules:
  - from: [{source: {requestPrincipals: ["banned.example/*"]}}]
    to: [{operation: {paths: ["/shop.Orders/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-jwt, namespace: foo}
spec:
  rules:
  - from: [{source: {requestPrincipals: ["issuer.example/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  rules:
  - from: [{source: {principals: ["cluster.local/ns/foo/sa/sleep"]}}]
    to: [{operation: {paths: ["/shop.Orders/*", "/grpc.health.v1.Health/Check"]}}]
`)
	sleep := "spiffe://cluster.local/ns/foo/sa/sleep"
	other := "spiffe://cluster.local/ns/bar/sa/default"
	p := startRawPlane(t)
	ca := newMeshCA(t, testTD, nil)
	for _, tc := range []struct {
		name string
		opts policy.CompileOptions
		want []decisionCase
	}{
		{name: "kordon (JWT unknowable)", want: []decisionCase{
			{conformanceRequest{principal: sleep, host: "h", path: "/shop.Orders/Get"}, "DENY"}, // the DENY fires without its JWT part
			{conformanceRequest{principal: sleep, host: "h", path: "/grpc.health.v1.Health/Check"}, "ALLOW"},
			{conformanceRequest{principal: other, host: "h", path: "/shop.Catalog/List"}, "DENY"}, // allow-jwt matches nothing
		}},
		{name: "istiod's form (what kordon no longer emits by default)", opts: policy.CompileOptions{DynamicMetadata: true}, want: []decisionCase{
			{conformanceRequest{principal: sleep, host: "h", path: "/shop.Orders/Get"}, "ALLOW"}, // the DENY silently never fires
		}},
	} {
		out := compileOutput(t, set, goldenTarget, tc.opts)
		s := serveCompiled(t, p, ca, "jwt/"+tc.name, parseCompiledHTTPFilters(t, out))
		for _, d := range tc.want {
			if got := checkDecisions(t, s, set, goldenTarget, []conformanceRequest{d.req}, tc.opts)[d.req.String()]; got != d.want {
				t.Errorf("%s: %v: %s, want %s", tc.name, d.req, got, d.want)
			}
		}
	}
	c, err := policy.Compile(set, goldenTarget, policy.CompileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ns[foo]-policy[allow-jwt]-rule[0]: ALLOW rule needs requestPrincipals, which this data plane cannot know (no filter validates JWTs or writes that metadata): it matches nothing (fail closed)",
		"ns[foo]-policy[deny-banned-issuer]-rule[0]: DENY rule needs requestPrincipals, which this data plane cannot know (no filter validates JWTs or writes that metadata): they are left out of the rule, which denies more (fail closed)",
	}
	if strings.Join(c.Notes, "\n") != strings.Join(want, "\n") {
		t.Fatalf("notes:\n%s\nwant:\n%s", strings.Join(c.Notes, "\n"), strings.Join(want, "\n"))
	}
}

// decisionCase is a request and the decision it must get.
type decisionCase struct {
	req  conformanceRequest
	want string
}

// TestProxylessJWTStatus: a DENY on a JWT attribute reaches a proxyless
// gRPC server without it (so it denies more, never less), and the node's
// status names the rule.
func TestProxylessJWTStatus(t *testing.T) {
	t.Parallel()
	m := startMesh(t, shopWorkloads(), nil)
	lis, port := m.echoService(t)
	m.srv.SetPolicies(mustPolicies(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-banned-issuer, namespace: shop}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {requestPrincipals: ["banned.example/*"]}}]
    to: [{operation: {paths: ["/grpc.health.v1.Health/Check"]}}]
`))
	echoBS, _ := m.bootstrap(t, "shop/echo-0")
	startEcho(t, echoBS, lis)
	frontBS, _ := m.bootstrap(t, "shop/frontend-0")
	front := dialXDS(t, frontBS, fmt.Sprintf("echo.shop:%d", port))
	eventually(t, 20*time.Second, "denied without a JWT to check", func() error {
		if err := check(front); status.Code(err) != codes.PermissionDenied {
			return fmt.Errorf("got %v", err)
		}
		return nil
	})
	st, ok := m.srv.NodeStatus("shop/echo-0")
	if !ok {
		t.Fatal("no status for shop/echo-0")
	}
	want := "ns[shop]-policy[deny-banned-issuer]-rule[0]: DENY rule needs requestPrincipals, which this data plane cannot know (no filter validates JWTs or writes that metadata): they are left out of the rule, which denies more (fail closed)"
	if strings.Join(st.PolicyNotes, "\n") != want {
		t.Fatalf("policy notes %q, want %q", st.PolicyNotes, want)
	}
}

// TestEnvoyJWTAuthn checks at the protocol level that an Envoy node whose
// workload a RequestAuthentication selects gets the jwt_authn filter
// before the RBAC filters, the RBAC reading its verified payload (not
// istio_authn), and a cluster for the jwksUri.
func TestEnvoyJWTAuthn(t *testing.T) {
	t.Parallel()
	ws := append(shopWorkloads(), loopbackWorkload("shop", "gateway-0", "gateway", map[string]string{"app": "gateway"}))
	m := startMesh(t, ws, func(c *Config) {
		c.Services = []Service{{Name: "gateway", Namespace: "shop", Port: 8443, Protocol: ProtocolHTTP, Selector: map[string]string{"app": "gateway"}}}
	})
	m.srv.SetPolicies(mustPolicies(t, `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: gateway}}
  jwtRules:
  - issuer: https://issuer.example
    jwksUri: https://issuer.example/jwks.json
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: gateway}}
  rules: [{from: [{source: {requestPrincipals: ["https://issuer.example/*"]}}]}]
`))
	c := m.envoyListeners(t, "shop/gateway-0")
	lds := recvType(t, c, resourcev3.ListenerType)
	if len(lds.Resources) != 1 {
		t.Fatalf("%d listeners", len(lds.Resources))
	}
	hcm := firstHCM(t, lds)
	var names []string
	for _, f := range hcm.HttpFilters {
		names = append(names, f.Name)
	}
	if got, want := strings.Join(names, ","), "envoy.filters.http.jwt_authn,envoy.filters.http.rbac.allow,envoy.filters.http.router"; got != want {
		t.Fatalf("http filters %s, want %s", got, want)
	}
	rbacJSON, err := protojson.Marshal(hcm.HttpFilters[1])
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(rbacJSON), `"filter":"envoy.filters.http.jwt_authn"`) || strings.Contains(string(rbacJSON), "istio_authn") {
		t.Fatalf("RBAC does not read the jwt_authn payload: %s", rbacJSON)
	}
	if err := c.Subscribe(resourcev3.ClusterType); err != nil {
		t.Fatal(err)
	}
	cds := recvType(t, c, resourcev3.ClusterType)
	var clusters []string
	for _, a := range cds.Resources {
		cl := &clusterv3.Cluster{}
		if err := a.UnmarshalTo(cl); err != nil {
			t.Fatal(err)
		}
		clusters = append(clusters, cl.Name)
	}
	sort.Strings(clusters)
	if got, want := strings.Join(clusters, ","), "inbound|8443,kordon-jwks|issuer.example|443"; got != want {
		t.Fatalf("clusters %s, want %s", got, want)
	}
	// An Envoy node validates the JWTs itself: nothing to note.
	st, _ := m.srv.NodeStatus("shop/gateway-0")
	if len(st.PolicyNotes) != 0 {
		t.Fatalf("Envoy node notes %q", st.PolicyNotes)
	}
}

// TestEnvoyJWKSFetchedByControlPlane: with a JWKSFetcher the control plane
// fetches the jwksUri and pushes the keys inline in the jwt_authn filter
// (no JWKS cluster); a rotated key set is pushed again.
func TestEnvoyJWKSFetchedByControlPlane(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	keys := `{"keys":[{"kty":"EC","kid":"one"}]}`
	jwksSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		_, _ = w.Write([]byte(keys))
	}))
	t.Cleanup(jwksSrv.Close)
	var srv *Server
	fetcher := NewJWKSFetcher(JWKSFetcherConfig{Refresh: 50 * time.Millisecond, Logger: testLogger(t), OnChange: func() { srv.JWKSChanged() }})
	ws := append(shopWorkloads(), loopbackWorkload("shop", "gateway-0", "gateway", map[string]string{"app": "gateway"}))
	m := startMesh(t, ws, func(c *Config) {
		c.Services = []Service{{Name: "gateway", Namespace: "shop", Port: 8443, Protocol: ProtocolHTTP, Selector: map[string]string{"app": "gateway"}}}
		c.JWKS = fetcher
	})
	srv = m.srv
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go fetcher.Run(ctx)
	m.srv.SetPolicies(mustPolicies(t, `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: shop}
spec:
  selector: {matchLabels: {app: gateway}}
  jwtRules: [{issuer: https://issuer.example, jwksUri: "`+jwksSrv.URL+`/jwks.json"}]
`))
	c := m.envoyListeners(t, "shop/gateway-0")
	// jwtKeys returns the inline JWKS of the pushed listener ("" while
	// Envoy would fetch it itself).
	jwtKeys := func() string {
		lds := recvType(t, c, resourcev3.ListenerType)
		if err := c.Ack(lds); err != nil {
			t.Fatal(err)
		}
		hcm := firstHCM(t, lds)
		ja := &jwtauthnv3.JwtAuthentication{}
		if err := hcm.HttpFilters[0].GetTypedConfig().UnmarshalTo(ja); err != nil {
			t.Fatal(err)
		}
		return ja.Providers["shop/jwt[0]"].GetLocalJwks().GetInlineString()
	}
	deadline := time.Now().Add(10 * time.Second)
	got := jwtKeys()
	for got != keys && time.Now().Before(deadline) {
		got = jwtKeys()
	}
	if got != keys {
		t.Fatalf("inline keys %q, want %q", got, keys)
	}
	mu.Lock()
	keys = `{"keys":[{"kty":"EC","kid":"two"}]}`
	mu.Unlock()
	for got != keys && time.Now().Before(deadline) {
		got = jwtKeys()
	}
	if got != keys {
		t.Fatalf("after rotation: inline keys %q, want %q", got, keys)
	}
}

// envoyListeners opens an ADS stream as the Envoy node id and subscribes
// to its Listeners.
func (m *mesh) envoyListeners(t *testing.T, id string) *adsclient.Client {
	t.Helper()
	ns, pod, _ := strings.Cut(id, "/")
	cc := m.dialControl(t, m.svidCert(t, ns, pod))
	c, err := adsclient.Open(context.Background(), cc, envoyNode(id))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Subscribe(resourcev3.ListenerType); err != nil {
		t.Fatal(err)
	}
	return c
}

// firstHCM is the HttpConnectionManager of the first listener of lds.
func firstHCM(t *testing.T, lds *discoveryv3.DiscoveryResponse) *hcmv3.HttpConnectionManager {
	t.Helper()
	l := &listenerv3.Listener{}
	if err := lds.Resources[0].UnmarshalTo(l); err != nil {
		t.Fatal(err)
	}
	hcm := &hcmv3.HttpConnectionManager{}
	if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
		t.Fatal(err)
	}
	return hcm
}
