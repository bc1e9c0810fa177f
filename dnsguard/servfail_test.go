package dnsguard

import (
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// rcodeUpstream is a real DNS server on 127.0.0.1:0 that answers A
// queries with 192.0.2.9 (TTL 60), or with a fixed error rcode while
// rcode is non-zero.
type rcodeUpstream struct {
	addr    string
	rcode   atomic.Int32
	queries atomic.Int64
}

func startRcodeUpstream(t *testing.T) *rcodeUpstream {
	t.Helper()
	u := &rcodeUpstream{}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.addr = pc.LocalAddr().String()
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		u.queries.Add(1)
		m := new(dns.Msg)
		m.SetReply(r)
		if rc := u.rcode.Load(); rc != 0 {
			m.Rcode = int(rc)
		} else {
			m.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.ParseIP("192.0.2.9")}}
		}
		_ = w.WriteMsg(m)
	})}
	go srv.ActivateAndServe()
	t.Cleanup(func() { srv.Shutdown() })
	return u
}

// TestServeStaleOnUpstreamServfail: an upstream that answers SERVFAIL
// for an expired name gets the stale answer served (RFC 8767), like an
// unreachable one; a name never cached gets the SERVFAIL.
func TestServeStaleOnUpstreamServfail(t *testing.T) {
	t.Parallel()
	up := startRcodeUpstream(t)
	h := newHarness(t, func(c *Config) { c.Upstreams = []string{up.addr} })
	if r := h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
		t.Fatalf("first answer: %v", r)
	}
	h.clock.Add(2 * time.Minute)
	up.rcode.Store(dns.RcodeServerFailure)
	r := h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, "udp")
	e := ede(r)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 || r.Answer[0].Header().Ttl != 30 || e == nil || e.InfoCode != dns.ExtendedErrorCodeStaleAnswer {
		t.Fatalf("want the stale answer (TTL 30, EDE 3) after upstream SERVFAIL, got %v", r)
	}
	if up.queries.Load() != 2 {
		t.Fatalf("upstream saw %d queries, want 2 (the refresh was attempted)", up.queries.Load())
	}
	if r := h.query(t, "127.0.0.10", "new.cdn.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("uncached name with upstream SERVFAIL: got %s", dns.RcodeToString[r.Rcode])
	}
}

// TestFailoverOnErrorRcode: an upstream answering SERVFAIL or REFUSED is
// passed over for the next one, without being marked unhealthy; when all
// fail that way, the first error answer is relayed.
func TestFailoverOnErrorRcode(t *testing.T) {
	t.Parallel()
	for _, rc := range []int{dns.RcodeServerFailure, dns.RcodeRefused} {
		bad, good := startRcodeUpstream(t), startRcodeUpstream(t)
		bad.rcode.Store(int32(rc))
		h := newHarness(t, func(c *Config) { c.Upstreams = []string{bad.addr, good.addr} })
		r := h.query(t, "127.0.0.10", "a.cdn.example.", dns.TypeA, "udp")
		if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("first upstream answers %s: want the second's answer, got %v", dns.RcodeToString[rc], r)
		}
		if bad.queries.Load() != 1 || good.queries.Load() != 1 {
			t.Fatalf("queries: bad %d good %d, want 1 and 1", bad.queries.Load(), good.queries.Load())
		}
		if !h.srv.fwd.ups[0].healthy() {
			t.Fatal("an upstream that answered was marked unhealthy")
		}
		good.rcode.Store(int32(dns.RcodeRefused))
		r = h.query(t, "127.0.0.10", "b.cdn.example.", dns.TypeA, "udp")
		if r.Rcode != rc {
			t.Fatalf("all upstreams fail: want the first's %s, got %s", dns.RcodeToString[rc], dns.RcodeToString[r.Rcode])
		}
	}
}
