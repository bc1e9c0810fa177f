package dnsguard

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
)

// fakeUpstream is a real DNS server on 127.0.0.1:0 whose behaviour tests
// control: it answers A queries with 192.0.2.1 (TTL 60), NXDOMAIN for
// names under nx., and big TXT answers for names under big.
type fakeUpstream struct {
	addr    string
	queries atomic.Int64
	down    atomic.Bool
	mu      sync.Mutex
	seen    []string
	udp     *dns.Server
	tcp     *dns.Server
}

func startUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{}
	pc, ln, err := ListenUDPTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(u.serve)
	u.udp = &dns.Server{PacketConn: pc, Handler: h}
	u.tcp = &dns.Server{Listener: ln, Handler: h}
	go u.udp.ActivateAndServe()
	go u.tcp.ActivateAndServe()
	t.Cleanup(func() { u.udp.Shutdown(); u.tcp.Shutdown() })
	return u
}

func (u *fakeUpstream) serve(w dns.ResponseWriter, r *dns.Msg) {
	if u.down.Load() {
		return // silently drop: the client times out
	}
	u.queries.Add(1)
	q := r.Question[0]
	u.mu.Lock()
	u.seen = append(u.seen, q.Name)
	u.mu.Unlock()
	m := new(dns.Msg)
	m.SetReply(r)
	name := strings.ToLower(q.Name)
	switch {
	case strings.HasSuffix(name, "nx.example."):
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60}, Ns: "ns.example.", Mbox: "h.example.", Serial: 1, Refresh: 1, Retry: 1, Expire: 1, Minttl: 30}}
	case strings.HasPrefix(name, "big."):
		for i := 0; i < 40; i++ {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{strings.Repeat(fmt.Sprint(i%10), 100)}})
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			m.Truncate(512)
		}
	case strings.HasPrefix(name, "cname.") && q.Qtype == dns.TypeA:
		// A CNAME chain, compressed (as most servers send it).
		target := "target." + strings.TrimPrefix(name, "cname.")
		m.Compress = true
		m.Answer = []dns.RR{
			&dns.CNAME{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeCNAME, Class: dns.ClassINET, Ttl: 300}, Target: target},
			&dns.A{Hdr: dns.RR_Header{Name: target, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 40}, A: net.ParseIP("192.0.2.7")},
		}
		m.SetEdns0(4096, false) // an OPT record to strip
	case q.Qtype == dns.TypeA:
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.1")}}
	}
	_ = w.WriteMsg(m)
}

// testClock is a settable clock.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// syncBuffer is a goroutine-safe query log sink.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

const testPolicies = `
apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: frontend-egress, namespace: shop}
spec:
  selector: {matchLabels: {app: frontend}}
  allow: ["*.cdn.example", api.example, big.example, nx.example, "*.nx.example"]
  deny: [bad.cdn.example]
---
apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: checkout-egress, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
  mode: Audit
  allow: [api.example]
---
{apiVersion: security.kordon.dev/v1, kind: EgressPolicy, metadata: {name: batch-egress, namespace: shop},
 spec: {selector: {matchLabels: {app: batch}}, allowCIDRs: [203.0.113.0/24]}}
`

type harness struct {
	srv   *Server
	addr  string
	up    *fakeUpstream
	log   *syncBuffer
	clock *testClock
}

func newHarness(t *testing.T, mutate func(*Config)) *harness {
	t.Helper()
	h, start := newPausedHarness(t, mutate)
	start()
	return h
}

// newPausedHarness is newHarness with its socket bound but not yet
// served: queries sent before start wait in the socket.
func newPausedHarness(t *testing.T, mutate func(*Config)) (*harness, func()) {
	t.Helper()
	up := startUpstream(t)
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{
		{Name: "frontend", Namespace: "shop", ServiceAccount: "frontend", Labels: map[string]string{"app": "frontend"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.10")}},
		{Name: "checkout", Namespace: "shop", ServiceAccount: "checkout", Labels: map[string]string{"app": "checkout"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.11")}},
		// batch's policy has allowCIDRs only: it resolves every name, and
		// its egress firewall mode is Enforce.
		{Name: "batch", Namespace: "shop", ServiceAccount: "batch", Labels: map[string]string{"app": "batch"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.12")}},
	})
	set, err := policy.Parse("p.yaml", []byte(testPolicies), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{up: up, log: &syncBuffer{}, clock: &testClock{now: time.Unix(1_700_000_000, 0)}}
	cfg := Config{Registry: reg, Upstreams: []string{up.addr}, QueryLog: h.log, Timeout: 500 * time.Millisecond, Now: h.clock.Now, Node: "node-1"}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetPolicies(set); err != nil {
		t.Fatal(err)
	}
	pc, ln, err := ListenUDPTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.srv, h.addr = srv, pc.LocalAddr().String()
	start := func() {
		done := make(chan struct{})
		go func() { defer close(done); _ = srv.Serve(context.Background(), pc, ln) }()
		t.Cleanup(func() { srv.Close(); <-done })
	}
	t.Cleanup(func() { pc.Close(); ln.Close() }) // if never started
	return h, start
}

// query sends one query from a source IP on 127.0.0.0/8.
func (h *harness) query(t *testing.T, from, name string, qtype uint16, netw string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	m.SetEdns0(1232, false)
	return h.exchange(t, from, m, netw)
}

func (h *harness) exchange(t *testing.T, from string, m *dns.Msg, netw string) *dns.Msg {
	t.Helper()
	var local net.Addr
	if netw == "tcp" {
		local = &net.TCPAddr{IP: net.ParseIP(from)}
	} else {
		local = &net.UDPAddr{IP: net.ParseIP(from)}
	}
	c := &dns.Client{Net: netw, Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: local, Timeout: 3 * time.Second}}
	r, _, err := c.Exchange(m, h.addr)
	if err != nil {
		t.Fatalf("query %s from %s: %v", m.Question[0].Name, from, err)
	}
	return r
}

func ede(m *dns.Msg) *dns.EDNS0_EDE {
	if opt := m.IsEdns0(); opt != nil {
		for _, o := range opt.Option {
			if e, ok := o.(*dns.EDNS0_EDE); ok {
				return e
			}
		}
	}
	return nil
}

// logEvents waits until the query log has n records and returns them.
func (h *harness) logEvents(t *testing.T, n int) []QueryEvent {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var evs []QueryEvent
		for _, line := range strings.Split(strings.TrimSpace(h.log.String()), "\n") {
			if line == "" {
				continue
			}
			var ev QueryEvent
			if err := json.Unmarshal([]byte(line), &ev); err != nil {
				t.Fatalf("bad log line %q: %v", line, err)
			}
			evs = append(evs, ev)
		}
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("query log has %d records, want %d:\n%s", len(evs), n, h.log.String())
		}
		time.Sleep(10 * time.Millisecond) // polling the async writer, bounded by the deadline
	}
}

func TestAllowedForwardedAndCached(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	for i := 0; i < 3; i++ {
		r := h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, "udp")
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("answer %v", r)
		}
	}
	if got := h.up.queries.Load(); got != 1 {
		t.Fatalf("upstream saw %d queries, want 1 (cache)", got)
	}
	evs := h.logEvents(t, 3)
	// Records are written after the answers: find the forwarded one.
	var ev QueryEvent
	cached := 0
	for _, e := range evs {
		if e.Cached {
			cached++
		} else {
			ev = e
		}
	}
	if ev.Client.Namespace != "shop" || ev.Client.Pod != "frontend" || ev.Client.SPIFFEID != "spiffe://cluster.local/ns/shop/sa/frontend" || ev.Verdict != VerdictAllowed || ev.Policy != "shop/frontend-egress" || ev.Upstream != h.up.addr || len(ev.Answers) != 1 || ev.Answers[0].String() != "192.0.2.1" || ev.QType != "A" || ev.RCode != "NOERROR" {
		t.Errorf("first event %+v", ev)
	}
	if cached != 2 {
		t.Errorf("want 2 cache hits and 1 forwarded query, got %+v", evs)
	}
}

func TestBlockedWithEDE(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	cases := []struct {
		name, from, qname string
		code              uint16
		text              string
	}{
		{"not in allow list", "127.0.0.10", "google.com.", dns.ExtendedErrorCodeProhibited, "not allowed by EgressPolicy shop/frontend-egress"},
		{"deny wins over allow", "127.0.0.10", "bad.cdn.example.", dns.ExtendedErrorCodeBlocked, "denied by EgressPolicy shop/frontend-egress (bad.cdn.example)"},
		{"apex not matched by wildcard", "127.0.0.10", "cdn.example.", dns.ExtendedErrorCodeProhibited, "not allowed by EgressPolicy shop/frontend-egress"},
	}
	for _, tc := range cases {
		r := h.query(t, tc.from, tc.qname, dns.TypeA, "udp")
		e := ede(r)
		if r.Rcode != dns.RcodeNameError || e == nil || e.InfoCode != tc.code || e.ExtraText != tc.text {
			t.Errorf("%s: rcode %s ede %+v", tc.name, dns.RcodeToString[r.Rcode], e)
		}
	}
	if got := h.up.queries.Load(); got != 0 {
		t.Errorf("blocked names reached the upstream %d times", got)
	}
	// In-cluster names are always allowed for a workload with an allow list.
	if r := h.query(t, "127.0.0.10", "payments.shop.svc.cluster.local.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Errorf("in-cluster name: %s", dns.RcodeToString[r.Rcode])
	}
}

func TestBlockRefused(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.BlockRcode = dns.RcodeRefused })
	r := h.query(t, "127.0.0.10", "google.com.", dns.TypeA, "udp")
	if r.Rcode != dns.RcodeRefused || ede(r) == nil {
		t.Fatalf("got %s ede %v", dns.RcodeToString[r.Rcode], ede(r))
	}
}

func TestAuditAnswersAndLogs(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	r := h.query(t, "127.0.0.11", "google.com.", dns.TypeA, "udp")
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("audit mode must answer normally: %v", r)
	}
	ev := h.logEvents(t, 1)[0]
	if ev.Verdict != VerdictAudit || ev.Policy != "shop/checkout-egress" {
		t.Fatalf("event %+v", ev)
	}
}

func TestUnknownClients(t *testing.T) {
	t.Parallel()
	allow := newHarness(t, nil)
	if r := allow.query(t, "127.0.0.99", "google.com.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Errorf("allow: %s", dns.RcodeToString[r.Rcode])
	}
	deny := newHarness(t, func(c *Config) { c.UnknownClients = UnknownDeny })
	if r := deny.query(t, "127.0.0.99", "google.com.", dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError || ede(r) == nil {
		t.Errorf("deny: %s", dns.RcodeToString[r.Rcode])
	}
	if r := deny.query(t, "127.0.0.99", "kube-dns.kube-system.svc.cluster.local.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Errorf("deny in-cluster: %s", dns.RcodeToString[r.Rcode])
	}
	refuse := newHarness(t, func(c *Config) { c.UnknownClients = UnknownRefuse })
	if r := refuse.query(t, "127.0.0.99", "google.com.", dns.TypeA, "udp"); r.Rcode != dns.RcodeRefused {
		t.Errorf("refuse: %s", dns.RcodeToString[r.Rcode])
	}
}

func TestCaseRandomization0x20(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	r := h.query(t, "127.0.0.10", "ImG.CdN.ExAmPlE.", dns.TypeA, "udp")
	if r.Question[0].Name != "ImG.CdN.ExAmPlE." || len(r.Answer) != 1 || r.Answer[0].Header().Name != "ImG.CdN.ExAmPlE." {
		t.Fatalf("case not preserved: %v", r)
	}
	// A differently-cased query hits the same cache entry and keeps its own case.
	r = h.query(t, "127.0.0.10", "img.cdn.EXAMPLE.", dns.TypeA, "udp")
	if r.Question[0].Name != "img.cdn.EXAMPLE." || r.Answer[0].Header().Name != "img.cdn.EXAMPLE." {
		t.Fatalf("case not preserved on cache hit: %v", r)
	}
	if h.up.queries.Load() != 1 {
		t.Fatalf("upstream saw %d queries", h.up.queries.Load())
	}
}

func TestNegativeCache(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	for i := 0; i < 2; i++ {
		if r := h.query(t, "127.0.0.10", "x.nx.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeNameError || ede(r) != nil {
			t.Fatalf("upstream NXDOMAIN: %v", r)
		}
	}
	if h.up.queries.Load() != 1 {
		t.Fatalf("negative answer not cached: %d upstream queries", h.up.queries.Load())
	}
	h.clock.Add(31 * time.Second) // SOA minimum is 30s
	h.query(t, "127.0.0.10", "x.nx.example.", dns.TypeA, "udp")
	if h.up.queries.Load() != 2 {
		t.Fatalf("negative entry outlived its TTL")
	}
}

func TestServeStale(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.Timeout = 100 * time.Millisecond })
	h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, "udp")
	h.clock.Add(2 * time.Minute) // TTL 60s expired
	h.up.down.Store(true)
	r := h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, "udp")
	e := ede(r)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 30 || e == nil || e.InfoCode != dns.ExtendedErrorCodeStaleAnswer {
		t.Fatalf("want stale answer with TTL 30 and EDE 3, got %v", r)
	}
	// Never seen before and upstream down: SERVFAIL.
	if r := h.query(t, "127.0.0.10", "new.cdn.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("got %s", dns.RcodeToString[r.Rcode])
	}
}

func TestFailover(t *testing.T) {
	t.Parallel()
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close() // nothing listens: ICMP port unreachable or timeout
	h := newHarness(t, func(c *Config) {
		c.Timeout = 200 * time.Millisecond
		c.Upstreams = append([]string{deadAddr}, c.Upstreams...)
	})
	for i := 0; i < 5; i++ {
		r := h.query(t, "127.0.0.10", fmt.Sprintf("n%d.cdn.example.", i), dns.TypeA, "udp")
		if r.Rcode != dns.RcodeSuccess {
			t.Fatalf("query %d: %s", i, dns.RcodeToString[r.Rcode])
		}
	}
	if !h.srv.fwd.ups[1].healthy() || h.srv.fwd.ups[0].healthy() {
		t.Fatalf("dead upstream should be marked unhealthy")
	}
}

func TestTruncationAndTCPFallback(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	// Upstream truncates over UDP; dnsguard retries over TCP and caches
	// the full answer; a UDP client with a small buffer gets TC and
	// retries over TCP, as real stubs do.
	m := new(dns.Msg)
	m.SetQuestion("big.example.", dns.TypeTXT)
	r := h.exchange(t, "127.0.0.10", m, "udp")
	if !r.Truncated {
		t.Fatalf("512-byte client should get TC, got %d answers", len(r.Answer))
	}
	r = h.query(t, "127.0.0.10", "big.example.", dns.TypeTXT, "tcp")
	if r.Truncated || len(r.Answer) != 40 {
		t.Fatalf("TCP answer: tc=%v answers=%d", r.Truncated, len(r.Answer))
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	h := newHarness(t, func(c *Config) { c.RateLimit = 1; c.RateBurst = 3 })
	var refused int
	for i := 0; i < 6; i++ {
		if r := h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, "udp"); r.Rcode == dns.RcodeRefused {
			refused++
		}
	}
	if refused != 3 {
		t.Fatalf("refused %d of 6 with burst 3 and a frozen clock, want 3", refused)
	}
	// Another client has its own bucket.
	if r := h.query(t, "127.0.0.11", "api.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("other client limited: %s", dns.RcodeToString[r.Rcode])
	}
}

func TestANYMinimal(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	r := h.query(t, "127.0.0.10", "api.example.", dns.TypeANY, "udp")
	if len(r.Answer) != 1 || r.Answer[0].Header().Rrtype != dns.TypeHINFO || h.up.queries.Load() != 0 {
		t.Fatalf("ANY: %v", r)
	}
}

func TestMalformedQueries(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	m := new(dns.Msg)
	m.SetQuestion("a.example.", dns.TypeA)
	m.Question = append(m.Question, m.Question[0])
	if r := h.exchange(t, "127.0.0.10", m, "udp"); r.Rcode != dns.RcodeFormatError {
		t.Errorf("two questions: %s", dns.RcodeToString[r.Rcode])
	}
	m = new(dns.Msg)
	m.SetQuestion("a.example.", dns.TypeA)
	m.Opcode = dns.OpcodeStatus
	if r := h.exchange(t, "127.0.0.10", m, "udp"); r.Rcode != dns.RcodeNotImplemented {
		t.Errorf("status opcode: %s", dns.RcodeToString[r.Rcode])
	}
	// Raw garbage gets FORMERR or nothing, and the server keeps serving.
	c, err := net.Dial("udp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte{0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0xff})
	c.Close()
	if r := h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("server unhealthy after garbage: %s", dns.RcodeToString[r.Rcode])
	}
}

func TestBlocklist(t *testing.T) {
	t.Parallel()
	bl, st, err := ParseBlocklist(strings.NewReader("# hosts\n0.0.0.0 ads.example.net\n127.0.0.1 localhost\n||tracker.example.org^\nmalware.example\n*.evil.example\n! adblock comment\n"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Exact != 1 || st.Subtree != 3 || st.Skipped != 1 {
		t.Fatalf("stats %+v", st)
	}
	h := newHarness(t, func(c *Config) { c.Blocklist = bl })
	for name, blocked := range map[string]bool{
		"ads.example.net.": true, "x.ads.example.net.": false, "tracker.example.org.": true, "a.b.tracker.example.org.": true,
		"malware.example.": true, "evil.example.": true, "x.evil.example.": true, "fine.example.": false,
	} {
		r := h.query(t, "127.0.0.99", name, dns.TypeA, "udp")
		if got := r.Rcode == dns.RcodeNameError && ede(r) != nil; got != blocked {
			t.Errorf("%s: blocked=%v want %v", name, got, blocked)
		}
	}
}

// recorder is a dns.ResponseWriter that keeps the reply, for unit tests
// and fuzzing without sockets.
type recorder struct {
	msg    *dns.Msg
	remote net.Addr
}

func (r *recorder) LocalAddr() net.Addr         { return &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 53} }
func (r *recorder) RemoteAddr() net.Addr        { return r.remote }
func (r *recorder) WriteMsg(m *dns.Msg) error   { r.msg = m; return nil }
func (r *recorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *recorder) Close() error                { return nil }
func (r *recorder) TsigStatus() error           { return nil }
func (r *recorder) TsigTimersOnly(bool)         {}
func (r *recorder) Hijack()                     {}
func (r *recorder) Network() string             { return "udp" }

func FuzzServeDNS(f *testing.F) {
	for _, name := range []string{"a.example.", "ImG.cdn.example.", "big.example.", "x.nx.example.", "."} {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.SetEdns0(4096, true)
		b, _ := m.Pack()
		f.Add(b)
	}
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "w", Namespace: "ns", Labels: map[string]string{"app": "w"}, IPs: []netip.Addr{netip.MustParseAddr("127.0.0.10")}}})
	set, err := policy.Parse("p.yaml", []byte(testPolicies), policy.LoadOptions{})
	if err != nil {
		f.Fatal(err)
	}
	srv, err := New(Config{Registry: reg, Upstreams: []string{"127.0.0.1:1"}, Timeout: time.Millisecond, ServeStale: -1})
	if err != nil {
		f.Fatal(err)
	}
	if err := srv.SetPolicies(set); err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { srv.Close() })
	f.Fuzz(func(t *testing.T, data []byte) {
		m := new(dns.Msg)
		if err := m.Unpack(data); err != nil {
			return // the miekg/dns server answers these with FORMERR itself
		}
		w := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10), Port: 40000}}
		srv.ServeDNS(w, m)
		if w.msg != nil {
			if _, err := w.msg.Pack(); err != nil {
				t.Fatalf("unpackable reply: %v", err)
			}
			if w.msg.Id != m.Id {
				t.Fatalf("reply ID %d != query ID %d", w.msg.Id, m.Id)
			}
		}
	})
}
