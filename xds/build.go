package xds

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbachttp "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	rbacnet "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/rbac/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/wellknown"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// Resource names kordon uses.
const (
	// ServerListenerPrefix starts the Listener name a proxyless gRPC server
	// asks for (grpc-go's default server_listener_resource_name_template
	// is "grpc/server?xds.resource.listening_address=%s").
	ServerListenerPrefix = "grpc/server?xds.resource.listening_address="
	// InboundRouteName is the RouteConfiguration of every server Listener
	// of a proxyless node; it carries the RBAC per route.
	InboundRouteName = "kordon-inbound"
	// DenyFilterName and AllowFilterName are the HTTP RBAC filters of a
	// proxyless server Listener. They are placeholders (allow everything)
	// overridden per route by RBACPerRoute, so a policy change is an RDS
	// update and open connections stay up.
	DenyFilterName  = "kordon.rbac.deny"
	AllowFilterName = "kordon.rbac.allow"
	// IdentityCertName and RootCertName are the certificate names asked of
	// the certificate provider (proxyless) and the SDS Secret names
	// (Envoy), as Istio names them.
	IdentityCertName = "default"
	RootCertName     = "ROOTCA"
	// ProxyMetadataKey in node metadata selects the node kind; value
	// "envoy" for Envoy, anything else (or absent) for proxyless gRPC.
	ProxyMetadataKey = "kordon.dev/proxy"
	// ClusterDomain is the DNS suffix of service names.
	ClusterDomain = "cluster.local"
	// spiffeValidatorName is Envoy's SPIFFE certificate validator.
	spiffeValidatorName = "envoy.tls.cert_validator.spiffe"
	tlsTransportSocket  = "envoy.transport_sockets.tls"
)

// NodeKind is the data plane a node runs.
type NodeKind string

// Node kinds.
const (
	KindProxyless NodeKind = "grpc"
	KindEnvoy     NodeKind = "envoy"
)

// buildInput is everything one node's snapshot depends on.
type buildInput struct {
	workload *workload.Workload
	kind     NodeKind
	// requested holds the Listener names the node asked for.
	requested []string
	// services are the services of the workload's namespace (those that
	// can select it), by key.
	services []*Service
	// resolve maps a dial target to a service; endpoints returns the
	// workloads a service selects, by key. Either may be nil: no clients.
	resolve   func(target string) *Service
	endpoints func(*Service) []*workload.Workload
	compiled  *policy.Compiled
	// memo holds the node's last build (nil: build everything); clusters
	// the clusters shared by the dialers of each service (nil: build them).
	memo     *memo
	clusters *clusterCache
	// compileErr set means the policy failed to compile: fail closed.
	compileErr error
	opts       buildOptions
	svid       *SVID
	bundles    map[string][]byte
}

type buildOptions struct {
	trustDomain  string
	certProvider string
}

// built is one node's validated snapshot and what it depends on.
type built struct {
	snapshot *cachev3.Snapshot
	// hash identifies the content, so identical rebuilds are not pushed.
	hash string
	// version names the snapshot in status and logs; each type has its own
	// version (a hash of its resources) in the snapshot.
	version string
	counts  map[string]int
	// memo is what the next build of the node may reuse.
	memo *memo
	// policyNotes are the compiler's notes on the workload's rules
	// (policy.Compiled.Notes), shown in the node's status.
	policyNotes []string
}

type resources map[resourcev3.Type][]types.Resource

func (r resources) add(t resourcev3.Type, m types.Resource) { r[t] = append(r[t], m) }

func build(in *buildInput, version func(hash string) string) (*built, error) {
	rs := resources{}
	var err error
	switch in.kind {
	case KindEnvoy:
		err = buildEnvoy(in, rs)
	default:
		err = buildProxyless(in, rs)
	}
	if err != nil {
		return nil, err
	}
	snap, hash, counts, err := makeSnapshot(rs, in.memo, version)
	if err != nil {
		return nil, err
	}
	b := &built{snapshot: snap, hash: hash, version: version(hash), counts: counts, memo: in.memo}
	if in.compileErr == nil && in.compiled != nil {
		b.policyNotes = in.compiled.Notes
	}
	return b, nil
}

// consistent runs Snapshot.Consistent over rs. go-control-plane follows
// RDS references only from filter chains, so for the check each client
// (API) Listener is shown as a filter-chain Listener carrying the same
// HttpConnectionManager; its RouteConfiguration is then required too.
func consistent(rs resources) error {
	view := resources{}
	for t, list := range rs {
		if t != resourcev3.ListenerType {
			view[t] = list
			continue
		}
		for _, r := range list {
			l := r.(*listenerv3.Listener)
			if l.GetApiListener() == nil {
				view.add(t, l)
				continue
			}
			view.add(t, &listenerv3.Listener{Name: l.Name, FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
				Name:       wellknown.HTTPConnectionManager,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: l.GetApiListener().GetApiListener()},
			}}}}})
		}
	}
	snap, err := cachev3.NewSnapshot("check", view)
	if err != nil {
		return err
	}
	return snap.Consistent()
}

// consistencyShape renders what Snapshot.Consistent depends on in rs
// (sorted, as validateAndHash leaves it): each Listener's identity, each
// Cluster's name and EDS service name, the route and assignment names.
func consistencyShape(rs resources) string {
	var b strings.Builder
	for _, r := range rs[resourcev3.ListenerType] {
		b.WriteString(strconv.FormatUint(uint64(reflect.ValueOf(r).Pointer()), 16))
		b.WriteByte(0)
	}
	b.WriteByte(1)
	for _, r := range rs[resourcev3.ClusterType] {
		c, _ := r.(*clusterv3.Cluster)
		b.WriteString(c.GetName())
		b.WriteByte(0)
		b.WriteString(c.GetEdsClusterConfig().GetServiceName())
		b.WriteByte(0)
	}
	for _, t := range []resourcev3.Type{resourcev3.RouteType, resourcev3.EndpointType} {
		b.WriteByte(1)
		for _, r := range rs[t] {
			b.WriteString(cachev3.GetResourceName(r))
			b.WriteByte(0)
		}
	}
	return b.String()
}

// validator is what every Envoy proto generated with PGV implements.
type validator interface{ ValidateAll() error }

// servedTypes are the types kordon serves. Each gets its own version (a
// hash of its resources, present even when there are none), so a push
// re-sends only the types whose content changed and a data plane asking
// for an empty type still gets an answer.
var servedTypes = []resourcev3.Type{
	resourcev3.ListenerType, resourcev3.RouteType, resourcev3.ClusterType,
	resourcev3.EndpointType, resourcev3.SecretType,
}

// makeSnapshot validates rs, checks its consistency and returns the
// snapshot with per-type versions, a hash of the whole content and the
// resource counts. version(hash) names the snapshot in status and logs.
//
// Resources m reused from an earlier build are not validated or
// marshalled again: their hash is known (m may be nil).
func makeSnapshot(rs resources, m *memo, version func(hash string) string) (*cachev3.Snapshot, string, map[string]int, error) {
	hash, typeHashes, counts, err := validateAndHash(rs, m)
	if err != nil {
		return nil, "", nil, err
	}
	snap, err := cachev3.NewSnapshot(version(hash), rs)
	if err != nil {
		return nil, "", nil, fmt.Errorf("xds: snapshot: %w", err)
	}
	for _, t := range servedTypes {
		r := &snap.Resources[cachev3.GetResponseType(t)]
		r.Version = typeHashes[t]
		if r.Items == nil {
			r.Items = map[string]types.ResourceWithTTL{}
		}
	}
	// What Consistent reads: the Listeners (the routes they name follow
	// from their content, and a reused one is the same unmutated object),
	// the EDS service names of the Clusters and the names of the routes
	// and assignments. The same as in a snapshot that passed passes too.
	shape := consistencyShape(rs)
	if !m.passed(shape) {
		if err := consistent(rs); err != nil {
			return nil, "", nil, fmt.Errorf("xds: inconsistent snapshot: %w", err)
		}
		m.pass(shape)
	}
	return snap, hash, counts, nil
}

// validateAndHash validates every resource and hashes them in a stable
// order, per type and as a whole: a type's hash covers the hashes of its
// resources (resourceSum), those m knows taken from it, and m learns the
// others.
func validateAndHash(rs resources, m *memo) (string, map[string]string, map[string]int, error) {
	h := sha256.New()
	counts := map[string]int{}
	typeHashes := map[string]string{}
	for _, t := range servedTypes {
		th := sha256.New()
		list := rs[t]
		sort.Slice(list, func(i, j int) bool { return cachev3.GetResourceName(list[i]) < cachev3.GetResourceName(list[j]) })
		for _, r := range list {
			sum, ok := m.sum(r)
			if !ok {
				var err error
				if sum, err = resourceSum(t, r); err != nil {
					return "", nil, nil, err
				}
				m.learn(r, sum)
			}
			th.Write([]byte(sum))
		}
		sum := hex.EncodeToString(th.Sum(nil))[:12]
		typeHashes[t] = sum
		fmt.Fprintf(h, "%s\x00%s\x00", t, sum)
		if len(list) > 0 {
			counts[shortType(t)] = len(list)
		}
	}
	for t := range rs {
		if _, ok := typeHashes[t]; !ok {
			return "", nil, nil, fmt.Errorf("xds: unexpected resource type %s", t)
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], typeHashes, counts, nil
}

// resourceSum validates r (of type t) and returns the hash of its
// deterministic encoding.
func resourceSum(t resourcev3.Type, r types.Resource) (string, error) {
	v, ok := r.(validator)
	if !ok {
		return "", fmt.Errorf("xds: %T has no validation", r)
	}
	if err := v.ValidateAll(); err != nil {
		return "", fmt.Errorf("xds: invalid %s %q: %w", shortType(t), cachev3.GetResourceName(r), err)
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return "", fmt.Errorf("xds: %w", err)
	}
	sum := sha256.Sum256(b)
	return string(sum[:16]), nil
}

func shortType(t string) string {
	if i := strings.LastIndexByte(t, '.'); i >= 0 {
		return t[i+1:]
	}
	return t
}

// mustAny packs m deterministically: the snapshot's hash covers the
// packed bytes, and proto's default marshalling orders map entries
// (RBAC policies, per-filter configs) at random, so an identical rebuild
// would hash differently and be pushed again.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		// It fails only for messages without a registered type, which
		// generated Envoy types always have.
		panic(fmt.Sprintf("xds: marshal %T: %v", m, err))
	}
	return a
}

// repack re-packs the typed configs package policy packed (with map
// entries in random order) deterministically; see mustAny.
func repack[F interface{ GetTypedConfig() *anypb.Any }](fs []F, set func(F, *anypb.Any)) error {
	for _, f := range fs {
		a := f.GetTypedConfig()
		if a == nil {
			continue
		}
		m, err := a.UnmarshalNew()
		if err != nil {
			return fmt.Errorf("xds: %w", err)
		}
		set(f, mustAny(m))
	}
	return nil
}

func adsSource() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func routerFilter() *hcmv3.HttpFilter {
	return &hcmv3.HttpFilter{Name: wellknown.Router, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})}}
}

// denyAll is an enforced RBAC that matches no request: fail closed when
// the policy cannot be compiled.
func denyAll() *rbachttp.RBAC {
	return &rbachttp.RBAC{Rules: &rbacconfig.RBAC{Action: rbacconfig.RBAC_ALLOW}}
}

func denyAllNetwork() *rbacnet.RBAC {
	return &rbacnet.RBAC{Rules: &rbacconfig.RBAC{Action: rbacconfig.RBAC_ALLOW}, StatPrefix: "kordon_deny_all_"}
}

// ---- proxyless gRPC ----

func buildProxyless(in *buildInput, rs resources) error {
	w := in.workload
	names := map[string]bool{}
	// Listener names derived from the service model...
	for _, s := range in.services {
		if s.Selects(w) {
			for _, ip := range w.IPs {
				names[ServerListenerPrefix+netip.AddrPortFrom(ip, uint16(s.Port)).String()] = true
			}
		}
	}
	// ...and those the node asked for.
	clients := map[string]*Service{}
	for _, n := range in.requested {
		if strings.HasPrefix(n, ServerListenerPrefix) {
			names[n] = true
			continue
		}
		if in.resolve == nil {
			continue
		}
		if s := in.resolve(n); s != nil {
			clients[n] = s
		}
	}
	servers := 0
	for n := range names {
		addr, err := netip.ParseAddrPort(strings.TrimPrefix(n, ServerListenerPrefix))
		// Serve only addresses this workload owns (or a wildcard bind): a
		// node cannot obtain another workload's inbound policy by naming
		// its address.
		if err != nil || !(addr.Addr().IsUnspecified() || ownsIP(w, addr.Addr())) {
			continue
		}
		rs.add(resourcev3.ListenerType, in.memo.res("L/"+n, "", func() types.Resource { return serverListener(n, addr, in.opts) }))
		servers++
	}
	if servers > 0 {
		// The inbound route depends on the compiled RBAC only, which the
		// compile cache shares while its policies stay the same.
		key := strconv.FormatUint(uint64(uintptr(unsafe.Pointer(in.compiled))), 16)
		if in.compileErr != nil {
			key = "error:" + in.compileErr.Error()
		}
		rs.add(resourcev3.RouteType, in.memo.res("R/"+InboundRouteName, key, func() types.Resource { return inboundRoute(in) }))
	}
	clusters := map[string]*Service{}
	for n, s := range clients {
		c := clusterName(s)
		rs.add(resourcev3.ListenerType, in.memo.res("L/"+n, "", func() types.Resource { return clientListener(n) }))
		rs.add(resourcev3.RouteType, in.memo.res("R/"+n, c, func() types.Resource { return clientRoute(n, c) }))
		clusters[c] = s
	}
	for c, s := range clusters {
		eps := in.endpoints(s)
		if in.clusters == nil {
			rs.add(resourcev3.ClusterType, clientCluster(c, eps, in.opts))
			rs.add(resourcev3.EndpointType, loadAssignment(c, s.Port, eps))
			continue
		}
		cl, cla, err := in.clusters.get(c, s, eps, in.opts, in.memo)
		if err != nil {
			return err
		}
		rs.add(resourcev3.ClusterType, cl)
		rs.add(resourcev3.EndpointType, cla)
	}
	return nil
}

func ownsIP(w *workload.Workload, ip netip.Addr) bool {
	for _, a := range w.IPs {
		if a.Unmap() == ip.Unmap() {
			return true
		}
	}
	return false
}

func serverListener(name string, addr netip.AddrPort, o buildOptions) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "inbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: InboundRouteName,
		}},
		HttpFilters: []*hcmv3.HttpFilter{
			{Name: DenyFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttp.RBAC{})}},
			{Name: AllowFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbachttp.RBAC{})}},
			routerFilter(),
		},
	}
	tlsCtx := &tlsv3.DownstreamTlsContext{
		// mTLS only: RBAC principals are SPIFFE IDs from client certificates.
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: o.certProvider, CertificateName: IdentityCertName},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: o.certProvider, CertificateName: RootCertName},
			}},
		},
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(addr.Addr().String(), uint32(addr.Port())),
		FilterChains: []*listenerv3.FilterChain{{
			Name:    "inbound-mtls",
			Filters: []*listenerv3.Filter{{Name: wellknown.HTTPConnectionManager, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}}},
			TransportSocket: &corev3.TransportSocket{
				Name: tlsTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(tlsCtx)},
			},
		}},
	}
}

// inboundRoute carries the workload's compiled RBAC as RBACPerRoute on the
// catch-all route of the placeholder filters.
func inboundRoute(in *buildInput) *routev3.RouteConfiguration {
	perFilter := map[string]*anypb.Any{}
	if in.compileErr != nil {
		perFilter[AllowFilterName] = mustAny(&rbachttp.RBACPerRoute{Rbac: denyAll()})
	} else {
		for _, c := range in.compiled.HTTP {
			switch c.Action {
			case policy.ActionDeny:
				perFilter[DenyFilterName] = mustAny(&rbachttp.RBACPerRoute{Rbac: c.HTTPConfig()})
			case policy.ActionAllow:
				perFilter[AllowFilterName] = mustAny(&rbachttp.RBACPerRoute{Rbac: c.HTTPConfig()})
			}
			// AUDIT is action LOG, which grpc-go does not enforce; dry-run
			// policies are shadow rules, which grpc-go ignores (an override
			// without rules allows everything).
		}
	}
	return &routev3.RouteConfiguration{
		Name: InboundRouteName,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    "inbound",
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:                 "default",
				Match:                &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action:               &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
				TypedPerFilterConfig: perFilter,
			}},
		}},
	}
}

// resolveService maps a dial target "<name>.<namespace>[.svc[.domain]][:port]"
// to a service.
func resolveService(target string, services []*Service) *Service {
	host, portStr, hasPort := strings.Cut(target, ":")
	var port uint64
	if hasPort {
		p, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return nil
		}
		port = p
	}
	labels := strings.Split(host, ".")
	if len(labels) < 2 || (len(labels) > 2 && labels[2] != "svc") || (len(labels) > 3 && strings.Join(labels[3:], ".") != ClusterDomain) {
		return nil
	}
	var found *Service
	for _, s := range services {
		if s.Name != labels[0] || s.Namespace != labels[1] {
			continue
		}
		if hasPort && uint64(s.Port) == port {
			return s
		}
		if !hasPort {
			if found != nil {
				return nil // ambiguous: several ports and none named
			}
			found = s
		}
	}
	return found
}

func clusterName(s *Service) string {
	return "outbound|" + strconv.FormatUint(uint64(s.Port), 10) + "||" + s.Name + "." + s.Namespace + ".svc." + ClusterDomain
}

func clientListener(name string) *listenerv3.Listener {
	hcm := &hcmv3.HttpConnectionManager{
		StatPrefix: "outbound",
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			ConfigSource: adsSource(), RouteConfigName: name,
		}},
		HttpFilters: []*hcmv3.HttpFilter{routerFilter()},
	}
	return &listenerv3.Listener{Name: name, ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(hcm)}}
}

func clientRoute(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: []*routev3.Route{{
				Name:  "default",
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
				}},
			}},
		}},
	}
}

func clientCluster(name string, eps []*workload.Workload, o buildOptions) *clusterv3.Cluster {
	// The server must present the SPIFFE ID of one of the service's
	// workloads: a certificate of any other workload of the mesh is refused.
	seen := map[string]bool{}
	var sans []*matcherv3.StringMatcher
	for _, w := range eps {
		id := w.SPIFFEID(o.trustDomain)
		if !seen[id] {
			seen[id] = true
			sans = append(sans, &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: id}})
		}
	}
	sort.Slice(sans, func(i, j int) bool { return sans[i].GetExact() < sans[j].GetExact() })
	tlsCtx := &tlsv3.UpstreamTlsContext{CommonTlsContext: &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: o.certProvider, CertificateName: IdentityCertName},
		ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{InstanceName: o.certProvider, CertificateName: RootCertName},
			//lint:ignore SA1019 grpc-go v1.85 matches SANs from this field
			MatchSubjectAltNames: sans,
		}},
	}}
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		LbPolicy:             clusterv3.Cluster_ROUND_ROBIN,
		TransportSocket: &corev3.TransportSocket{
			Name: tlsTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(tlsCtx)},
		},
	}
}

func loadAssignment(name string, port uint32, eps []*workload.Workload) *endpointv3.ClusterLoadAssignment {
	var lbs []*endpointv3.LbEndpoint
	for _, w := range eps {
		for _, ip := range w.IPs {
			lbs = append(lbs, &endpointv3.LbEndpoint{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(ip.String(), port)}},
				HealthStatus:   corev3.HealthStatus_HEALTHY,
			})
		}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if len(lbs) > 0 {
		// grpc-go ignores localities of weight 0.
		cla.Endpoints = []*endpointv3.LocalityLbEndpoints{{
			Locality: &corev3.Locality{}, LbEndpoints: lbs, LoadBalancingWeight: wrapperspb.UInt32(1),
		}}
	}
	return cla
}

// ---- Envoy ----

func buildEnvoy(in *buildInput, rs resources) error {
	w := in.workload
	var httpFilters []*hcmv3.HttpFilter
	var netFilters []*listenerv3.Filter
	if in.compileErr != nil {
		httpFilters = []*hcmv3.HttpFilter{{Name: policy.HTTPRBACFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(denyAll())}}}
		netFilters = []*listenerv3.Filter{{Name: policy.NetworkRBACFilterName, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(denyAllNetwork())}}}
	} else {
		var err error
		if httpFilters, err = in.compiled.HTTPFilters(); err != nil {
			return fmt.Errorf("xds: %w", err)
		}
		if netFilters, err = in.compiled.NetworkFilters(); err != nil {
			return fmt.Errorf("xds: %w", err)
		}
		if err := repack(httpFilters, func(f *hcmv3.HttpFilter, a *anypb.Any) {
			f.ConfigType = &hcmv3.HttpFilter_TypedConfig{TypedConfig: a}
		}); err != nil {
			return err
		}
		if err := repack(netFilters, func(f *listenerv3.Filter, a *anypb.Any) {
			f.ConfigType = &listenerv3.Filter_TypedConfig{TypedConfig: a}
		}); err != nil {
			return err
		}
	}
	tlsCtx := mustAny(&tlsv3.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: IdentityCertName, SdsConfig: adsSource()}},
			ValidationContextType: &tlsv3.CommonTlsContext_ValidationContextSdsSecretConfig{
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: RootCertName, SdsConfig: adsSource()},
			},
		},
	})
	for _, s := range in.services {
		if !s.Selects(w) {
			continue
		}
		name := fmt.Sprintf("inbound|%d", s.Port)
		var filters []*listenerv3.Filter
		if s.Protocol == ProtocolTCP {
			filters = append(filters, netFilters...)
			filters = append(filters, &listenerv3.Filter{Name: wellknown.TCPProxy, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(&tcpproxyv3.TcpProxy{
				StatPrefix: name, ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: name},
			})}})
		} else {
			hf := append(append([]*hcmv3.HttpFilter{}, httpFilters...), routerFilter())
			hcm := &hcmv3.HttpConnectionManager{
				StatPrefix:     name,
				CodecType:      hcmv3.HttpConnectionManager_AUTO,
				RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: adsSource(), RouteConfigName: name}},
				HttpFilters:    hf,
			}
			filters = append(filters, &listenerv3.Filter{Name: wellknown.HTTPConnectionManager, ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)}})
			rs.add(resourcev3.RouteType, clientRoute(name, name))
		}
		rs.add(resourcev3.ListenerType, &listenerv3.Listener{
			Name:    name,
			Address: socketAddress("0.0.0.0", s.Port),
			FilterChains: []*listenerv3.FilterChain{{
				Name:            name,
				Filters:         filters,
				TransportSocket: &corev3.TransportSocket{Name: tlsTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx}},
			}},
		})
		// The waypoint forwards to the workload's own addresses.
		cla := loadAssignment(name, s.Port, []*workload.Workload{w})
		rs.add(resourcev3.ClusterType, &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			LoadAssignment:       cla,
		})
	}
	if in.compileErr == nil && in.compiled.JWTAuthn != nil {
		for _, r := range in.compiled.JWTAuthn.Remotes {
			rs.add(resourcev3.ClusterType, jwksCluster(r))
		}
	}
	if in.svid != nil {
		rs.add(resourcev3.SecretType, &tlsv3.Secret{Name: IdentityCertName, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes(in.svid.CertChainPEM),
			PrivateKey:       inlineBytes(in.svid.KeyPEM),
		}}})
	}
	if len(in.bundles) > 0 {
		rs.add(resourcev3.SecretType, rootSecret(in.bundles))
	}
	return nil
}

// SystemCAFile is the trust bundle Envoy verifies JWKS servers with.
const SystemCAFile = "/etc/ssl/certs/ca-certificates.crt"

// jwksCluster is the cluster a jwt_authn provider fetches its jwksUri
// through: the host resolved by DNS, TLS (with SNI, verified against the
// system trust bundle) for https.
func jwksCluster(r policy.JWKSRemote) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 r.Cluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_LOGICAL_DNS},
		ConnectTimeout:       durationpb.New(5 * time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: r.Cluster, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: socketAddress(r.Host, r.Port)}}}},
		}}},
	}
	if r.TLS {
		c.TransportSocket = &corev3.TransportSocket{Name: tlsTransportSocket, ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{
			Sni: r.Host,
			CommonTlsContext: &tlsv3.CommonTlsContext{ValidationContextType: &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
				TrustedCa:                 &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: SystemCAFile}},
				MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{SanType: tlsv3.SubjectAltNameMatcher_DNS, Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: r.Host}}}},
			}}},
		})}}
	}
	return c
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// rootSecret validates peers with Envoy's SPIFFE validator: a peer
// certificate is checked against the bundle of the trust domain its SPIFFE
// ID names, so several trust domains can be trusted without one CA
// vouching for another's IDs.
func rootSecret(bundles map[string][]byte) *tlsv3.Secret {
	tds := make([]string, 0, len(bundles))
	for td := range bundles {
		tds = append(tds, td)
	}
	sort.Strings(tds)
	cfg := &tlsv3.SPIFFECertValidatorConfig{}
	for _, td := range tds {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlsv3.SPIFFECertValidatorConfig_TrustDomain{Name: td, TrustBundle: inlineBytes(bundles[td])})
	}
	return &tlsv3.Secret{Name: RootCertName, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &corev3.TypedExtensionConfig{Name: spiffeValidatorName, TypedConfig: mustAny(cfg)},
	}}}
}
