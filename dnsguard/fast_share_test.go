package dnsguard

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// The cache keeps the upstream answer without a deep copy, so finish (which
// turns that same answer into the reply) must not modify its records or
// section slices in place.
func TestFinishLeavesCachedAnswerIntact(t *testing.T) {
	now := time.Unix(1700000000, 0)
	c := newCache(1024, 0, time.Hour, time.Minute, time.Hour)
	up := new(dns.Msg)
	up.SetQuestion("WWW.Example.COM.", dns.TypeA)
	up.Response = true
	up.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: "WWW.Example.COM.", Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 300}, A: net.IPv4(192, 0, 2, 1)}}
	up.SetEdns0(1232, false)
	rec := up.Answer[0]
	key := cacheKey{name: "www.example.com", qtype: dns.TypeA, qclass: dns.ClassINET}
	c.put(key, up, now)

	r := new(dns.Msg)
	r.SetQuestion("www.eXAMPLE.com.", dns.TypeA)
	r.SetEdns0(4096, true)
	resp := (&Server{}).finish(r, up)
	if got := resp.Answer[0].Header().Name; got != "www.eXAMPLE.com." {
		t.Fatalf("reply answer name %q, want the client's case", got)
	}
	if opt := resp.IsEdns0(); opt == nil || !opt.Do() {
		t.Fatalf("reply lacks our OPT with DO: %v", resp.Extra)
	}

	cached, ok := c.get(key, now, false)
	if !ok {
		t.Fatal("answer not cached")
	}
	if got := cached.Answer[0].Header().Name; got != "WWW.Example.COM." {
		t.Fatalf("cached answer name changed to %q by finish", got)
	}
	if len(cached.Extra) != 1 || cached.Extra[0].Header().Rrtype != dns.TypeOPT {
		t.Fatalf("cached Extra changed by finish: %v", cached.Extra)
	}
	if opt := cached.IsEdns0(); opt == nil || opt.Do() {
		t.Fatalf("cached OPT changed by finish: %v", cached.Extra)
	}
	wa, _, ok := c.getWire(key, now)
	if !ok || wa == nil {
		t.Fatal("no wire form cached")
	}
	var wm dns.Msg
	if err := wm.Unpack(wa.wire); err != nil {
		t.Fatal(err)
	}
	if got := wm.Answer[0].Header().Name; got != "www.example.com." {
		t.Fatalf("wire answer name %q, want lower case", got)
	}
	if rec.Header().Name != "WWW.Example.COM." {
		t.Fatalf("the shared upstream record was renamed in place: %q", rec.Header().Name)
	}
}
