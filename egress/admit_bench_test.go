package egress

import (
	"net/netip"
	"testing"
)

// BenchmarkAdmitHeld32: a cache hit batch, 32 grants whose elements the
// kernel already holds (admitHeld: no netlink, no commit goroutine).
func BenchmarkAdmitHeld32(b *testing.B) {
	fw, _, _ := benchFirewall(b, 1, "")
	client := netip.MustParseAddr("10.244.0.0")
	gs := make([]Grant, 32)
	for i := range gs {
		gs[i] = Grant{Client: client, Name: "a.example.com", Addrs: []netip.Addr{synthAddr(false, i)}, TTL: 300}
	}
	if err := fw.Admit(gs); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := fw.Admit(gs); err != nil {
			b.Fatal(err)
		}
	}
}
