package dnsguard

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// fakeFirewall records every Admit call. With err it fails them; with
// gate it holds each call until gate is closed, signalling entered first.
type fakeFirewall struct {
	err     error
	gate    chan struct{}
	entered chan struct{}

	mu    sync.Mutex
	calls [][]Grant
}

func (f *fakeFirewall) Admit(gs []Grant) error {
	cp := make([]Grant, len(gs))
	for i, g := range gs {
		g.Addrs = slices.Clone(g.Addrs)
		cp[i] = g
	}
	f.mu.Lock()
	f.calls = append(f.calls, cp)
	f.mu.Unlock()
	if f.gate != nil {
		f.entered <- struct{}{}
		<-f.gate
	}
	return f.err
}

func (f *fakeFirewall) Calls() [][]Grant {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func grantString(g Grant) string {
	return fmt.Sprintf("%v %s %v ttl=%d", g.Client, g.Name, g.Addrs, g.TTL)
}

func wantCalls(t *testing.T, fw *fakeFirewall, want ...[]Grant) {
	t.Helper()
	got := fw.Calls()
	str := func(calls [][]Grant) string {
		var b bytes.Buffer
		for i, c := range calls {
			fmt.Fprintf(&b, "call %d:", i)
			for _, g := range c {
				fmt.Fprintf(&b, " [%s]", grantString(g))
			}
			b.WriteByte('\n')
		}
		return b.String()
	}
	if str(got) != str(want) {
		t.Errorf("Admit calls:\n%swant:\n%s", str(got), str(want))
	}
}

// TestFirewallOneAdmitPerBatchOfFastHits: cached answers read in one
// recvmmsg batch are admitted by one call with every grant of the batch,
// before any of them is sent.
func TestFirewallOneAdmitPerBatchOfFastHits(t *testing.T) {
	t.Parallel()
	fw := &fakeFirewall{}
	h, start := newPausedHarness(t, func(c *Config) { c.Firewall = fw })
	const n = 8
	for i := 0; i < n; i++ {
		primeCache(t, h, fmt.Sprintf("b%d.cdn.example.", i), dns.TypeA)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	to, _ := net.ResolveUDPAddr("udp", h.addr)
	for i := 0; i < n; i++ {
		m := new(dns.Msg)
		m.SetQuestion(fmt.Sprintf("B%d.cdn.example.", i), dns.TypeA)
		m.SetEdns0(1232, false)
		b, _ := m.Pack()
		if _, err := c.WriteTo(b, to); err != nil {
			t.Fatal(err)
		}
	}
	start() // the queries wait in the socket: one recvmmsg reads them all
	buf := make([]byte, 1232)
	for i := 0; i < n; i++ {
		_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
		k, _, err := c.ReadFrom(buf)
		if err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
		r := new(dns.Msg)
		if err := r.Unpack(buf[:k]); err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
			t.Fatalf("reply %d: %v\n%s", i, err, r)
		}
	}
	var batch []Grant
	for i := 0; i < n; i++ {
		batch = append(batch, Grant{Client: netip.MustParseAddr("127.0.0.10"), Name: fmt.Sprintf("b%d.cdn.example", i), Addrs: addrs("192.0.2.1"), TTL: 60})
	}
	wantCalls(t, fw, batch)
	if got := testutil.ToFloat64(h.srv.metrics.fastAnswers); got != n {
		t.Errorf("%v fast hits, want %d", got, n)
	}
}

// TestFirewallOneAdmitPerBatchOfFastMisses: the upstream reader's answers
// of one read are admitted by one call, and on error every reply with a
// grant becomes SERVFAIL while the others go out as they are.
func TestFirewallOneAdmitPerBatchOfFastMisses(t *testing.T) {
	t.Parallel()
	for _, failing := range []bool{false, true} {
		fw := &fakeFirewall{}
		if failing {
			fw.err = errors.New("netlink: no buffer space")
		}
		h := newHarness(t, func(c *Config) { c.Firewall = fw })
		s := h.srv
		names := []string{"m0.cdn.example.", "cname.M1.cdn.example.", "x.nx.example.", "m3.cdn.example."}
		var (
			done []*fastMiss
			rb   replyBatch
			conn = &recordConn{}
		)
		for _, name := range names {
			q := new(dns.Msg)
			q.SetQuestion(name, dns.TypeA)
			q.SetEdns0(1232, false)
			pkt, _ := q.Pack()
			fm := &fastMiss{pc: conn, group: conn, client: netip.MustParseAddrPort("127.0.0.10:40000"), pkt: pkt, up: s.fwd.ups[0]}
			if !parseFast(pkt, &fm.q) {
				t.Fatal("not fast")
			}
			out, fwd, d := s.fastReply(fm.client.Addr(), pkt, &fm.q, nil, &fm.ev, h.clock.Now())
			if out != nil || fwd == nil {
				t.Fatalf("%s: not a fast miss", name)
			}
			fm.d = d
			fm.key = cacheKey{name: fm.q.lower[:len(fm.q.lower)-1], qtype: dns.TypeA, qclass: dns.ClassINET}
			rec := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)}}
			h.up.serve(rec, q)
			resp, _ := rec.msg.Pack()
			if !s.missAnswered(fm, resp, &rb) {
				t.Fatalf("%s: not answered on the fast path", name)
			}
			done = append(done, fm)
		}
		s.inflight.Add(len(done))
		s.missReplies(done, &rb)
		client := netip.MustParseAddr("127.0.0.10")
		wantCalls(t, fw, []Grant{
			{Client: client, Name: "m0.cdn.example", Addrs: addrs("192.0.2.1"), TTL: 60},
			{Client: client, Name: "cname.m1.cdn.example", Addrs: addrs("192.0.2.7"), TTL: 40}, // the chain's address, its TTL
			{Client: client, Name: "m3.cdn.example", Addrs: addrs("192.0.2.1"), TTL: 60},
		})
		writes := conn.Writes()
		if len(writes) != len(names) {
			t.Fatalf("%d replies written, want %d", len(writes), len(names))
		}
		for i, w := range writes {
			r := new(dns.Msg)
			if err := r.Unpack(w); err != nil {
				t.Fatal(err)
			}
			want := dns.RcodeSuccess
			switch {
			case names[i] == "x.nx.example.":
				want = dns.RcodeNameError // no addresses: no grant, sent as it is
			case failing:
				want = dns.RcodeServerFailure
				if e := ede(r); e == nil || e.InfoCode != dns.ExtendedErrorCodeNetworkError || e.ExtraText != firewallErrorText {
					t.Errorf("%s: EDE %+v", names[i], e)
				}
			}
			if r.Rcode != want {
				t.Errorf("%s (failing %v): %s, want %s", names[i], failing, dns.RcodeToString[r.Rcode], dns.RcodeToString[want])
			}
		}
	}
}

// recordConn is a PacketConn that keeps what is written to it.
type recordConn struct {
	nullConn
	mu     sync.Mutex
	writes [][]byte
}

func (c *recordConn) WriteTo(p []byte, _ net.Addr) (int, error) {
	c.mu.Lock()
	c.writes = append(c.writes, slices.Clone(p))
	c.mu.Unlock()
	return len(p), nil
}

func (c *recordConn) Writes() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.writes)
}

// TestFirewallGrants: a grant carries the client, the canonical name, the
// CNAME chain's addresses and the TTL the client gets (decremented on a
// cache hit), on every path; blocked and address-less answers get none.
func TestFirewallGrants(t *testing.T) {
	t.Parallel()
	fw := &fakeFirewall{}
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *Config) { c.Firewall, c.Metrics = fw, reg })
	client := netip.MustParseAddr("127.0.0.10")
	r := h.query(t, "127.0.0.10", "cname.Fw.cdn.Example.", dns.TypeA, "udp") // fast miss
	if len(r.Answer) != 2 || r.Answer[1].Header().Ttl != 40 {
		t.Fatalf("fast miss answer\n%s", r)
	}
	h.clock.Add(15 * time.Second)
	r = h.query(t, "127.0.0.10", "CNAME.fw.cdn.example.", dns.TypeA, "udp") // fast hit
	if len(r.Answer) != 2 || r.Answer[1].Header().Ttl != 25 {
		t.Fatalf("fast hit answer\n%s", r)
	}
	r = h.query(t, "127.0.0.10", "cname.fw.cdn.example.", dns.TypeA, "tcp") // full path
	if len(r.Answer) != 2 || r.Answer[1].Header().Ttl != 25 {
		t.Fatalf("full path answer\n%s", r)
	}
	h.query(t, "127.0.0.10", "google.com.", dns.TypeA, "udp")   // blocked
	h.query(t, "127.0.0.10", "x.nx.example.", dns.TypeA, "udp") // no addresses
	h.query(t, "127.0.0.10", "x.nx.example.", dns.TypeA, "tcp")
	h.query(t, "127.0.0.99", "elsewhere.example.", dns.TypeA, "tcp") // an unknown client too
	chain := Grant{Client: client, Name: "cname.fw.cdn.example", Addrs: addrs("192.0.2.7"), TTL: 40}
	hit := chain
	hit.TTL = 25
	wantCalls(t, fw, []Grant{chain}, []Grant{hit}, []Grant{hit},
		[]Grant{{Client: netip.MustParseAddr("127.0.0.99"), Name: "elsewhere.example", Addrs: addrs("192.0.2.1"), TTL: 60}})
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var observed uint64
	for _, f := range fams {
		if f.GetName() == "kordon_dnsguard_firewall_admit_seconds" {
			observed = f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if observed != 4 {
		t.Errorf("kordon_dnsguard_firewall_admit_seconds has %d observations, want 4", observed)
	}
}

// firewallPathHarness is a harness with fw, set up so that a query for
// img.cdn.example takes path ("full": over TCP; "fast hit": cached; "fast
// miss"), and the network to send it on.
func firewallPathHarness(t *testing.T, fw Firewall, path string) (*harness, string) {
	h := newHarness(t, func(c *Config) { c.Firewall = fw })
	switch path {
	case "full":
		return h, "tcp"
	case "fast hit":
		primeCache(t, h, "img.cdn.example.", dns.TypeA)
	}
	return h, "udp"
}

// TestFirewallErrorFailsClosed: when Admit fails, every path answers
// SERVFAIL with EDE 23 instead of the answer; the log keeps the verdict.
func TestFirewallErrorFailsClosed(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"full", "fast hit", "fast miss"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			fw := &fakeFirewall{err: errors.New("nftables: operation not permitted")}
			h, netw := firewallPathHarness(t, fw, path)
			r := h.query(t, "127.0.0.10", "img.cdn.example.", dns.TypeA, netw)
			e := ede(r)
			if r.Rcode != dns.RcodeServerFailure || len(r.Answer) != 0 || e == nil || e.InfoCode != dns.ExtendedErrorCodeNetworkError || e.ExtraText != firewallErrorText {
				t.Fatalf("want SERVFAIL with EDE 23, got\n%s", r)
			}
			ev := h.logEvents(t, 1)[0]
			if ev.Verdict != VerdictAllowed || ev.RCode != "SERVFAIL" || len(ev.Answers) != 0 || ev.Policy != "shop/frontend-egress" {
				t.Errorf("query log %+v", ev)
			}
			if got := testutil.ToFloat64(h.srv.metrics.admitErrors); got != 1 {
				t.Errorf("admit errors %v, want 1", got)
			}
			if len(fw.Calls()) != 1 {
				t.Errorf("%d Admit calls, want 1", len(fw.Calls()))
			}
		})
	}
}

// TestFirewallFailedWireMatchesFullPath: the fast paths' SERVFAIL is the
// full path's, byte for byte.
func TestFirewallFailedWireMatchesFullPath(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	for _, tc := range []struct {
		edns, do, rd, cd bool
	}{{false, false, true, false}, {true, false, true, false}, {true, true, false, true}} {
		q := new(dns.Msg)
		q.SetQuestion("ImG.cdn.Example.", dns.TypeAAAA)
		q.Id, q.RecursionDesired, q.CheckingDisabled = 0xBEEF, tc.rd, tc.cd
		if tc.edns {
			q.SetEdns0(4096, tc.do)
		}
		pkt, _ := q.Pack()
		var fq fastQuery
		if !parseFast(pkt, &fq) {
			t.Fatal("not fast")
		}
		fast := appendFirewallFailed(nil, pkt, fq.nameEnd+4, fq.edns, fq.do)
		full, err := h.srv.firewallFailed(q).Pack()
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fast, full) {
			m := new(dns.Msg)
			_ = m.Unpack(fast)
			t.Errorf("%+v: wire SERVFAIL differs\nfast %x\n%s\nfull %x\n%s", tc, fast, m, full, h.srv.firewallFailed(q))
		}
	}
}

// TestFirewallSlowDelaysAnswer: no answer leaves before Admit returns,
// on every path.
func TestFirewallSlowDelaysAnswer(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"full", "fast hit", "fast miss"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			fw := &fakeFirewall{gate: make(chan struct{}), entered: make(chan struct{}, 1)}
			h, netw := firewallPathHarness(t, fw, path)
			nc, err := net.Dial(netw, h.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			c := &dns.Conn{Conn: nc}
			m := new(dns.Msg)
			m.SetQuestion("img.cdn.example.", dns.TypeA)
			if err := c.WriteMsg(m); err != nil {
				t.Fatal(err)
			}
			select {
			case <-fw.entered:
			case <-time.After(5 * time.Second):
				t.Fatal("Admit was not called")
			}
			// Admit is holding: nothing may arrive meanwhile.
			_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			if r, err := c.ReadMsg(); err == nil {
				t.Fatalf("answer before Admit returned:\n%s", r)
			} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
				t.Fatalf("read: %v", err)
			}
			close(fw.gate)
			_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
			r, err := c.ReadMsg()
			if err != nil || r.Rcode != dns.RcodeSuccess || len(r.Answer) != 1 {
				t.Fatalf("answer after Admit: %v\n%v", err, r)
			}
		})
	}
}
