package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	gcplog "github.com/envoyproxy/go-control-plane/pkg/log"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/kordon-dev/kordon/policy"
)

// Server is kordon's ADS server. Create it with New and run it with Serve.
//
// It is composed of parts that each own their state and lock: the
// policies and compiled RBAC (policyStore), the service model with each
// service's endpoints kept from the registry's changes (serviceIndex),
// the connected nodes and streams with the indexes that say which nodes a
// change reaches (nodeTable), the batch of nodes to rebuild and its
// timing (debouncer), the SVIDs served over SDS (svidCache), the per-node
// status (statusBook) and, as in go-control-plane, the snapshot cache
// apart from the server.
type Server struct {
	cfg     Config
	log     *slog.Logger
	cache   cachev3.SnapshotCache
	metrics *metrics
	now     func() time.Time

	policies *policyStore
	services *serviceIndex
	nodes    *nodeTable
	debounce *debouncer
	svids    *svidCache
	status   *statusBook
	clusters *clusterCache

	served      atomic.Bool
	builderPool chan struct{}
}

// New validates cfg and returns a Server. It starts nothing; call Serve.
func New(cfg Config) (*Server, error) {
	if cfg.Registry == nil {
		return nil, errors.New("xds: Config.Registry is required")
	}
	if cfg.TrustDomain == "" {
		return nil, errors.New("xds: Config.TrustDomain is required")
	}
	if cfg.Authenticator == nil && !cfg.AllowUnauthenticated {
		return nil, errors.New("xds: Config.Authenticator is required (or AllowUnauthenticated)")
	}
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = policy.DefaultRootNamespace
	}
	if cfg.CertProviderInstance == "" {
		cfg.CertProviderInstance = DefaultCertProviderInstance
	}
	if cfg.DebounceQuiet <= 0 {
		cfg.DebounceQuiet = DefaultDebounceQuiet
	}
	if cfg.DebounceMax <= 0 {
		cfg.DebounceMax = DefaultDebounceMax
	}
	if cfg.SVIDRefresh <= 0 {
		cfg.SVIDRefresh = DefaultSVIDRefresh
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Policies == nil {
		cfg.Policies = &policy.Set{}
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("xds: metrics: %w", err)
	}
	services, err := checkServices(cfg.Services)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:         cfg,
		log:         cfg.Logger,
		metrics:     m,
		now:         cfg.Now,
		policies:    newPolicyStore(cfg.RootNamespace, cfg.Policies),
		services:    newServiceIndex(cfg.Registry, services),
		nodes:       newNodeTable(),
		debounce:    newDebouncer(cfg.DebounceQuiet, cfg.DebounceMax),
		svids:       newSVIDCache(cfg.Identities, cfg.Now),
		status:      newStatusBook(),
		clusters:    newClusterCache(),
		builderPool: make(chan struct{}, runtime.GOMAXPROCS(0)),
	}
	lg := cfg.Logger
	s.cache = cachev3.NewSnapshotCache(false, cachev3.IDHash{}, gcplog.LoggerFuncs{
		DebugFunc: func(f string, a ...any) {},
		WarnFunc:  func(f string, a ...any) { lg.Warn("xds cache warning", "detail", fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { lg.Error("xds cache error", "detail", fmt.Sprintf(f, a...)) },
	})
	return s, nil
}

func checkServices(in []Service) ([]*Service, error) {
	out := make([]*Service, 0, len(in))
	seen := map[string]bool{}
	for i := range in {
		s := in[i]
		if err := s.validate(); err != nil {
			return nil, fmt.Errorf("xds: %w", err)
		}
		if seen[s.Key()] {
			return nil, fmt.Errorf("xds: duplicate service %s", s.Key())
		}
		seen[s.Key()] = true
		if s.Protocol == "" {
			s.Protocol = ProtocolGRPC
		}
		out = append(out, &s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out, nil
}

// SetPolicies swaps the policy set. Only the nodes a changed policy can
// apply to (by namespace and selector, in its old and new version) are
// rebuilt, after the debounce period; a root-namespace policy reaches
// every namespace.
func (s *Server) SetPolicies(set *policy.Set) {
	if set == nil {
		set = &policy.Set{}
	}
	s.markScopes(s.policies.set(set))
}

// markScopes marks the nodes whose workload one of scopes selects.
func (s *Server) markScopes(scopes []policyScope) {
	if len(scopes) == 0 {
		return
	}
	root := s.cfg.RootNamespace
	byNS := map[string][]policyScope{}
	for _, sc := range scopes {
		byNS[sc.namespace] = append(byNS[sc.namespace], sc)
	}
	var cands []*node
	if len(byNS[root]) > 0 {
		cands = s.nodes.inNamespace("")
	} else {
		for ns := range byNS {
			cands = append(cands, s.nodes.inNamespace(ns)...)
		}
	}
	var ids []string
	for _, n := range cands {
		_, pod, _ := strings.Cut(n.id, "/")
		// The labels the registry has now: a node built with older ones
		// is already marked by that registry change.
		var labels map[string]string
		if w, ok := s.cfg.Registry.ByPod(n.ns, pod); ok {
			labels = w.Labels
		}
		for _, sc := range append(byNS[n.ns], byNS[root]...) {
			if sc.selects(root, n.ns, labels) {
				ids = append(ids, n.id)
				break
			}
		}
	}
	s.debounce.mark(ids...)
}

// JWKSChanged drops every compiled policy and rebuilds every node: a key
// set the Config.JWKS resolver serves changed.
func (s *Server) JWKSChanged() {
	s.policies.dropCompiled()
	s.markAll()
}

func (s *Server) markAll() {
	var ids []string
	for _, n := range s.nodes.inNamespace("") {
		ids = append(ids, n.id)
	}
	s.debounce.mark(ids...)
}

// SetServices swaps the service model. The nodes a changed service
// selects (old or new version) and those that dial it are rebuilt.
func (s *Server) SetServices(services []Service) error {
	checked, err := checkServices(services)
	if err != nil {
		return err
	}
	changed := s.services.setServices(checked)
	keep := map[string]bool{}
	for _, svc := range checked {
		keep[clusterName(svc)] = true
	}
	s.clusters.forget(keep)
	dialed := map[string]bool{}
	var ids []string
	for _, svc := range changed {
		dialed[svc.Namespace+"/"+svc.Name] = true
		for _, n := range s.nodes.inNamespace(svc.Namespace) {
			_, pod, _ := strings.Cut(n.id, "/")
			if w, ok := s.cfg.Registry.ByPod(n.ns, pod); ok && svc.Selects(w) {
				ids = append(ids, n.id)
			}
		}
	}
	s.debounce.mark(append(ids, s.nodes.dialing(dialed)...)...)
	return nil
}

// onRegistryChange applies the registry's changes since the last call to
// the endpoint index and marks the nodes they reach: the node of each
// changed workload and the nodes dialing a service whose endpoints
// changed. It costs O(changes), not O(workloads).
func (s *Server) onRegistryChange() {
	ch := s.services.sync()
	s.debounce.mark(append(s.nodes.ids(ch.pods), s.nodes.dialing(ch.services)...)...)
}

// rebuild builds, validates and sets one node's snapshot. A failure keeps
// the last good snapshot in force.
func (s *Server) rebuild(ctx context.Context, id string) {
	n := s.nodes.get(id)
	if n == nil {
		return
	}
	requested := s.nodes.requestedNames(n)
	sort.Strings(requested)

	n.mu.Lock()
	defer n.mu.Unlock()
	start := time.Now()
	b, err := s.buildNode(ctx, n, requested)
	s.metrics.buildSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.builds.WithLabelValues("error").Inc()
		s.log.Error("xds snapshot rejected", "node_id", id, "error", err)
		s.status.update(id, func(st *NodeStatus) { st.LastBuildError = err.Error() })
		return
	}
	n.memo = b.memo
	if b.hash == n.hash {
		s.metrics.builds.WithLabelValues("unchanged").Inc()
		s.status.update(id, func(st *NodeStatus) { st.PolicyNotes = b.policyNotes })
		return
	}
	if err := s.cache.SetSnapshot(ctx, id, b.snapshot); err != nil {
		s.metrics.builds.WithLabelValues("error").Inc()
		s.log.Error("xds snapshot rejected", "node_id", id, "error", err)
		return
	}
	n.gen++
	n.hash = b.hash
	s.metrics.builds.WithLabelValues("pushed").Inc()
	version := b.version
	versions := map[string]string{}
	for _, t := range servedTypes {
		versions[shortType(t)] = b.snapshot.GetVersion(t)
	}
	now := s.now()
	s.status.update(id, func(st *NodeStatus) {
		st.SnapshotVersion = version
		st.Versions = versions
		st.SnapshotAt = now
		st.Resources = b.counts
		st.LastBuildError = ""
		st.PolicyNotes = b.policyNotes
	})
	s.log.Debug("xds snapshot set", "node_id", id, "version", version)
}

// input gathers what node n's snapshot depends on; nil when its workload
// is gone (or is another pod under the same name).
func (s *Server) input(ctx context.Context, n *node, requested []string) (*buildInput, error) {
	_, pod, _ := strings.Cut(n.id, "/")
	w, ok := s.cfg.Registry.ByPod(n.ns, pod)
	// A pod re-created under the same name with another service account
	// is not the workload the streams authenticated as.
	if !ok || w.ServiceAccount != n.serviceAccount {
		return nil, nil
	}
	st := s.policies.load()
	// Envoy nodes run the jwt_authn filter of the workload's
	// RequestAuthentications; proxyless gRPC validates no JWT, so JWT
	// attributes fail closed there.
	opts := policy.CompileOptions{RootNamespace: s.cfg.RootNamespace, TrustDomain: s.cfg.TrustDomain, JWTAuthn: n.kind == KindEnvoy}
	if s.cfg.JWKS != nil {
		opts.JWKS = s.cfg.JWKS.JWKS
	}
	cr := st.compile(w, opts)
	if cr.err != nil {
		s.log.Error("xds policy compile failed, denying all", "node_id", n.id, "error", cr.err)
	}
	in := &buildInput{
		workload:   w,
		kind:       n.kind,
		requested:  requested,
		services:   s.services.inNamespace(w.Namespace),
		resolve:    s.services.resolve,
		endpoints:  s.services.endpoints,
		compiled:   cr.c,
		compileErr: cr.err,
		memo:       newMemo(n.memo),
		clusters:   s.clusters,
		opts:       buildOptions{trustDomain: s.cfg.TrustDomain, certProvider: s.cfg.CertProviderInstance},
	}
	if n.kind == KindEnvoy && s.cfg.Identities != nil {
		id := w.SPIFFEID(s.cfg.TrustDomain)
		svid, err := s.svids.get(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("xds: svid for %s: %w", id, err)
		}
		in.svid = svid
		in.bundles = s.cfg.Identities.TrustBundles()
	}
	return in, nil
}

func (s *Server) buildNode(ctx context.Context, n *node, requested []string) (*built, error) {
	in, err := s.input(ctx, n, requested)
	if err != nil {
		return nil, err
	}
	gen := n.gen
	version := func(hash string) string { return strconv.FormatUint(gen+1, 10) + "-" + hash[:8] }
	if in == nil {
		// The workload is gone: serve nothing (a proxyless server goes
		// NOT_SERVING) rather than its stale policy.
		snap, hash, counts, err := makeSnapshot(resources{}, nil, version)
		if err != nil {
			return nil, err
		}
		return &built{snapshot: snap, hash: hash, version: version(hash), counts: counts}, nil
	}
	return build(in, version)
}

// svidsDue marks Envoy nodes whose SVID is due for renewal.
func (s *Server) svidsDue() {
	due := s.svids.due()
	if len(due) == 0 {
		return
	}
	var ids []string
	for _, n := range s.nodes.inNamespace("") {
		if n.kind != KindEnvoy {
			continue
		}
		_, pod, _ := strings.Cut(n.id, "/")
		if w, ok := s.cfg.Registry.ByPod(n.ns, pod); ok && due[w.SPIFFEID(s.cfg.TrustDomain)] {
			ids = append(ids, n.id)
		}
	}
	s.debounce.mark(ids...)
}

// push rebuilds the nodes ids, GOMAXPROCS at a time.
func (s *Server) push(ctx context.Context, ids []string) {
	if len(ids) == 0 {
		return
	}
	start := time.Now()
	var wg sync.WaitGroup
	for _, id := range ids {
		s.builderPool <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-s.builderPool; wg.Done() }()
			s.rebuild(ctx, id)
		}()
	}
	wg.Wait()
	s.metrics.pushBatch.Observe(time.Since(start).Seconds())
	s.log.Debug("xds push done", "nodes", len(ids), "seconds", time.Since(start).Seconds())
}

// RecomputeAll rebuilds every connected node now, bypassing the debouncer,
// and returns how long it took (the benchmark's full recompute).
func (s *Server) RecomputeAll(ctx context.Context) time.Duration {
	var ids []string
	for _, n := range s.nodes.inNamespace("") {
		ids = append(ids, n.id)
	}
	// Dropping the compile cache makes this measure compilation too.
	s.policies.dropCompiled()
	start := time.Now()
	s.push(ctx, ids)
	return time.Since(start)
}

// pushLoop applies registry changes as they come, checks SVIDs for
// renewal and pushes debounced batches until ctx is done.
func (s *Server) pushLoop(ctx context.Context) {
	regCh, stop := s.cfg.Registry.Subscribe()
	defer stop()
	svidTick := time.NewTicker(s.cfg.SVIDRefresh)
	defer svidTick.Stop()
	// Changes made between New and Subscribe.
	s.onRegistryChange()
	s.debounce.run(ctx, func(ids []string) { s.push(ctx, ids) }, regCh, s.onRegistryChange, svidTick.C, s.svidsDue)
}

// Serve serves ADS (and the per-type discovery services) on lis until ctx
// is done. Call it once.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("xds: Serve called twice")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var opts []grpc.ServerOption
	if s.cfg.TLS != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(s.cfg.TLS)))
	}
	gs := grpc.NewServer(opts...)
	xs := serverv3.NewServer(ctx, s.cache, s.callbacks())
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(gs, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(gs, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(gs, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(gs, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(gs, xs)
	secretservice.RegisterSecretDiscoveryServiceServer(gs, xs)

	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		s.pushLoop(ctx)
	}()
	go func() {
		<-ctx.Done()
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(2 * time.Second):
			gs.Stop()
		}
	}()
	err := gs.Serve(lis)
	cancel()
	<-loopDone
	if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds: serve: %w", err)
	}
	return nil
}

// nodeKind reads the node kind from node metadata.
func nodeKind(n *corev3.Node) NodeKind {
	if v := n.GetMetadata().GetFields()[ProxyMetadataKey]; v != nil && v.GetStringValue() == string(KindEnvoy) {
		return KindEnvoy
	}
	return KindProxyless
}
