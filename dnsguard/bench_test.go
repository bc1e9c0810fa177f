package dnsguard

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
)

// writeBlocklist writes n entries, half hosts format and half domains.
func writeBlocklist(tb testing.TB, n int) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "list.txt")
	var b strings.Builder
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			fmt.Fprintf(&b, "0.0.0.0 ads%d.tracker%d.example\n", i, i%977)
		} else {
			fmt.Fprintf(&b, "bad%d.example%d.net\n", i, i%13)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}

// BenchmarkBlocklistLoad1M loads a 1,000,000-entry list and reports the
// retained heap (target: seconds and under 150 MB).
func BenchmarkBlocklistLoad1M(b *testing.B) {
	path := writeBlocklist(b, 1_000_000)
	for i := 0; i < b.N; i++ {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		start := time.Now()
		bl, _, err := LoadBlocklist(path)
		if err != nil {
			b.Fatal(err)
		}
		elapsed := time.Since(start)
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/(1<<20), "retained-MB")
		b.ReportMetric(elapsed.Seconds(), "load-s")
		if _, ok := bl.Match("ads2.tracker2.example"); !ok {
			b.Fatal("entry missing")
		}
		runtime.KeepAlive(bl)
	}
}

func TestBlocklistMillionEntries(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	t.Parallel()
	path := writeBlocklist(t, 1_000_000)
	bl, st, err := LoadBlocklist(path)
	if err != nil {
		t.Fatal(err)
	}
	if bl.Len() != 1_000_000 || st.Exact != 500_000 {
		t.Fatalf("loaded %d entries (%+v)", bl.Len(), st)
	}
	for _, name := range []string{"ads0.tracker0.example", "bad999999.example0.net", "x.bad1.example1.net"} {
		if _, ok := bl.Match(name); !ok {
			t.Errorf("%s should be blocked", name)
		}
	}
	for _, name := range []string{"x.ads0.tracker0.example", "tracker0.example", "bad1.example2.net"} {
		if _, ok := bl.Match(name); ok {
			t.Errorf("%s should not be blocked", name)
		}
	}
}

// benchServer builds a Server with 1,000 egress rules for in-process
// benchmarks of the query path (a recorder instead of sockets).
func benchServer(b *testing.B, upstream string) *Server {
	b.Helper()
	var docs strings.Builder
	for i := 0; i < 100; i++ {
		fmt.Fprintf(&docs, "---\napiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata: {name: p%d, namespace: ns%d}\nspec:\n  allow:\n", i, i%10)
		for j := 0; j < 9; j++ {
			fmt.Fprintf(&docs, "  - \"*.svc%d-%d.example\"\n", i, j)
		}
		fmt.Fprintf(&docs, "  - bench.example\n")
	}
	set, err := policy.Parse("bench.yaml", []byte(docs.String()), policy.LoadOptions{})
	if err != nil {
		b.Fatal(err)
	}
	reg := workload.NewRegistry()
	reg.Replace([]*workload.Workload{{Name: "w", Namespace: "ns1", IPs: []netip.Addr{netip.MustParseAddr("127.0.0.10")}}})
	srv, err := New(Config{Registry: reg, Upstreams: []string{upstream}, QueryLog: discard{}})
	if err != nil {
		b.Fatal(err)
	}
	if err := srv.SetPolicies(set); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { srv.Close() })
	return srv
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// BenchmarkServeDNSCacheHit measures the in-process cost of an allowed,
// cached, logged answer.
func BenchmarkServeDNSCacheHit(b *testing.B) {
	up := startUpstreamB(b)
	srv := benchServer(b, up)
	m := new(dns.Msg)
	m.SetQuestion("bench.example.", dns.TypeA)
	w := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10), Port: 40000}}
	srv.ServeDNS(w, m) // warm the cache
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		srv.ServeDNS(w, m)
	}
}

func startUpstreamB(b *testing.B) string {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	u := &fakeUpstream{}
	s := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(u.serve)}
	go s.ActivateAndServe()
	b.Cleanup(func() { s.Shutdown() })
	return pc.LocalAddr().String()
}

// BenchmarkServeDNSCacheMiss measures an allowed query forwarded to a
// loopback upstream (unique names: every query misses the cache).
func BenchmarkServeDNSCacheMiss(b *testing.B) {
	up := startUpstreamB(b)
	srv := benchServer(b, up)
	w := &recorder{remote: &net.UDPAddr{IP: net.IPv4(127, 0, 0, 10), Port: 40000}}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		m := new(dns.Msg)
		i := 0
		for pb.Next() {
			i++
			m.SetQuestion(fmt.Sprintf("u%d-%p.svc1-0.example.", i, m), dns.TypeA)
			srv.ServeDNS(w, m)
		}
	})
}
