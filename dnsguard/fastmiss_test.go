package dnsguard

import (
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// twin builds a second server with h's configuration and policies but
// its own empty cache, to answer the same queries on the full path.
func twin(t *testing.T, h *harness) *Server {
	t.Helper()
	cfg := h.srv.cfg
	cfg.QueryLog, cfg.Metrics, cfg.Inspector = nil, nil, nil
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Parse("p.yaml", []byte(testPolicies), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetPolicies(set); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// TestFastMissMatchesFullPath: a cache miss forwarded and answered from
// wire bytes gets the answer the full path gives (a twin server with an
// empty cache), and so do the cache hits that follow, on the fast path
// and on the full path reading the wire-only cache entry.
func TestFastMissMatchesFullPath(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	full := twin(t, h)
	cases := []struct {
		name      string
		qtype     uint16
		edns, do  bool
		rd, cd    bool
		wantRcode int
	}{
		{"Fm1.CDN.example.", dns.TypeA, true, false, true, false, dns.RcodeSuccess},  // literal owner name (no compression)
		{"fm2.cdn.example.", dns.TypeA, false, false, true, false, dns.RcodeSuccess}, // no EDNS
		{"FM3.cdn.EXAMPLE.", dns.TypeA, true, true, false, true, dns.RcodeSuccess},   // DO, CD, no RD
		{"x.Nx.example.", dns.TypeA, true, false, true, false, dns.RcodeNameError},   // NXDOMAIN + SOA
		{"fm4.cdn.example.", dns.TypeAAAA, true, false, true, false, dns.RcodeSuccess},
		{"cname.FM5.cdn.example.", dns.TypeA, true, false, true, false, dns.RcodeSuccess}, // compressed chain, upstream OPT
	}
	for _, tc := range cases {
		mk := func() *dns.Msg {
			m := new(dns.Msg)
			m.SetQuestion(tc.name, tc.qtype)
			m.RecursionDesired, m.CheckingDisabled = tc.rd, tc.cd
			if tc.edns {
				m.SetEdns0(1232, tc.do)
			}
			return m
		}
		before := testutil.ToFloat64(h.srv.metrics.fastMisses)
		fast := h.exchange(t, "127.0.0.10", mk(), "udp")
		if got := testutil.ToFloat64(h.srv.metrics.fastMisses); got != before+1 {
			t.Fatalf("%s: the miss was not answered on the fast path (%v -> %v)", tc.name, before, got)
		}
		if fast.Rcode != tc.wantRcode {
			t.Fatalf("%s: rcode %s, want %s", tc.name, dns.RcodeToString[fast.Rcode], dns.RcodeToString[tc.wantRcode])
		}
		slowQ := mk()
		slowQ.Id = fast.Id
		rec := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10), Port: 40000}}
		full.ServeDNS(rec, slowQ)
		if fast.String() != rec.msg.String() {
			t.Errorf("%s: fast miss and full path differ\nfast:\n%s\nfull:\n%s", tc.name, fast, rec.msg)
		}
		hit := h.exchange(t, "127.0.0.10", mk(), "udp")
		hit.Id = fast.Id
		if hit.String() != fast.String() {
			t.Errorf("%s: cache hit after a fast miss differs\nhit:\n%s\nmiss:\n%s", tc.name, hit, fast)
		}
		rec2 := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10), Port: 40000}}
		h.srv.ServeDNS(rec2, slowQ) // the full path reading the wire-only entry
		if rec2.msg.String() != fast.String() {
			t.Errorf("%s: full-path cache hit differs\nfull:\n%s\nmiss:\n%s", tc.name, rec2.msg, fast)
		}
	}
	// One query per name from each server: no retries, and the hits
	// (fast and full path) came from the cache.
	if n := h.up.queries.Load(); n != int64(2*len(cases)) {
		t.Errorf("upstream saw %d queries, want %d", n, 2*len(cases))
	}
	// The fast miss is logged like any forwarded query.
	var found bool
	for _, ev := range h.logEvents(t, 3*len(cases)) {
		if ev.QName == "Fm1.CDN.example." && !ev.Cached {
			found = true
			if ev.Upstream != h.up.addr || ev.RCode != "NOERROR" || len(ev.Answers) != 1 || ev.Client.Pod != "frontend" || ev.Policy != "shop/frontend-egress" {
				t.Errorf("fast miss event: %+v", ev)
			}
		}
	}
	if !found {
		t.Error("no query log record for the fast miss")
	}
}

// TestWireFromUpstreamRefuses: layouts the wire cache does not rewrite in
// place go to the full path.
func TestWireFromUpstreamRefuses(t *testing.T) {
	c := newCache(10, 0, 3600e9, 300e9, 0)
	base := func() *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion("a.example.", dns.TypeA)
		m.Response = true
		m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "a.example.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
		return m
	}
	pack := func(m *dns.Msg) []byte {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	qEnd := 12 + len("\x01a\x07example\x00") + 4
	ok := pack(base())
	if _, ttl, good := c.wireFromUpstream(ok, qEnd); !good || ttl != 60e9 {
		t.Fatalf("plain answer refused (ttl %v)", ttl)
	}
	optFirst := base()
	optFirst.SetEdns0(1232, false)
	optFirst.Extra = append(optFirst.Extra, &dns.TXT{Hdr: dns.RR_Header{Name: "x.example.", Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 5}, Txt: []string{"x"}})
	for name, b := range map[string][]byte{
		"opt not last": pack(optFirst),
		"cut short":    ok[:len(ok)-2],
		"trailing":     append(append([]byte(nil), ok...), 0),
	} {
		if _, _, good := c.wireFromUpstream(b, qEnd); good {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestFastMissTimeoutAsksEachUpstreamOnce: a fast miss whose upstream
// stays silent is handed to the full path, which goes on to the next
// upstream without asking the silent one again.
func TestFastMissTimeoutAsksEachUpstreamOnce(t *testing.T) {
	t.Parallel()
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	got := make(chan int, 1)
	go func() {
		n, buf := 0, make([]byte, 512)
		for {
			if _, _, err := silent.ReadFrom(buf); err != nil {
				got <- n
				return
			}
			n++
		}
	}()
	h := newHarness(t, func(c *Config) {
		c.Timeout = 200 * time.Millisecond
		c.Upstreams = append([]string{silent.LocalAddr().String()}, c.Upstreams...)
	})
	r := h.query(t, "127.0.0.10", "slow.cdn.example.", dns.TypeA, "udp")
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("want an answer from the second upstream, got\n%s", r)
	}
	h.srv.Close()
	silent.Close()
	if n := <-got; n != 1 {
		t.Errorf("the silent upstream was asked %d times, want 1", n)
	}
	if n := h.up.queries.Load(); n != 1 {
		t.Errorf("the second upstream was asked %d times, want 1", n)
	}
}

// TestFastMissRefusedPortFailsOverAtOnce: an upstream port that answers
// with ICMP port unreachable fails its queries at once, not at the
// timeout (a minute here: the client gives up after 3 s).
func TestFastMissRefusedPortFailsOverAtOnce(t *testing.T) {
	t.Parallel()
	dead, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.LocalAddr().String()
	dead.Close()
	h := newHarness(t, func(c *Config) {
		c.Timeout = time.Minute
		c.Upstreams = append([]string{deadAddr}, c.Upstreams...)
	})
	r := h.query(t, "127.0.0.10", "refused.cdn.example.", dns.TypeA, "udp")
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("want an answer from the second upstream, got\n%s", r)
	}
	if n := testutil.ToFloat64(h.srv.metrics.upstreamRequests.WithLabelValues(deadAddr, "error")); n != 1 {
		t.Errorf("dead upstream errors = %v, want 1", n)
	}
}

// FuzzWireFromUpstream feeds arbitrary upstream answers (anyone who can
// spoof one can send these) to the wire cache: never a panic, and what it
// accepts must be a well-formed message that patches into a well-formed
// reply.
func FuzzWireFromUpstream(f *testing.F) {
	q := new(dns.Msg)
	q.SetQuestion("www.Example.com.", dns.TypeA)
	qb, _ := q.Pack()
	qEnd := len(qb)
	seed := func(m *dns.Msg) {
		b, err := m.Pack()
		if err == nil {
			f.Add(b[qEnd:], byte(m.Rcode))
		}
	}
	a := new(dns.Msg)
	a.SetReply(q)
	a.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "www.example.com.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 1)}}
	seed(a)
	a.Compress = true
	a.SetEdns0(1232, false)
	seed(a)
	nx := new(dns.Msg)
	nx.SetRcode(q, dns.RcodeNameError)
	nx.Ns = []dns.RR{&dns.SOA{Hdr: dns.RR_Header{Name: "example.com.", Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: 60}, Ns: "ns.example.com.", Mbox: "h.example.com.", Minttl: 30}}
	seed(nx)
	c := newCache(10, 0, time.Hour, 5*time.Minute, 0)
	var fq fastQuery
	if !parseFast(qb, &fq) {
		f.Fatal("query not fast")
	}
	f.Fuzz(func(t *testing.T, tail []byte, flags byte) {
		resp := append(append([]byte(nil), qb...), tail...)
		resp[2] = 0x80 | 0x01
		resp[3] = flags & 0x0F
		// The counts come from the tail's first bytes, so they vary too.
		if len(tail) >= 6 {
			copy(resp[6:12], tail[:6])
		}
		wa, _, ok := c.wireFromUpstream(resp, qEnd)
		if !ok {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(wa.wire); err != nil {
			t.Fatalf("accepted answer does not unpack: %v", err)
		}
		out := patchReply(nil, wa, 5, qb, &fq)
		if out == nil {
			return // too big for the client: the full path truncates
		}
		r := new(dns.Msg)
		if err := r.Unpack(out); err != nil {
			t.Fatalf("patched reply does not unpack: %v", err)
		}
		if r.Id != q.Id || len(r.Question) != 1 || r.Question[0].Name != "www.Example.com." {
			t.Fatalf("reply header or question wrong:\n%s", r)
		}
	})
}

// TestOversizedUpstreamAnswerRetriedOverTCP: an upstream that ignores our
// EDNS size and sends a UDP answer larger than the reader's buffer gets
// the query again over TCP (the cut datagram counts as truncated), on the
// fast path and on the full path.
func TestOversizedUpstreamAnswerRetriedOverTCP(t *testing.T) {
	t.Parallel()
	answer := func(r *dns.Msg) *dns.Msg {
		m := new(dns.Msg)
		m.SetReply(r)
		for i := 0; i < 30; i++ {
			m.Answer = append(m.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{strings.Repeat("x", 200)}})
		}
		return m
	}
	pc, ln, err := ListenUDPTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { // a UDP responder that never truncates
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			r := new(dns.Msg)
			if r.Unpack(buf[:n]) != nil {
				continue
			}
			b, _ := answer(r).Pack()
			_, _ = pc.WriteTo(b, from)
		}
	}()
	var tcpQueries atomic.Int64
	tcp := &dns.Server{Listener: ln, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		tcpQueries.Add(1)
		_ = w.WriteMsg(answer(r))
	})}
	go func() { _ = tcp.ActivateAndServe() }()
	t.Cleanup(func() { _ = tcp.Shutdown(); pc.Close() })

	h := newHarness(t, func(c *Config) { c.Upstreams = []string{pc.LocalAddr().String()} })
	m := new(dns.Msg)
	m.SetQuestion("huge.example.", dns.TypeTXT)
	m.SetEdns0(1232, false)
	r := h.exchange(t, "127.0.0.20", m, "udp") // an unknown client: everything allowed
	if !r.Truncated || r.Rcode != dns.RcodeSuccess {
		t.Fatalf("want a truncated NOERROR for the UDP client, got\n%s", r)
	}
	if n := tcpQueries.Load(); n != 1 {
		t.Fatalf("upstream saw %d TCP queries, want 1", n)
	}
	m2 := new(dns.Msg)
	m2.SetQuestion("huge2.example.", dns.TypeTXT)
	r = h.exchange(t, "127.0.0.20", m2, "tcp") // full path: UDP upstream, then TCP
	if len(r.Answer) != 30 {
		t.Fatalf("want 30 records over TCP, got %d", len(r.Answer))
	}
	if n := tcpQueries.Load(); n != 2 {
		t.Fatalf("upstream saw %d TCP queries, want 2", n)
	}
}
