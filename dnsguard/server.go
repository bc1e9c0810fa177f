package dnsguard

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// UnknownClientPolicy says what to do with queries from IPs the registry
// does not know.
type UnknownClientPolicy string

// Unknown client policies.
const (
	// UnknownAllow resolves everything for unknown clients (still logged,
	// and still subject to mesh-wide deny lists and root-namespace policies
	// without selectors).
	UnknownAllow UnknownClientPolicy = "allow"
	// UnknownDeny resolves only in-cluster names for unknown clients.
	UnknownDeny UnknownClientPolicy = "deny"
	// UnknownRefuse answers REFUSED to unknown clients.
	UnknownRefuse UnknownClientPolicy = "refuse"
)

// Config configures a Server. The zero value of every optional field has a
// documented default.
type Config struct {
	// Registry attributes source IPs to workloads. Required.
	Registry *workload.Registry
	// Upstreams are "ip:port" resolvers tried in order with failover.
	Upstreams []string
	// ClusterDNS receives in-cluster names (*.ClusterDomain); empty means
	// the Upstreams.
	ClusterDNS []string
	// ClusterDomain is the cluster DNS domain (default cluster.local).
	ClusterDomain string
	// RootNamespace holds mesh-wide EgressPolicies (default kordon-system).
	RootNamespace string
	// TrustDomain builds clients' SPIFFE IDs (default cluster.local).
	TrustDomain string
	// Node is this node's name, recorded in events.
	Node string
	// UnknownClients is the policy for IPs not in the registry (default allow).
	UnknownClients UnknownClientPolicy
	// BlockRcode is the response code for blocked names: dns.RcodeNameError
	// (default) or dns.RcodeRefused.
	BlockRcode int
	// Blocklist is a mesh-wide deny list (hosts or domain-list files);
	// nil for none. Replaceable with SetBlocklist.
	Blocklist *Blocklist
	// DoHList names well-known DNS-over-HTTPS resolvers, blocked for
	// workloads whose egress firewall mode is Enforce (so they cannot
	// resolve around the cluster resolver; other workloads are not
	// affected). nil means DefaultDoHList(); an empty Blocklist (for
	// example &Blocklist{}) blocks none.
	DoHList *Blocklist
	// Inspector watches traffic (the exfiltration detector); optional.
	Inspector Inspector
	// Firewall, if set, admits the addresses of every allowed or audited
	// answer before it is written (see Firewall); nil: no hook.
	Firewall Firewall
	// QueryLog receives one JSON object per query; nil disables logging.
	QueryLog io.Writer
	// QueryLogBuffer bounds queued log records (default 65536).
	QueryLogBuffer int
	// Dnstap, if set, sends every query and its reply as dnstap
	// CLIENT_QUERY and CLIENT_RESPONSE messages over Frame Streams to
	// "unix:/path.sock" or "tcp:host:port" (ParseDnstapAddress), without
	// ever blocking a query: at most QueryLogBuffer queries are queued,
	// the rest dropped and counted; a lost collector is redialled every
	// second.
	Dnstap string
	// DnstapIdentity is the dnstap identity field (default Node).
	DnstapIdentity string
	// Timeout per upstream attempt (default 2s).
	Timeout time.Duration
	// CacheSize is the maximum number of cached answers (default 100000).
	CacheSize int
	// MinTTL and MaxTTL bound positive cache TTLs (defaults 0 and 1h);
	// NegativeTTL caps negative caching (default 5m, RFC 2308).
	MinTTL, MaxTTL, NegativeTTL time.Duration
	// ServeStale is how long expired answers may be served when every
	// upstream fails (RFC 8767; default 1 day; negative disables).
	ServeStale time.Duration
	// RateLimit is queries per second allowed per client IP (0: off) with
	// RateBurst tokens.
	RateLimit float64
	RateBurst int
	// HealthCheckInterval probes failed upstreams (default 2s).
	HealthCheckInterval time.Duration
	// DrainTimeout bounds how long Serve, once its context ends, keeps
	// answering datagrams already queued on its UDP sockets after the
	// kernel stopped giving it new ones (default 5s; see Serve).
	DrainTimeout time.Duration
	// Metrics registers the Prometheus collectors; nil skips registration.
	Metrics prometheus.Registerer
	// Logger receives operational logs (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Server is the filtering resolver. It implements dns.Handler.
type Server struct {
	cfg       Config
	log       *slog.Logger
	metrics   *metrics
	fwd       *forwarder
	clusterFw *forwarder
	cache     *cache
	qlog      *queryLog
	tap       *queryLog
	limiter   *rateLimiter
	ids       *idCache
	doh       *Blocklist

	egress    atomic.Pointer[egressState]
	blocklist atomic.Pointer[Blocklist]

	ready     chan struct{} // closed once Serve reads its sockets
	readyOnce sync.Once

	mu       sync.Mutex
	servers  []*dns.Server
	cancel   context.CancelFunc
	closed   bool
	serving  sync.WaitGroup // Serve calls in progress
	inflight sync.WaitGroup // queries being answered on the UDP fast path
}

// egressState is the compiled policy set plus a per-workload cache of
// WorkloadEgress, valid for one registry version.
type egressState struct {
	ix        *policy.EgressIndex
	regVer    uint64
	byWL      sync.Map // *workload.Workload -> *policy.WorkloadEgress
	unknownWL *policy.WorkloadEgress
}

var _ dns.Handler = (*Server)(nil)

// New validates cfg, fills defaults and builds a Server. Call
// ListenAndServe or Serve to answer queries, and Close when done.
func New(cfg Config) (*Server, error) {
	if cfg.Registry == nil {
		return nil, errors.New("dnsguard: Config.Registry is required")
	}
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("dnsguard: at least one upstream is required")
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = policy.DefaultRootNamespace
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = policy.DefaultTrustDomain
	}
	switch cfg.UnknownClients {
	case "":
		cfg.UnknownClients = UnknownAllow
	case UnknownAllow, UnknownDeny, UnknownRefuse:
	default:
		return nil, fmt.Errorf("dnsguard: unknown-clients policy %q (want allow, deny or refuse)", cfg.UnknownClients)
	}
	switch cfg.BlockRcode {
	case 0:
		cfg.BlockRcode = dns.RcodeNameError
	case dns.RcodeNameError, dns.RcodeRefused:
	default:
		return nil, fmt.Errorf("dnsguard: block rcode must be NXDOMAIN or REFUSED, got %s", dns.RcodeToString[cfg.BlockRcode])
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = 100000
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = time.Hour
	}
	if cfg.NegativeTTL <= 0 {
		cfg.NegativeTTL = 5 * time.Minute
	}
	if cfg.ServeStale == 0 {
		cfg.ServeStale = 24 * time.Hour
	} else if cfg.ServeStale < 0 {
		cfg.ServeStale = 0
	}
	if cfg.QueryLogBuffer <= 0 {
		cfg.QueryLogBuffer = 65536
	}
	if cfg.HealthCheckInterval <= 0 {
		cfg.HealthCheckInterval = 2 * time.Second
	}
	if cfg.DrainTimeout <= 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, fmt.Errorf("dnsguard: metrics: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, metrics: m, ready: make(chan struct{})}
	if s.fwd, err = newForwarder(cfg.Upstreams, cfg.Timeout, m, s); err != nil {
		return nil, err
	}
	s.clusterFw = s.fwd
	if len(cfg.ClusterDNS) > 0 {
		if s.clusterFw, err = newForwarder(cfg.ClusterDNS, cfg.Timeout, m, s); err != nil {
			return nil, err
		}
	}
	for _, f := range []*forwarder{s.fwd, s.clusterFw} {
		for _, u := range f.ups {
			u.healthyGauge.Set(1)
		}
	}
	s.cache = newCache(cfg.CacheSize, cfg.MinTTL, cfg.MaxTTL, cfg.NegativeTTL, cfg.ServeStale)
	if cfg.QueryLog != nil {
		s.qlog = newQueryLog(cfg.QueryLog, cfg.QueryLogBuffer, func(n int) { m.logDropped.Add(float64(n)) })
	}
	if cfg.Dnstap != "" {
		network, address, err := ParseDnstapAddress(cfg.Dnstap)
		if err != nil {
			return nil, err
		}
		if cfg.DnstapIdentity == "" {
			cfg.DnstapIdentity = cfg.Node
		}
		enc := &tapEncoder{identity: []byte(cfg.DnstapIdentity), version: []byte("kordon")}
		sink := &tapSink{network: network, address: address, timeout: 2 * time.Second, retry: time.Second, log: cfg.Logger, m: m}
		s.tap = newChunkLog(sink, enc.appendEvent, cfg.QueryLogBuffer, func(n int) { m.tapDropped.Add(float64(n)) })
	}
	s.limiter = newRateLimiter(cfg.RateLimit, cfg.RateBurst)
	s.ids = newIDCache(cfg.TrustDomain)
	if cfg.Blocklist != nil {
		s.blocklist.Store(cfg.Blocklist)
	}
	if s.doh = cfg.DoHList; s.doh == nil {
		s.doh = DefaultDoHList()
	}
	if err := s.SetPolicies(nil); err != nil {
		return nil, err
	}
	return s, nil
}

// SetPolicies swaps the EgressPolicies in force (nil: none). In-flight
// queries finish with the old set; the swap is atomic.
func (s *Server) SetPolicies(set *policy.Set) error {
	ix, err := policy.CompileEgress(set, policy.EgressOptions{RootNamespace: s.cfg.RootNamespace, ClusterDomain: s.cfg.ClusterDomain})
	if err != nil {
		return err
	}
	s.egress.Store(s.newEgressState(ix))
	return nil
}

func (s *Server) newEgressState(ix *policy.EgressIndex) *egressState {
	return &egressState{ix: ix, regVer: s.cfg.Registry.Version(), unknownWL: ix.ForWorkload("", nil)}
}

// SetBlocklist swaps the mesh-wide deny list (nil: none).
func (s *Server) SetBlocklist(b *Blocklist) { s.blocklist.Store(b) }

// egressFor returns the policy in force for a workload (nil: unknown).
func (s *Server) egressFor(w *workload.Workload) (*egressState, *policy.WorkloadEgress) {
	st := s.egress.Load()
	if v := s.cfg.Registry.Version(); v != st.regVer {
		// Workloads changed (labels may select other policies): start a
		// fresh per-workload cache. Racing swaps are harmless: each state
		// is internally consistent.
		fresh := s.newEgressState(st.ix)
		if s.egress.CompareAndSwap(st, fresh) {
			st = fresh
		} else {
			st = s.egress.Load()
		}
	}
	if w == nil {
		return st, st.unknownWL
	}
	if we, ok := st.byWL.Load(w); ok {
		return st, we.(*policy.WorkloadEgress)
	}
	we := st.ix.ForWorkload(w.Namespace, w.Labels)
	st.byWL.Store(w, we)
	return st, we
}

// ServeDNS answers one query. It never panics on malformed input: the
// miekg/dns server already answers unparseable packets with FORMERR, and
// here questions are checked before use.
func (s *Server) ServeDNS(w dns.ResponseWriter, r *dns.Msg) { s.serveDNS(w, r, nil) }

// serveDNS is ServeDNS; ho, if set, is a query the fast path already
// decided (and so rate limited), with what it learned of the upstreams.
func (s *Server) serveDNS(w dns.ResponseWriter, r *dns.Msg, ho *handover) {
	start := s.cfg.Now()
	ev := QueryEvent{Time: start}
	ev.Client.IP = addrOf(w.RemoteAddr())
	if ho != nil {
		// Timed from when the fast path read it; attributed as decided.
		ev.Time, ev.Client, ev.Detection = ho.ev.Time, ho.ev.Client, ho.ev.Detection
		start = ev.Time
	}
	resp := s.handle(r, &ev, ho)
	if resp == nil {
		return // dropped
	}
	udpSize := 0
	if isUDP(w) {
		udpSize = dns.MinMsgSize
		if opt := r.IsEdns0(); opt != nil {
			udpSize = int(max(opt.UDPSize(), dns.MinMsgSize))
		}
		udpSize = min(udpSize, 1232) // DNS flag day 2020
	}
	if udpSize > 0 {
		resp.Truncate(udpSize)
	}
	for _, rr := range resp.Answer {
		switch a := rr.(type) {
		case *dns.A:
			if ip, ok := netip.AddrFromSlice(a.A.To4()); ok {
				ev.Answers = append(ev.Answers, ip)
			}
		case *dns.AAAA:
			if ip, ok := netip.AddrFromSlice(a.AAAA); ok {
				ev.Answers = append(ev.Answers, ip)
			}
		}
	}
	if s.cfg.Firewall != nil {
		// The answer's addresses must be reachable before it is written.
		ev.ttl = minAddrTTL(resp.Answer)
		if g, ok := grantOf(&ev, policy.CanonicalName(ev.QName)); ok && !s.admit([]Grant{g}) {
			resp = s.firewallFailed(r)
			failAnswer(&ev)
		}
	}
	if err := s.writeMsg(w, r, resp, &ev); err != nil {
		s.log.Debug("write failed", "client_ip", ev.Client.IP, "error", err)
	}
	ev.RCode = dns.RcodeToString[resp.Rcode]
	ev.Latency = s.cfg.Now().Sub(start).Seconds()
	s.observe(&ev)
}

// writeMsg writes the full path's reply; with dnstap on, it packs it
// itself to keep the wire bytes for the tap (with the query's).
func (s *Server) writeMsg(w dns.ResponseWriter, r, resp *dns.Msg, ev *QueryEvent) error {
	if s.tap == nil {
		return w.WriteMsg(resp)
	}
	b, err := resp.Pack()
	if err != nil {
		return err
	}
	if uw, ok := w.(*udpWriter); ok && uw.pkt != nil {
		ev.tap.query = uw.pkt
	} else if ev.tap.query, err = r.Pack(); err != nil {
		ev.tap.query = nil
	}
	ev.tap.reply = b
	ev.tap.peer = addrPortOf(w.RemoteAddr())
	ev.tap.tcp = !isUDP(w)
	_, err = w.Write(b)
	return err
}

// observe records a completed query: metrics, the detector, the query log.
func (s *Server) observe(ev *QueryEvent) {
	s.metrics.countQuery(ev.Verdict, ev.RCode)
	s.metrics.duration.Observe(ev.Latency)
	if s.tap != nil {
		s.tap.log(ev)
	}
	if ev.QName == "" {
		return
	}
	if s.cfg.Inspector != nil {
		s.cfg.Inspector.Observe(ev)
	}
	if s.qlog != nil {
		s.qlog.log(ev)
	}
}

// countFast counts a batch of fast-path answers (cache hits, and fast
// misses: the events not Cached) before their replies are sent.
func (s *Server) countFast(evs []QueryEvent) {
	hits := 0
	for i := range evs {
		if evs[i].Cached {
			hits++
		}
	}
	if hits > 0 {
		s.metrics.cacheHits.Add(float64(hits))
		s.metrics.fastAnswers.Add(float64(hits))
	}
	if misses := len(evs) - hits; misses > 0 {
		s.metrics.cacheMisses.Add(float64(misses))
		s.metrics.fastMisses.Add(float64(misses))
	}
}

// observeAll records queries answered on the fast path (cache hits and
// fast misses) once their replies were sent at now (all have a QName).
//
// Counters are added once per batch (per run of equal labels), not per
// query: they are shared by every reader.
func (s *Server) observeAll(evs []QueryEvent, now time.Time) {
	var (
		run    int
		runKey queryKey
	)
	for i := range evs {
		ev := &evs[i]
		ev.Latency = now.Sub(ev.Time).Seconds()
		if k := (queryKey{ev.Verdict, ev.RCode}); run == 0 || k == runKey {
			runKey = k
			run++
		} else {
			s.metrics.countQueries(runKey, run)
			runKey, run = k, 1
		}
		s.metrics.duration.Observe(ev.Latency)
		if s.cfg.Inspector != nil {
			s.cfg.Inspector.Observe(ev)
		}
	}
	if run > 0 {
		s.metrics.countQueries(runKey, run)
	}

	if s.qlog != nil {
		s.qlog.logAll(evs)
	}
	if s.tap != nil {
		s.tap.logAll(evs)
	}
}

// handle decides (unless ho brings the fast path's decision) and builds
// the response (nil: drop).
func (s *Server) handle(r *dns.Msg, ev *QueryEvent, ho *handover) *dns.Msg {
	ev.Verdict = VerdictAllowed
	if r.Response {
		return nil // never answer answers (reflection loops)
	}
	if r.Opcode != dns.OpcodeQuery {
		return s.reply(r, dns.RcodeNotImplemented)
	}
	if len(r.Question) != 1 {
		return s.reply(r, dns.RcodeFormatError)
	}
	q := r.Question[0]
	ev.QName = q.Name
	ev.QTypeCode = q.Qtype
	ev.QType = dns.TypeToString[q.Qtype]
	if ev.QType == "" {
		ev.QType = fmt.Sprintf("TYPE%d", q.Qtype)
	}
	if opt := r.IsEdns0(); opt != nil && opt.Version() != 0 {
		m := s.reply(r, dns.RcodeBadVers)
		return m
	}
	name := policy.CanonicalName(q.Name)
	var (
		d     decision
		tried *missHint
	)
	if ho != nil {
		d, tried = ho.d, &ho.tried
		ev.Verdict, ev.Policy = d.verdict, d.policy
	} else {
		d = s.decide(ev.Client.IP, name, ev.Time, ev)
	}
	if !d.resolve {
		return s.refuse(r, &d)
	}
	if q.Qtype == dns.TypeANY {
		// RFC 8482: answer ANY minimally rather than amplify.
		m := s.reply(r, dns.RcodeSuccess)
		m.Answer = []dns.RR{&dns.HINFO{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeHINFO, Class: dns.ClassINET, Ttl: 3600}, Cpu: "RFC8482"}}
		return m
	}
	return s.resolve(r, q, name, d.inCluster, ev, tried)
}

// refuse builds the answer to a query decide refused.
func (s *Server) refuse(r *dns.Msg, d *decision) *dns.Msg {
	m := s.reply(r, d.rcode)
	if d.withEDE {
		// The EDE is added even if the client sent no OPT record, so tools
		// always see why.
		addEDE(m, d.ede, d.edeText)
	}
	return m
}

// resolve answers from the cache or upstream, serving stale on failure.
func (s *Server) resolve(r *dns.Msg, q dns.Question, name string, inCluster bool, ev *QueryEvent, tried *missHint) *dns.Msg {
	do := false
	if opt := r.IsEdns0(); opt != nil {
		do = opt.Do()
	}
	key := cacheKey{name: name, qtype: q.Qtype, qclass: q.Qclass, do: do}
	if m, ok := s.cache.get(key, ev.Time, false); ok {
		s.metrics.cacheHits.Inc()
		ev.Cached = true
		return s.finish(r, m)
	}
	s.metrics.cacheMisses.Inc()
	up := new(dns.Msg)
	up.Question = []dns.Question{q}
	up.RecursionDesired = r.RecursionDesired
	up.CheckingDisabled = r.CheckingDisabled
	up.SetEdns0(1232, do)
	fwd := s.fwd
	if inCluster {
		fwd = s.clusterFw
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.Timeout*time.Duration(len(fwd.ups)+1))
	defer cancel()
	m, from, err := fwd.forward(ctx, up, tried)
	if err != nil || m.Rcode == dns.RcodeServerFailure {
		// RFC 8767: an unreachable upstream, or one that could not resolve
		// the name either (SERVFAIL), is answered from the stale cache.
		if stale, ok := s.cache.get(key, ev.Time, true); ok {
			s.metrics.cacheStale.Inc()
			ev.Cached = true
			resp := s.finish(r, stale)
			resp.SetEdns0(1232, do)
			addEDE(resp, dns.ExtendedErrorCodeStaleAnswer, "upstream unavailable: serving stale data")
			return resp
		}
		if err != nil {
			s.log.Debug("upstream failed", "qname", q.Name, "error", err)
			resp := s.reply(r, dns.RcodeServerFailure)
			addEDE(resp, dns.ExtendedErrorCodeNetworkError, "upstream unavailable")
			return resp
		}
	}
	ev.Upstream = from
	s.cache.put(key, m, ev.Time)
	return s.finish(r, m)
}

// finish turns an upstream or cached answer into the reply to r: the
// client's ID and question (with its 0x20 case), and an OPT record if the
// client sent one.
func (s *Server) finish(r *dns.Msg, m *dns.Msg) *dns.Msg {
	m.Id = r.Id
	m.Response = true
	m.Question = r.Question
	m.RecursionAvailable = true
	m.RecursionDesired = r.RecursionDesired
	m.Authoritative = false
	// m's records and section slices may be shared with the cache: a
	// record is copied before it is renamed, and Extra is a new slice.
	qname := r.Question[0].Name
	renamed := false
	for i, rr := range m.Answer {
		if h := rr.Header(); h.Name != qname && strings.EqualFold(h.Name, qname) {
			if !renamed {
				m.Answer = append([]dns.RR(nil), m.Answer...)
				renamed = true
			}
			rr = dns.Copy(rr)
			rr.Header().Name = qname
			m.Answer[i] = rr
		}
	}
	// Strip the upstream's OPT; add ours if the client speaks EDNS.
	extra := make([]dns.RR, 0, len(m.Extra)+1)
	for _, rr := range m.Extra {
		if rr.Header().Rrtype != dns.TypeOPT {
			extra = append(extra, rr)
		}
	}
	m.Extra = extra
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(1232, opt.Do())
	}
	return m
}

func (s *Server) reply(r *dns.Msg, rcode int) *dns.Msg {
	m := new(dns.Msg)
	m.SetRcode(r, rcode)
	m.RecursionAvailable = true
	if opt := r.IsEdns0(); opt != nil {
		m.SetEdns0(1232, opt.Do())
		if rcode == dns.RcodeBadVers {
			m.Rcode = dns.RcodeBadVers
		}
	}
	return m
}

func addEDE(m *dns.Msg, code uint16, text string) {
	opt := m.IsEdns0()
	if opt == nil {
		m.SetEdns0(1232, false)
		opt = m.IsEdns0()
	}
	opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: code, ExtraText: text})
}

func addrOf(a net.Addr) netip.Addr {
	switch v := a.(type) {
	case *net.UDPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	case *net.TCPAddr:
		ip, _ := netip.AddrFromSlice(v.IP)
		return ip.Unmap()
	}
	if a == nil {
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func addrPortOf(a net.Addr) netip.AddrPort {
	switch v := a.(type) {
	case *net.UDPAddr:
		return v.AddrPort()
	case *net.TCPAddr:
		return v.AddrPort()
	}
	return netip.AddrPort{}
}

func isUDP(w dns.ResponseWriter) bool {
	_, ok := w.RemoteAddr().(*net.UDPAddr)
	return ok
}

// Ready is closed once Serve answers on every socket it was given (a
// readiness probe: the resolver serves DNS).
func (s *Server) Ready() <-chan struct{} { return s.ready }

// Serve answers on an already-bound UDP socket and TCP listener (either
// may be nil) until ctx ends or Close is called.
//
// Then it hands over without losing queries to another resolver bound
// to the same address with SO_REUSEPORT (ListenUDPTCP; the next version
// during a rolling update): on Linux its UDP sockets stop taking new
// datagrams, which the kernel gives to the other process's sockets, the
// datagrams already queued are answered (for up to DrainTimeout), and
// the sockets are closed only once every query read has been answered.
// Start the new process and wait for it to be ready before ending the
// old one's ctx: a resolver alone has nobody to hand over to.
func (s *Server) Serve(ctx context.Context, udp net.PacketConn, tcp net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.New("dnsguard: server closed")
	}
	ctx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	var tcpSrv *dns.Server
	if tcp != nil {
		tcpSrv = &dns.Server{Listener: tcp, Handler: s, ReadTimeout: 5 * time.Second, WriteTimeout: 5 * time.Second, IdleTimeout: func() time.Duration { return 10 * time.Second }}
		s.servers = append(s.servers, tcpSrv)
	}
	s.serving.Add(1)
	s.mu.Unlock()
	defer s.serving.Done()
	go s.fwd.healthCheck(ctx, s.cfg.HealthCheckInterval)
	if s.clusterFw != s.fwd {
		go s.clusterFw.healthCheck(ctx, s.cfg.HealthCheckInterval)
	}
	// The sweeper times out fast-path misses; it outlives ctx until every
	// in-flight query is answered.
	sweepStop := make(chan struct{})
	sweepDone := make(chan struct{})
	go func() { defer close(sweepDone); s.sweepMisses(sweepStop) }()
	defer func() { close(sweepStop); <-sweepDone }()
	errc := make(chan error, 2) // TCP's and UDP's
	tcpDone := make(chan struct{})
	if tcpSrv != nil {
		go func() {
			defer close(tcpDone)
			// Once ctx ends the listener is closed on purpose.
			if err := tcpSrv.ActivateAndServe(); ctx.Err() == nil {
				errc <- err
			}
		}()
	} else {
		close(tcpDone)
	}
	udpDone := make(chan struct{})
	markReady := func() { s.readyOnce.Do(func() { close(s.ready) }) }
	if udp != nil {
		go func() { defer close(udpDone); errc <- s.serveUDP(ctx, udp, markReady) }()
	} else {
		close(udpDone)
		markReady()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-errc:
		cancel()
	}
	<-udpDone
	if tcpSrv != nil {
		// Stop accepting (a listener beside this one, of the same
		// SO_REUSEPORT group, gets new connections) and answer on the
		// connections already accepted until their clients close them;
		// after DrainTimeout the idle ones left are cut. Shutting down at
		// once would reset connections whose query is not read yet.
		_ = tcp.Close()
		t := time.NewTimer(s.cfg.DrainTimeout)
		select {
		case <-tcpDone:
		case <-t.C:
		}
		t.Stop()
		_ = tcpSrv.Shutdown()
	}
	<-tcpDone
	s.inflight.Wait()
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return err
}

// sweepMisses hands fast-path misses whose upstream did not answer in
// time to the full path, until stop is closed.
func (s *Server) sweepMisses(stop <-chan struct{}) {
	every := min(max(s.cfg.Timeout/8, 5*time.Millisecond), 100*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			s.fwd.expire(now)
			if s.clusterFw != s.fwd {
				s.clusterFw.expire(now)
			}
		}
	}
}

// ListenUDPTCP binds addr for UDP and TCP, for Serve. On Linux the UDP
// socket has SO_REUSEPORT, so Serve adds one sibling socket per CPU on the
// same address and the kernel spreads clients over them (as CoreDNS and
// unbound do); the TCP listener has it too (unless the port is 0), so a
// second resolver process can bind the same address and take over (see
// Serve). With port 0 both get the same free port: the port UDP got
// may be taken for TCP (another socket's ephemeral port), then another
// is tried.
func ListenUDPTCP(addr string) (net.PacketConn, net.Listener, error) {
	_, port, _ := net.SplitHostPort(addr)
	for try := 0; ; try++ {
		pc, err := reusePortConfig.ListenPacket(context.Background(), "udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("dnsguard: %w", err)
		}
		// Bind TCP on the port UDP got (addr may have port 0), also with
		// SO_REUSEPORT so a second process can bind beside this one; not
		// with port 0, where that could join another program's listener
		// on the port UDP happened to get.
		lc := reusePortConfig
		if port == "0" {
			lc = net.ListenConfig{}
		}
		ln, err := lc.Listen(context.Background(), "tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		if port != "0" || !errors.Is(err, syscall.EADDRINUSE) || try == 15 {
			return nil, nil, fmt.Errorf("dnsguard: %w", err)
		}
	}
}

// Close stops serving, flushes the query log and releases upstream sockets.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.cancel != nil {
		s.cancel()
	}
	for _, srv := range s.servers {
		_ = srv.Shutdown()
	}
	s.mu.Unlock()
	// Wait for Serve to finish its in-flight queries before the query
	// log they write to is closed.
	s.serving.Wait()
	s.fwd.close()
	if s.clusterFw != s.fwd {
		s.clusterFw.close()
	}
	if s.qlog != nil {
		s.qlog.close()
	}
	if s.tap != nil {
		s.tap.close()
	}
	return nil
}
