package dnsguard

import (
	"net"
	"testing"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestFastPathMatchesSlowPath: a cache hit answered from wire bytes equals
// what the full miekg/dns path answers for the same query.
func TestFastPathMatchesSlowPath(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	cases := []struct {
		name  string
		qtype uint16
		edns  bool
		do    bool
		rd    bool
	}{
		{"ImG.cdn.Example.", dns.TypeA, true, false, true},
		{"img.cdn.example.", dns.TypeA, false, false, true},
		{"IMG.CDN.EXAMPLE.", dns.TypeA, true, true, false},
		{"x.nx.example.", dns.TypeA, true, false, true},
		{"api.example.", dns.TypeAAAA, true, false, true},
	}
	for _, tc := range cases {
		mk := func() *dns.Msg {
			m := new(dns.Msg)
			m.SetQuestion(tc.name, tc.qtype)
			m.RecursionDesired = tc.rd
			if tc.edns {
				m.SetEdns0(1232, tc.do)
			}
			return m
		}
		h.exchange(t, "127.0.0.10", mk(), "udp") // fills the cache (full path)
		var q fastQuery
		wire, _ := mk().Pack()
		if !parseFast(wire, &q) {
			t.Fatalf("%s: not eligible for the fast path", tc.name)
		}
		before := testutil.ToFloat64(h.srv.metrics.fastAnswers)
		fast := h.exchange(t, "127.0.0.10", mk(), "udp")
		if testutil.ToFloat64(h.srv.metrics.fastAnswers) != before+1 {
			t.Fatalf("%s: the cache hit did not take the fast path", tc.name)
		}
		rec := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10), Port: 40000}}
		slowQ := mk()
		slowQ.Id = fast.Id
		h.srv.ServeDNS(rec, slowQ)
		slow := rec.msg
		if fast.String() != slow.String() {
			t.Errorf("%s: fast and slow answers differ\nfast:\n%s\nslow:\n%s", tc.name, fast, slow)
		}
	}
}

func TestParseFastRejects(t *testing.T) {
	t.Parallel()
	ok := new(dns.Msg)
	ok.SetQuestion("a.example.", dns.TypeA)
	withOption := ok.Copy()
	withOption.SetEdns0(1232, false)
	withOption.IsEdns0().Option = append(withOption.IsEdns0().Option, &dns.EDNS0_COOKIE{Code: dns.EDNS0COOKIE, Cookie: "0123456789abcdef"})
	escaped := new(dns.Msg)
	escaped.SetQuestion(`a\200b.example.`, dns.TypeA)
	anyQ := new(dns.Msg)
	anyQ.SetQuestion("a.example.", dns.TypeANY)
	resp := ok.Copy()
	resp.Response = true
	for name, m := range map[string]*dns.Msg{"edns option": withOption, "escaped name": escaped, "ANY": anyQ, "response": resp} {
		b, err := m.Pack()
		if err != nil {
			t.Fatal(err)
		}
		var q fastQuery
		if parseFast(b, &q) {
			t.Errorf("%s: accepted by the fast path", name)
		}
	}
	b, _ := ok.Pack()
	var q fastQuery
	if !parseFast(b, &q) || q.qname != "a.example." || q.qtype != dns.TypeA {
		t.Fatalf("plain query: %+v", q)
	}
}

// FuzzParseFast: never panics, and agrees with miekg/dns on what it accepts.
func FuzzParseFast(f *testing.F) {
	m := new(dns.Msg)
	m.SetQuestion("Www.Example.com.", dns.TypeAAAA)
	m.SetEdns0(4096, true)
	b, _ := m.Pack()
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var q fastQuery
		if !parseFast(b, &q) {
			return
		}
		m := new(dns.Msg)
		if err := m.Unpack(b); err != nil {
			t.Fatalf("fast path accepted what miekg/dns rejects: %v", err)
		}
		if m.Question[0].Name != q.qname || m.Question[0].Qtype != q.qtype {
			t.Fatalf("fast %q/%d, miekg %q/%d", q.qname, q.qtype, m.Question[0].Name, m.Question[0].Qtype)
		}
	})
}
