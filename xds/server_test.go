package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/xds/adsclient"
)

// dialControl connects to the xDS server with an optional client cert.
func (m *mesh) dialControl(t testing.TB, cert *tls.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: m.cpCA.pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	cc, err := grpc.NewClient(m.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func (m *mesh) svidCert(t testing.TB, ns, pod string) *tls.Certificate {
	w, ok := m.reg.ByPod(ns, pod)
	if !ok {
		t.Fatalf("no workload %s/%s", ns, pod)
	}
	c := m.ca.tlsCert(t, w.SPIFFEID(testTD))
	return &c
}

func envoyNode(id string) *corev3.Node {
	md, _ := structpb.NewStruct(map[string]any{ProxyMetadataKey: "envoy"})
	return &corev3.Node{Id: id, Metadata: md}
}

// recvType receives until a response of typeURL arrives, ACKing others.
func recvType(t testing.TB, c *adsclient.Client, typeURL string) *discoveryv3.DiscoveryResponse {
	t.Helper()
	for {
		resp, err := c.Recv()
		if err != nil {
			t.Fatalf("recv %s: %v", shortType(typeURL), err)
		}
		if resp.GetTypeUrl() == typeURL {
			return resp
		}
		if err := c.Ack(resp); err != nil {
			t.Fatal(err)
		}
	}
}

func TestStreamAuthentication(t *testing.T) {
	t.Parallel()
	m := startMesh(t, shopWorkloads(), func(c *Config) {
		c.Authenticator = AnyAuthenticator{
			SVIDAuthenticator{TrustDomain: testTD},
			TokenAuthenticator{Reviewer: staticTokens{"frontend-token": {Namespace: "shop", ServiceAccount: "frontend"}}},
		}
	})
	front := m.svidCert(t, "shop", "frontend-0")
	tests := []struct {
		name string
		cert *tls.Certificate
		node string
		md   []string
		want codes.Code
	}{
		{name: "own node with SVID", cert: front, node: "shop/frontend-0", want: codes.OK},
		{name: "other node with SVID", cert: front, node: "shop/echo-0", want: codes.PermissionDenied},
		{name: "no credentials", node: "shop/frontend-0", want: codes.Unauthenticated},
		{name: "own node with token", node: "shop/frontend-0", md: []string{"authorization", "Bearer frontend-token"}, want: codes.OK},
		{name: "other node with token", node: "shop/echo-0", md: []string{"authorization", "Bearer frontend-token"}, want: codes.PermissionDenied},
		{name: "bad token", node: "shop/frontend-0", md: []string{"authorization", "Bearer nope"}, want: codes.Unauthenticated},
		{name: "unknown workload", cert: front, node: "shop/ghost", want: codes.NotFound},
		{name: "malformed node id", cert: front, node: "frontend-0", want: codes.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cc := m.dialControl(t, tc.cert)
			ctx := context.Background()
			var opts []grpc.CallOption
			if tc.md != nil {
				opts = append(opts, grpc.Header(&metadata.MD{}))
			}
			c, err := adsclient.Open(metadata.NewOutgoingContext(ctx, metadata.Pairs(tc.md...)), cc, &corev3.Node{Id: tc.node}, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			// A refused stream may already be closed when the request is
			// sent (io.EOF); its status comes from Recv.
			if err := c.Subscribe(resourcev3.ListenerType, ServerListenerPrefix+"127.0.0.1:7070"); err != nil && tc.want == codes.OK {
				t.Fatal(err)
			}
			if tc.want == codes.OK {
				resp, err := c.Recv()
				if err != nil || len(resp.Resources) != 1 {
					t.Fatalf("got %v, %v", resp, err)
				}
				st, ok := m.srv.NodeStatus(tc.node)
				if !ok || !st.Connected {
					t.Fatalf("node not connected: %+v", st)
				}
				return
			}
			_, err = c.Recv()
			if codeOf(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("a stream cannot switch nodes", func(t *testing.T) {
		cc := m.dialControl(t, front)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		lname := ServerListenerPrefix + "127.0.0.1:1"
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "shop/frontend-0"}, TypeUrl: resourcev3.ListenerType, ResourceNames: []string{lname}}); err != nil {
			t.Fatal(err)
		}
		resp, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if err := st.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "shop/echo-0"}, TypeUrl: resourcev3.ListenerType, ResourceNames: []string{lname}, ResponseNonce: resp.Nonce, VersionInfo: resp.VersionInfo}); err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); codeOf(err) != codes.PermissionDenied {
			t.Fatalf("got %v", err)
		}
	})
	if got := testutil.ToFloat64(m.srv.metrics.authFailures.WithLabelValues("forbidden_node")); got < 2 {
		t.Errorf("forbidden_node failures = %v", got)
	}
}

type staticTokens map[string]Identity

func (s staticTokens) Review(_ context.Context, tok string) (Identity, error) {
	id, ok := s[tok]
	if !ok {
		return Identity{}, errors.New("unknown token")
	}
	return id, nil
}

func TestNackIsRecordedAndLastGoodKept(t *testing.T) {
	t.Parallel()
	m := startMesh(t, shopWorkloads(), nil)
	m.srv.SetPolicies(mustPolicies(t, allowPolicy("frontend")))
	cc := m.dialControl(t, m.svidCert(t, "shop", "echo-0"))
	c, err := adsclient.Open(context.Background(), cc, &corev3.Node{Id: "shop/echo-0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lname := ServerListenerPrefix + "127.0.0.1:7070"
	if err := c.Subscribe(resourcev3.ListenerType, lname); err != nil {
		t.Fatal(err)
	}
	lds := recvType(t, c, resourcev3.ListenerType)
	if len(lds.Resources) != 1 {
		t.Fatalf("listeners: %d", len(lds.Resources))
	}
	if err := c.Ack(lds); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(resourcev3.RouteType, InboundRouteName); err != nil {
		t.Fatal(err)
	}
	good := recvType(t, c, resourcev3.RouteType)
	if err := c.Ack(good); err != nil {
		t.Fatal(err)
	}
	m.srv.SetPolicies(mustPolicies(t, allowPolicy("intruder")))
	bad := recvType(t, c, resourcev3.RouteType)
	if bad.VersionInfo == good.VersionInfo {
		t.Fatal("policy change did not produce a new version")
	}
	if err := c.Nack(bad, "rbac: unsupported matcher"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "nack recorded", func() error {
		st, _ := m.srv.NodeStatus("shop/echo-0")
		rt := st.Types["RouteConfiguration"]
		if rt == nil || rt.Nacks != 1 {
			return errNotYet
		}
		if rt.Nacked != bad.VersionInfo || rt.Acked != good.VersionInfo || rt.NackError != "rbac: unsupported matcher" {
			return fmt.Errorf("status %+v", rt)
		}
		return nil
	})
	if got := testutil.ToFloat64(m.srv.metrics.nacks.WithLabelValues("RouteConfiguration")); got != 1 {
		t.Fatalf("nacks metric %v", got)
	}
	// The rejected version is not sent again: the next route the node
	// receives is the next policy's.
	m.srv.SetPolicies(mustPolicies(t, allowPolicy("frontend")))
	next := recvType(t, c, resourcev3.RouteType)
	if next.VersionInfo == bad.VersionInfo {
		t.Fatalf("rejected version %s was sent again", bad.VersionInfo)
	}
	if err := c.Ack(next); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "ack after nack", func() error {
		st, _ := m.srv.NodeStatus("shop/echo-0")
		if rt := st.Types["RouteConfiguration"]; rt.Acked != next.VersionInfo || rt.Nacks != 1 {
			return fmt.Errorf("status %+v", rt)
		}
		return nil
	})
}

// TestIncrementalPush checks that a change in one namespace rebuilds only
// the nodes that read it, and a root-namespace change rebuilds all.
func TestIncrementalPush(t *testing.T) {
	t.Parallel()
	ws := []*workload.Workload{
		loopbackWorkload("a", "app-0", "app", map[string]string{"app": "x"}),
		loopbackWorkload("b", "app-0", "app", map[string]string{"app": "x"}),
	}
	m := startMesh(t, ws, nil)
	versions := map[string]string{}
	for _, id := range []string{"a/app-0", "b/app-0"} {
		ns, pod, _ := strings.Cut(id, "/")
		cc := m.dialControl(t, m.svidCert(t, ns, pod))
		c, err := adsclient.Open(context.Background(), cc, &corev3.Node{Id: id})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Close)
		if err := c.Subscribe(resourcev3.ListenerType, ServerListenerPrefix+"127.0.0.1:7070"); err != nil {
			t.Fatal(err)
		}
		if err := c.Ack(recvType(t, c, resourcev3.ListenerType)); err != nil {
			t.Fatal(err)
		}
		st, _ := m.srv.NodeStatus(id)
		versions[id] = st.SnapshotVersion
	}
	pol := func(ns string) string {
		return strings.ReplaceAll(strings.ReplaceAll(allowPolicy("frontend"), "namespace: shop", "namespace: "+ns), "{app: echo}", "{app: x}")
	}
	m.srv.SetPolicies(mustPolicies(t, pol("a")))
	eventually(t, 5*time.Second, "a rebuilt", func() error {
		if st, _ := m.srv.NodeStatus("a/app-0"); st.SnapshotVersion == versions["a/app-0"] {
			return errNotYet
		}
		return nil
	})
	// b was not rebuilt at all (not merely unchanged).
	built := testutil.ToFloat64(m.srv.metrics.builds.WithLabelValues("pushed")) + testutil.ToFloat64(m.srv.metrics.builds.WithLabelValues("unchanged"))
	if st, _ := m.srv.NodeStatus("b/app-0"); st.SnapshotVersion != versions["b/app-0"] {
		t.Fatalf("b rebuilt: %s -> %s", versions["b/app-0"], st.SnapshotVersion)
	}
	if built != 3 {
		t.Fatalf("builds = %v, want 3 (two initial, one for a)", built)
	}
	m.srv.SetPolicies(mustPolicies(t, pol("a")+"---\n"+pol("kordon-system")))
	eventually(t, 5*time.Second, "both rebuilt after a root change", func() error {
		if b := testutil.ToFloat64(m.srv.metrics.builds.WithLabelValues("pushed")); b != 5 {
			return fmt.Errorf("pushed %v", b)
		}
		return nil
	})
}

// TestEnvoySDSAndRBAC checks an Envoy node's configuration at the protocol
// level: SDS Secrets with its SVID and a SPIFFE validator for two trust
// domains, inbound listeners with HTTP and network RBAC referring to them.
func TestEnvoySDSAndRBAC(t *testing.T) {
	t.Parallel()
	ws := append(shopWorkloads(), loopbackWorkload("shop", "gateway-0", "gateway", map[string]string{"app": "gateway"}))
	ids := &CAIdentities{}
	partner := newMeshCA(t, "partner.example", nil)
	ids.Federated = func() map[string][]byte { return map[string][]byte{"partner.example": partner.BundlePEM()} }
	m := startMesh(t, ws, func(c *Config) {
		c.Identities = ids
		c.Services = []Service{
			{Name: "gateway", Namespace: "shop", Port: 8443, Protocol: ProtocolHTTP, Selector: map[string]string{"app": "gateway"}},
			{Name: "gateway-tcp", Namespace: "shop", Port: 9000, Protocol: ProtocolTCP, Selector: map[string]string{"app": "gateway"}},
		}
	})
	ids.CA = m.ca.CA
	m.srv.SetPolicies(mustPolicies(t, strings.ReplaceAll(allowPolicy("frontend"), "{app: echo}", "{app: gateway}")))

	cc := m.dialControl(t, m.svidCert(t, "shop", "gateway-0"))
	c, err := adsclient.Open(context.Background(), cc, envoyNode("shop/gateway-0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(resourcev3.SecretType, IdentityCertName, RootCertName); err != nil {
		t.Fatal(err)
	}
	sds := recvType(t, c, resourcev3.SecretType)
	secrets := map[string]*tlsv3.Secret{}
	for _, a := range sds.Resources {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		secrets[s.Name] = s
	}
	if len(secrets) != 2 {
		t.Fatalf("secrets: %v", secrets)
	}
	chain := secrets[IdentityCertName].GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	blk, _ := pem.Decode(chain)
	if blk == nil {
		t.Fatal("no certificate in the default secret")
	}
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if got := leaf.URIs[0].String(); got != "spiffe://cluster.local/ns/shop/sa/gateway" {
		t.Fatalf("SVID %s", got)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: m.ca.pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("SVID not signed by the CA: %v", err)
	}
	if len(secrets[IdentityCertName].GetTlsCertificate().GetPrivateKey().GetInlineBytes()) == 0 {
		t.Fatal("no private key")
	}
	cv := secrets[RootCertName].GetValidationContext().GetCustomValidatorConfig()
	if cv.GetName() != "envoy.tls.cert_validator.spiffe" {
		t.Fatalf("validator %q", cv.GetName())
	}
	spiffeCfg := &tlsv3.SPIFFECertValidatorConfig{}
	if err := cv.GetTypedConfig().UnmarshalTo(spiffeCfg); err != nil {
		t.Fatal(err)
	}
	var tds []string
	for _, td := range spiffeCfg.TrustDomains {
		tds = append(tds, td.Name)
	}
	sort.Strings(tds)
	if strings.Join(tds, ",") != "cluster.local,partner.example" {
		t.Fatalf("trust domains %v", tds)
	}
	if err := c.Ack(sds); err != nil {
		t.Fatal(err)
	}

	if err := c.Subscribe(resourcev3.ListenerType); err != nil {
		t.Fatal(err)
	}
	lds := recvType(t, c, resourcev3.ListenerType)
	filters := map[string][]string{}
	for _, a := range lds.Resources {
		l := &listenerv3.Listener{}
		if err := a.UnmarshalTo(l); err != nil {
			t.Fatal(err)
		}
		fc := l.FilterChains[0]
		dtc := &tlsv3.DownstreamTlsContext{}
		if err := fc.TransportSocket.GetTypedConfig().UnmarshalTo(dtc); err != nil {
			t.Fatal(err)
		}
		if dtc.CommonTlsContext.TlsCertificateSdsSecretConfigs[0].Name != IdentityCertName ||
			dtc.CommonTlsContext.GetValidationContextSdsSecretConfig().GetName() != RootCertName || !dtc.RequireClientCertificate.GetValue() {
			t.Fatalf("%s: tls context %v", l.Name, dtc)
		}
		for _, f := range fc.Filters {
			filters[l.Name] = append(filters[l.Name], f.Name)
			if f.Name == "envoy.filters.network.http_connection_manager" {
				hcm := &hcmv3.HttpConnectionManager{}
				if err := f.GetTypedConfig().UnmarshalTo(hcm); err != nil {
					t.Fatal(err)
				}
				for _, hf := range hcm.HttpFilters {
					filters[l.Name] = append(filters[l.Name], hf.Name)
				}
			}
		}
	}
	want := map[string]string{
		"inbound|8443": "envoy.filters.network.http_connection_manager,envoy.filters.http.rbac.allow,envoy.filters.http.router",
		"inbound|9000": "envoy.filters.network.rbac.allow,envoy.filters.network.tcp_proxy",
	}
	for l, f := range want {
		if got := strings.Join(filters[l], ","); got != f {
			t.Errorf("%s filters: %s, want %s", l, got, f)
		}
	}
	if len(filters) != len(want) {
		t.Errorf("listeners %v", filters)
	}
}

// TestDeltaStream serves an Envoy node over incremental xDS.
func TestDeltaStream(t *testing.T) {
	t.Parallel()
	ws := []*workload.Workload{loopbackWorkload("shop", "gateway-0", "gateway", map[string]string{"app": "gateway"})}
	m := startMesh(t, ws, func(c *Config) {
		c.Services = []Service{{Name: "gateway", Namespace: "shop", Port: 8443, Protocol: ProtocolHTTP, Selector: map[string]string{"app": "gateway"}}}
	})
	cc := m.dialControl(t, m.svidCert(t, "shop", "gateway-0"))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := discoveryv3.NewAggregatedDiscoveryServiceClient(cc).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{Node: envoyNode("shop/gateway-0"), TypeUrl: resourcev3.ListenerType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	resp, err := st.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Resources) != 1 || resp.Resources[0].Name != "inbound|8443" {
		t.Fatalf("delta resources %v", resp.Resources)
	}
	if err := st.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResponseNonce: resp.Nonce}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "delta ack recorded", func() error {
		s, _ := m.srv.NodeStatus("shop/gateway-0")
		if l := s.Types["Listener"]; l == nil || l.Acks != 1 {
			return errNotYet
		}
		return nil
	})
}

func TestResolveService(t *testing.T) {
	t.Parallel()
	svcs, err := checkServices([]Service{
		{Name: "echo", Namespace: "shop", Port: 8080, Selector: map[string]string{"app": "echo"}},
		{Name: "multi", Namespace: "shop", Port: 80, Selector: map[string]string{"app": "m"}},
		{Name: "multi", Namespace: "shop", Port: 81, Selector: map[string]string{"app": "m"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		target string
		want   string
	}{
		{target: "echo.shop", want: "shop/echo:8080"},
		{target: "echo.shop:8080", want: "shop/echo:8080"},
		{target: "echo.shop.svc", want: "shop/echo:8080"},
		{target: "echo.shop.svc.cluster.local:8080", want: "shop/echo:8080"},
		{target: "echo.shop:9090"},
		{target: "echo.other"},
		{target: "echo"},
		{target: "echo.shop.pod"},
		{target: "echo.shop.svc.evil.example"},
		{target: "multi.shop"},
		{target: "multi.shop:81", want: "shop/multi:81"},
		{target: "echo.shop:http"},
	}
	for _, tc := range tests {
		got := ""
		if s := resolveService(tc.target, svcs); s != nil {
			got = s.Key()
		}
		if got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.target, got, tc.want)
		}
	}
}

// TestServerListenerOnlyForOwnAddresses: a node naming another workload's
// address gets no listener for it.
func TestServerListenerOnlyForOwnAddresses(t *testing.T) {
	t.Parallel()
	w := &workload.Workload{Namespace: "shop", Name: "echo-0", ServiceAccount: "echo", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.5")}}
	in := &buildInput{
		workload: w, kind: KindProxyless,
		requested: []string{
			ServerListenerPrefix + "10.0.0.5:8080",
			ServerListenerPrefix + "10.0.0.6:8080",
			ServerListenerPrefix + "0.0.0.0:9090",
			ServerListenerPrefix + "garbage",
		},
		compiled: mustCompiled(t),
		opts:     buildOptions{trustDomain: testTD, certProvider: "kordon"},
	}
	b, err := build(in, func(h string) string { return "1" })
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for n := range b.snapshot.GetResources(resourcev3.ListenerType) {
		names = append(names, n)
	}
	sort.Strings(names)
	want := ServerListenerPrefix + "0.0.0.0:9090," + ServerListenerPrefix + "10.0.0.5:8080"
	if strings.Join(names, ",") != want {
		t.Fatalf("listeners %v", names)
	}
}

func TestNewRequiresAuthentication(t *testing.T) {
	t.Parallel()
	_, err := New(Config{Registry: workload.NewRegistry(), TrustDomain: testTD})
	if err == nil || !strings.Contains(err.Error(), "Authenticator is required") {
		t.Fatalf("got %v", err)
	}
}

// fakeClock is a settable clock.
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

// TestSDSRenewsSVIDAtHalfLife: an Envoy node gets a new SVID over SDS once
// its current one has lived half of its lifetime.
func TestSDSRenewsSVIDAtHalfLife(t *testing.T) {
	t.Parallel()
	ws := []*workload.Workload{loopbackWorkload("shop", "gateway-0", "gateway", map[string]string{"app": "gateway"})}
	clock := &fakeClock{now: time.Now()}
	ids := &CAIdentities{}
	m := startMesh(t, ws, func(c *Config) {
		c.Identities = ids
		c.Now = clock.Now
		c.SVIDRefresh = 10 * time.Millisecond
	})
	ids.CA = newMeshCA(t, testTD, clock.Now).CA
	cc := m.dialControl(t, m.svidCert(t, "shop", "gateway-0"))
	c, err := adsclient.Open(context.Background(), cc, envoyNode("shop/gateway-0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(resourcev3.SecretType, IdentityCertName); err != nil {
		t.Fatal(err)
	}
	serial := func(resp *discoveryv3.DiscoveryResponse) string {
		s := &tlsv3.Secret{}
		if err := resp.Resources[0].UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return cert.SerialNumber.String()
	}
	first := recvType(t, c, resourcev3.SecretType)
	if err := c.Ack(first); err != nil {
		t.Fatal(err)
	}
	clock.Add(31 * time.Minute) // past half of the one-hour lifetime
	second := recvType(t, c, resourcev3.SecretType)
	if serial(second) == serial(first) {
		t.Fatal("SVID not renewed")
	}
}

// TestRegistryChangesUpdateEndpoints: a new workload behind a service
// reaches clients over EDS, and a removed workload's node is left with
// nothing.
func TestRegistryChangesUpdateEndpoints(t *testing.T) {
	t.Parallel()
	m := startMesh(t, shopWorkloads(), func(c *Config) {
		c.Services = []Service{{Name: "echo", Namespace: "shop", Port: 8080, Selector: map[string]string{"app": "echo"}}}
	})
	cc := m.dialControl(t, m.svidCert(t, "shop", "frontend-0"))
	c, err := adsclient.Open(context.Background(), cc, &corev3.Node{Id: "shop/frontend-0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cluster := "outbound|8080||echo.shop.svc.cluster.local"
	if err := c.Subscribe(resourcev3.ListenerType, "echo.shop:8080"); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(recvType(t, c, resourcev3.ListenerType)); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(resourcev3.EndpointType, cluster); err != nil {
		t.Fatal(err)
	}
	count := func(resp *discoveryv3.DiscoveryResponse) int {
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := resp.Resources[0].UnmarshalTo(cla); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range cla.Endpoints {
			n += len(l.LbEndpoints)
		}
		return n
	}
	eds := recvType(t, c, resourcev3.EndpointType)
	if n := count(eds); n != 1 {
		t.Fatalf("endpoints %d, want 1", n)
	}
	if err := c.Ack(eds); err != nil {
		t.Fatal(err)
	}
	w := loopbackWorkload("shop", "echo-1", "echo", map[string]string{"app": "echo"})
	w.IPs = []netip.Addr{netip.MustParseAddr("127.0.0.2")}
	m.reg.Upsert(w)
	eds = recvType(t, c, resourcev3.EndpointType)
	if n := count(eds); n != 2 {
		t.Fatalf("endpoints after upsert %d, want 2", n)
	}
	if err := c.Ack(eds); err != nil {
		t.Fatal(err)
	}
	// The pod re-created under the same name with another service account
	// is not the workload the stream authenticated as.
	impostor := loopbackWorkload("shop", "frontend-0", "other", map[string]string{"app": "frontend"})
	m.reg.Upsert(impostor)
	lds := recvType(t, c, resourcev3.ListenerType)
	if len(lds.Resources) != 0 {
		t.Fatalf("workload with another service account still has %d listeners", len(lds.Resources))
	}
	if err := c.Ack(lds); err != nil {
		t.Fatal(err)
	}
	m.reg.Upsert(loopbackWorkload("shop", "frontend-0", "frontend", map[string]string{"app": "frontend"}))
	lds = recvType(t, c, resourcev3.ListenerType)
	if len(lds.Resources) != 1 {
		t.Fatalf("restored workload has %d listeners", len(lds.Resources))
	}
	if err := c.Ack(lds); err != nil {
		t.Fatal(err)
	}
	m.reg.Delete("shop", "frontend-0")
	lds = recvType(t, c, resourcev3.ListenerType)
	if len(lds.Resources) != 0 {
		t.Fatalf("removed workload still has %d listeners", len(lds.Resources))
	}
}

// TestPushesAreDebounced: changes arriving within the quiet period are
// pushed as one rebuild.
func TestPushesAreDebounced(t *testing.T) {
	t.Parallel()
	m := startMesh(t, shopWorkloads(), func(c *Config) {
		c.DebounceQuiet = 300 * time.Millisecond
		c.DebounceMax = 5 * time.Second
	})
	cc := m.dialControl(t, m.svidCert(t, "shop", "echo-0"))
	c, err := adsclient.Open(context.Background(), cc, &corev3.Node{Id: "shop/echo-0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(resourcev3.ListenerType, ServerListenerPrefix+"127.0.0.1:7070"); err != nil {
		t.Fatal(err)
	}
	if err := c.Ack(recvType(t, c, resourcev3.ListenerType)); err != nil {
		t.Fatal(err)
	}
	builds := func() float64 {
		return testutil.ToFloat64(m.srv.metrics.builds.WithLabelValues("pushed")) + testutil.ToFloat64(m.srv.metrics.builds.WithLabelValues("unchanged"))
	}
	before := builds()
	for _, sa := range []string{"a", "b", "c", "d", "frontend"} {
		m.srv.SetPolicies(mustPolicies(t, allowPolicy(sa)))
	}
	eventually(t, 5*time.Second, "one rebuild", func() error {
		if builds() == before {
			return errNotYet
		}
		return nil
	})
	if got := builds() - before; got != 1 {
		t.Fatalf("%v rebuilds for five changes in the quiet period, want 1", got)
	}
	st, _ := m.srv.NodeStatus("shop/echo-0")
	if st.SnapshotVersion == "" || !strings.HasPrefix(st.SnapshotVersion, "2-") {
		t.Fatalf("snapshot %q, want the second", st.SnapshotVersion)
	}
}

// TestUnsubscribedListenersAreDropped: the snapshot follows the names the
// node currently asks for, not every name it ever asked for.
func TestUnsubscribedListenersAreDropped(t *testing.T) {
	t.Parallel()
	m := startMesh(t, shopWorkloads(), func(c *Config) {
		c.Services = []Service{{Name: "echo", Namespace: "shop", Port: 8080, Selector: map[string]string{"app": "echo"}}}
	})
	cc := m.dialControl(t, m.svidCert(t, "shop", "frontend-0"))
	c, err := adsclient.Open(context.Background(), cc, &corev3.Node{Id: "shop/frontend-0"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	names := func(resp *discoveryv3.DiscoveryResponse) string {
		var out []string
		for _, a := range resp.Resources {
			l := &listenerv3.Listener{}
			if err := a.UnmarshalTo(l); err != nil {
				t.Fatal(err)
			}
			out = append(out, l.Name)
		}
		sort.Strings(out)
		return strings.Join(out, ",")
	}
	if err := c.Subscribe(resourcev3.ListenerType, "echo.shop:8080", "echo.shop"); err != nil {
		t.Fatal(err)
	}
	first := recvType(t, c, resourcev3.ListenerType)
	if got := names(first); got != "echo.shop,echo.shop:8080" {
		t.Fatalf("listeners %s", got)
	}
	if err := c.Ack(first); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(resourcev3.ListenerType, "echo.shop"); err != nil {
		t.Fatal(err)
	}
	if got := names(recvType(t, c, resourcev3.ListenerType)); got != "echo.shop" {
		t.Fatalf("listeners after unsubscribe %s", got)
	}
}

// TestConcurrentSettersKeepBoth: SetPolicies and SetServices racing never
// lose each other's update.
func TestConcurrentSettersKeepBoth(t *testing.T) {
	t.Parallel()
	set := mustPolicies(t, allowPolicy("frontend"))
	svcs := []Service{{Name: "echo", Namespace: "shop", Port: 8080, Selector: map[string]string{"app": "echo"}}}
	for range 20 {
		srv, err := New(Config{Registry: workload.NewRegistry(), TrustDomain: testTD, AllowUnauthenticated: true})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 4 {
			wg.Add(2)
			go func() { defer wg.Done(); srv.SetPolicies(set) }()
			go func() {
				defer wg.Done()
				if err := srv.SetServices(svcs); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		st := srv.policies.load()
		if st.policies != set || len(srv.services.set.Load().all) != 1 {
			t.Fatalf("lost an update: %d policies, %d services", len(st.policies.Authorization), len(srv.services.set.Load().all))
		}
	}
}
