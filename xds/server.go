package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sort"
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

	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// Server is kordon's ADS server. Create it with New and run it with Serve.
type Server struct {
	cfg     Config
	log     *slog.Logger
	cache   cachev3.SnapshotCache
	metrics *metrics
	now     func() time.Time

	st atomic.Pointer[state]
	// setMu serialises SetPolicies, SetServices and RecomputeAll, which
	// derive the next state from the current one.
	setMu sync.Mutex

	mu      sync.Mutex // guards nodes, streams
	nodes   map[string]*node
	streams map[int64]*stream

	dirtyMu sync.Mutex
	dirty   map[string]bool
	kick    chan struct{}

	statusMu sync.Mutex
	status   map[string]*NodeStatus

	svidMu sync.Mutex
	svids  map[string]*SVID

	regMu       sync.Mutex
	regVersion  uint64
	regList     []*workload.Workload
	regFprint   map[string]string
	served      atomic.Bool
	builderPool chan struct{}
}

// state is one immutable version of the policies and services, with a
// compile cache that lives as long as the policies it was built from.
type state struct {
	policies *policy.Set
	services []*Service
	// fingerprints of each namespace's policies and services.
	policyFP  map[string]string
	serviceFP map[string]string

	compileMu sync.Mutex
	compiled  map[string]compileResult
}

type compileResult struct {
	c   *policy.Compiled
	err error
}

type node struct {
	id   string
	kind NodeKind
	// serviceAccount is the one authorized when the node was bound.
	serviceAccount string
	// mu serialises builds of this node.
	mu sync.Mutex
	// guarded by Server.mu:
	streams    map[int64]bool
	requested  map[string]bool
	namespaces map[string]bool
	// guarded by mu:
	gen  uint64
	hash string
}

type sent struct{ typeURL, version string }

type stream struct {
	identity *Identity
	nodeID   string
	nonces   map[string]sent
	// names are the Listener names this stream subscribes to.
	names map[string]bool
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
	s := &Server{
		cfg:         cfg,
		log:         cfg.Logger,
		metrics:     m,
		now:         cfg.Now,
		nodes:       map[string]*node{},
		streams:     map[int64]*stream{},
		dirty:       map[string]bool{},
		kick:        make(chan struct{}, 1),
		status:      map[string]*NodeStatus{},
		svids:       map[string]*SVID{},
		builderPool: make(chan struct{}, runtime.GOMAXPROCS(0)),
	}
	lg := cfg.Logger
	s.cache = cachev3.NewSnapshotCache(false, cachev3.IDHash{}, gcplog.LoggerFuncs{
		DebugFunc: func(f string, a ...any) {},
		WarnFunc:  func(f string, a ...any) { lg.Warn("xds cache warning", "detail", fmt.Sprintf(f, a...)) },
		ErrorFunc: func(f string, a ...any) { lg.Error("xds cache error", "detail", fmt.Sprintf(f, a...)) },
	})
	services, err := checkServices(cfg.Services)
	if err != nil {
		return nil, err
	}
	s.st.Store(newState(cfg.Policies, services))
	s.regFprint = workloadFingerprints(cfg.Registry.List())
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

func newState(set *policy.Set, services []*Service) *state {
	st := &state{policies: set, services: services, compiled: map[string]compileResult{}}
	st.policyFP = map[string]string{}
	// A namespace's policies are its AuthorizationPolicies and its
	// RequestAuthentications (they change the jwt_authn filter and what
	// the RBAC can know).
	type nsPolicies struct {
		Authorization []*policy.AuthorizationPolicy
		Authn         []*policy.RequestAuthentication
	}
	byNS := map[string]*nsPolicies{}
	of := func(ns string) *nsPolicies {
		if byNS[ns] == nil {
			byNS[ns] = &nsPolicies{}
		}
		return byNS[ns]
	}
	for _, p := range set.Authorization {
		of(p.Metadata.Namespace).Authorization = append(of(p.Metadata.Namespace).Authorization, p)
	}
	for _, p := range set.RequestAuthentication {
		of(p.Metadata.Namespace).Authn = append(of(p.Metadata.Namespace).Authn, p)
	}
	for ns, ps := range byNS {
		st.policyFP[ns] = fingerprint(ps)
	}
	st.serviceFP = map[string]string{}
	svcByNS := map[string][]*Service{}
	for _, s := range services {
		svcByNS[s.Namespace] = append(svcByNS[s.Namespace], s)
	}
	for ns, ss := range svcByNS {
		st.serviceFP[ns] = fingerprint(ss)
	}
	return st
}

func fingerprint(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		// Policies and services are plain data; report the failure as a
		// value that never equals a real fingerprint, so it counts as a
		// change.
		return "error:" + err.Error()
	}
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:16])
}

func changedKeys(a, b map[string]string) map[string]bool {
	out := map[string]bool{}
	for k, v := range a {
		if b[k] != v {
			out[k] = true
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			out[k] = true
		}
	}
	return out
}

// SetPolicies swaps the policy set. Only nodes that depend on a namespace
// whose policies changed are rebuilt (all of them when the root
// namespace's changed), after the debounce period.
func (s *Server) SetPolicies(set *policy.Set) {
	if set == nil {
		set = &policy.Set{}
	}
	s.setMu.Lock()
	defer s.setMu.Unlock()
	old := s.st.Load()
	next := newState(set, old.services)
	changed := changedKeys(old.policyFP, next.policyFP)
	// Keep compiled results of namespaces that did not change.
	if !changed[s.cfg.RootNamespace] {
		old.compileMu.Lock()
		for k, v := range old.compiled {
			ns, _, _ := strings.Cut(k, "\x00")
			if !changed[ns] {
				next.compiled[k] = v
			}
		}
		old.compileMu.Unlock()
	}
	s.st.Store(next)
	s.markNamespaces(changed, changed[s.cfg.RootNamespace])
}

// JWKSChanged drops every compiled policy and rebuilds every node: a key
// set the Config.JWKS resolver serves changed.
func (s *Server) JWKSChanged() {
	s.setMu.Lock()
	defer s.setMu.Unlock()
	old := s.st.Load()
	next := newState(old.policies, old.services)
	s.st.Store(next)
	s.markNamespaces(nil, true)
}

// SetServices swaps the service model.
func (s *Server) SetServices(services []Service) error {
	checked, err := checkServices(services)
	if err != nil {
		return err
	}
	s.setMu.Lock()
	defer s.setMu.Unlock()
	old := s.st.Load()
	next := newState(old.policies, checked)
	old.compileMu.Lock()
	for k, v := range old.compiled {
		next.compiled[k] = v
	}
	old.compileMu.Unlock()
	s.st.Store(next)
	s.markNamespaces(changedKeys(old.serviceFP, next.serviceFP), false)
	return nil
}

func workloadFingerprints(ws []*workload.Workload) map[string]string {
	out := make(map[string]string, len(ws))
	for _, w := range ws {
		out[w.Key()] = fingerprint(w)
	}
	return out
}

// onRegistryChange marks the namespaces whose workloads changed.
func (s *Server) onRegistryChange() {
	fp := workloadFingerprints(s.cfg.Registry.List())
	s.regMu.Lock()
	changed := changedKeys(s.regFprint, fp)
	s.regFprint = fp
	s.regMu.Unlock()
	nss := map[string]bool{}
	for k := range changed {
		ns, _, _ := strings.Cut(k, "/")
		nss[ns] = true
	}
	s.markNamespaces(nss, false)
}

// markNamespaces marks every node that read one of nss (or every node)
// dirty and wakes the debouncer.
func (s *Server) markNamespaces(nss map[string]bool, all bool) {
	if len(nss) == 0 && !all {
		return
	}
	var ids []string
	s.mu.Lock()
	for id, n := range s.nodes {
		if all {
			ids = append(ids, id)
			continue
		}
		for ns := range n.namespaces {
			if nss[ns] {
				ids = append(ids, id)
				break
			}
		}
	}
	s.mu.Unlock()
	s.markDirty(ids...)
}

func (s *Server) markDirty(ids ...string) {
	if len(ids) == 0 {
		return
	}
	s.dirtyMu.Lock()
	for _, id := range ids {
		s.dirty[id] = true
	}
	s.dirtyMu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// registryList returns the registry's workloads, cached per version.
func (s *Server) registryList() []*workload.Workload {
	v := s.cfg.Registry.Version()
	s.regMu.Lock()
	defer s.regMu.Unlock()
	if s.regList == nil || s.regVersion != v {
		s.regList = s.cfg.Registry.List()
		s.regVersion = v
	}
	return s.regList
}

func labelsKey(ns string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString(ns)
	b.WriteByte(0)
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte('=')
		b.WriteString(labels[k])
		b.WriteByte(0)
	}
	return b.String()
}

// compile returns the compiled RBAC for a workload, shared by every
// workload of the same namespace and labels.
func (st *state) compile(w *workload.Workload, opts policy.CompileOptions) compileResult {
	key := labelsKey(w.Namespace, w.Labels)
	if opts.JWTAuthn {
		key += "jwt" // Envoy: the RBAC reads jwt_authn's payload (no label entry lacks '=')
	}
	st.compileMu.Lock()
	r, ok := st.compiled[key]
	st.compileMu.Unlock()
	if ok {
		return r
	}
	c, err := policy.Compile(st.policies, policy.Target{Namespace: w.Namespace, Labels: w.Labels}, opts)
	r = compileResult{c: c, err: err}
	st.compileMu.Lock()
	st.compiled[key] = r
	st.compileMu.Unlock()
	return r
}

// rebuild builds, validates and sets one node's snapshot. A failure keeps
// the last good snapshot in force.
func (s *Server) rebuild(ctx context.Context, id string) {
	s.mu.Lock()
	n := s.nodes[id]
	if n == nil {
		s.mu.Unlock()
		return
	}
	requested := make([]string, 0, len(n.requested))
	for r := range n.requested {
		requested = append(requested, r)
	}
	s.mu.Unlock()
	sort.Strings(requested)

	n.mu.Lock()
	defer n.mu.Unlock()
	start := time.Now()
	b, err := s.buildNode(ctx, n, requested)
	s.metrics.buildSeconds.Observe(time.Since(start).Seconds())
	if err != nil {
		s.metrics.builds.WithLabelValues("error").Inc()
		s.log.Error("xds snapshot rejected", "node_id", id, "error", err)
		s.updateStatus(id, func(st *NodeStatus) { st.LastBuildError = err.Error() })
		return
	}
	if b.hash == n.hash {
		s.metrics.builds.WithLabelValues("unchanged").Inc()
		s.setNamespaces(n, b.namespaces)
		s.updateStatus(id, func(st *NodeStatus) { st.PolicyNotes = b.policyNotes })
		return
	}
	if err := s.cache.SetSnapshot(ctx, id, b.snapshot); err != nil {
		s.metrics.builds.WithLabelValues("error").Inc()
		s.log.Error("xds snapshot rejected", "node_id", id, "error", err)
		return
	}
	n.gen++
	n.hash = b.hash
	s.setNamespaces(n, b.namespaces)
	s.metrics.builds.WithLabelValues("pushed").Inc()
	version := b.version
	versions := map[string]string{}
	for _, t := range servedTypes {
		versions[shortType(t)] = b.snapshot.GetVersion(t)
	}
	now := s.now()
	s.updateStatus(id, func(st *NodeStatus) {
		st.SnapshotVersion = version
		st.Versions = versions
		st.SnapshotAt = now
		st.Resources = b.counts
		st.LastBuildError = ""
		st.PolicyNotes = b.policyNotes
	})
	s.log.Debug("xds snapshot set", "node_id", id, "version", version)
}

func (s *Server) setNamespaces(n *node, nss map[string]bool) {
	nss[s.cfg.RootNamespace] = true
	s.mu.Lock()
	n.namespaces = nss
	s.mu.Unlock()
}

func (s *Server) buildNode(ctx context.Context, n *node, requested []string) (*built, error) {
	ns, pod, _ := strings.Cut(n.id, "/")
	w, ok := s.cfg.Registry.ByPod(ns, pod)
	// A pod re-created under the same name with another service account
	// is not the workload the streams authenticated as.
	if ok && w.ServiceAccount != n.serviceAccount {
		ok = false
	}
	if !ok {
		// The workload is gone: serve nothing (a proxyless server goes
		// NOT_SERVING) rather than its stale policy.
		gen := n.gen
		snap, hash, counts, err := makeSnapshot(resources{}, func(h string) string { return fmt.Sprintf("%d-%s", gen+1, h[:8]) })
		if err != nil {
			return nil, err
		}
		return &built{snapshot: snap, hash: hash, version: fmt.Sprintf("%d-%s", gen+1, hash[:8]), namespaces: map[string]bool{ns: true}, counts: counts}, nil
	}
	st := s.st.Load()
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
		services:   st.services,
		registry:   s.registryList(),
		compiled:   cr.c,
		compileErr: cr.err,
		opts:       buildOptions{trustDomain: s.cfg.TrustDomain, certProvider: s.cfg.CertProviderInstance},
	}
	if n.kind == KindEnvoy && s.cfg.Identities != nil {
		id := w.SPIFFEID(s.cfg.TrustDomain)
		svid, err := s.svidFor(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("xds: svid for %s: %w", id, err)
		}
		in.svid = svid
		in.bundles = s.cfg.Identities.TrustBundles()
	}
	gen := n.gen
	return build(in, func(hash string) string { return fmt.Sprintf("%d-%s", gen+1, hash[:8]) })
}

// svidFor returns a cached SVID for id, renewed at half of its lifetime
// (counted from issue, as every other holder: identity.RenewTime).
func (s *Server) svidFor(ctx context.Context, id string) (*SVID, error) {
	now := s.now()
	s.svidMu.Lock()
	cur := s.svids[id]
	s.svidMu.Unlock()
	if cur != nil && now.Before(identity.RenewTime(cur.NotBefore, cur.NotAfter)) {
		return cur, nil
	}
	svid, err := s.cfg.Identities.SVID(ctx, id)
	if err != nil {
		return nil, err
	}
	s.svidMu.Lock()
	s.svids[id] = &svid
	s.svidMu.Unlock()
	return &svid, nil
}

// svidsDue marks Envoy nodes whose SVID passed half of its lifetime.
func (s *Server) svidsDue() {
	now := s.now()
	s.svidMu.Lock()
	due := map[string]bool{}
	for id, sv := range s.svids {
		if !now.Before(identity.RenewTime(sv.NotBefore, sv.NotAfter)) {
			due[id] = true
		}
	}
	s.svidMu.Unlock()
	if len(due) == 0 {
		return
	}
	var ids []string
	s.mu.Lock()
	for id, n := range s.nodes {
		if n.kind != KindEnvoy {
			continue
		}
		ns, pod, _ := strings.Cut(id, "/")
		if w, ok := s.cfg.Registry.ByPod(ns, pod); ok && due[w.SPIFFEID(s.cfg.TrustDomain)] {
			ids = append(ids, id)
		}
	}
	s.mu.Unlock()
	s.markDirty(ids...)
}

// pushDirty rebuilds every dirty node, GOMAXPROCS at a time.
func (s *Server) pushDirty(ctx context.Context) {
	s.dirtyMu.Lock()
	ids := make([]string, 0, len(s.dirty))
	for id := range s.dirty {
		ids = append(ids, id)
	}
	s.dirty = map[string]bool{}
	s.dirtyMu.Unlock()
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
	s.mu.Lock()
	ids := make([]string, 0, len(s.nodes))
	for id := range s.nodes {
		ids = append(ids, id)
	}
	s.mu.Unlock()
	// A fresh state drops the compile cache, so this measures compilation
	// too.
	s.setMu.Lock()
	old := s.st.Load()
	s.st.Store(newState(old.policies, old.services))
	s.setMu.Unlock()
	s.markDirty(ids...)
	start := time.Now()
	s.pushDirty(ctx)
	return time.Since(start)
}

// pushLoop debounces changes: a batch is pushed once no change arrived for
// DebounceQuiet, or DebounceMax after its first change.
func (s *Server) pushLoop(ctx context.Context) {
	regCh, stop := s.cfg.Registry.Subscribe()
	defer stop()
	svidTick := time.NewTicker(s.cfg.SVIDRefresh)
	defer svidTick.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var first time.Time
	pending := false
	for {
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-regCh:
			s.onRegistryChange()
		case <-svidTick.C:
			s.svidsDue()
		case <-s.kick:
			now := time.Now()
			if !pending {
				pending = true
				first = now
			}
			delay := s.cfg.DebounceQuiet
			if deadline := first.Add(s.cfg.DebounceMax); now.Add(delay).After(deadline) {
				delay = max(deadline.Sub(now), 0)
			}
			timer.Reset(delay)
		case <-timer.C:
			pending = false
			s.pushDirty(ctx)
		}
	}
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
