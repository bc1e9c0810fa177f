package egress

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/kordon-dev/kordon/policy"
)

// synthAddr is the i-th address of a range no test routes (100.64/10,
// 2001:db8:200::/48).
func synthAddr(v6 bool, i int) netip.Addr {
	if v6 {
		return netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, byte(i >> 16), byte(i >> 8), byte(i)})
	}
	return netip.AddrFrom4([4]byte{100, 64 + byte(i>>16), byte(i >> 8), byte(i)})
}

// TestReadback20000: 20,000 grants in one Admit land completely (the
// element adds are chunked below v0.3.0's silent 64 KiB limit), for the
// smallest keys (dns4: src . dst) and the largest (dnsport6).
func TestReadback20000(t *testing.T) {
	reg := prometheus.NewRegistry()
	e := newEnv(t, 1, func(c *Config) { c.Metrics = reg })
	e.setPolicies(
		pol{pod: 0, allow: []string{"*.any.example.com"}},
		pol{pod: 0, allow: []string{"*.port.example.com"}, ports: []policy.EgressPort{{Port: 443}}},
	)
	const n = 20000
	var grants []Grant
	for i := 0; i < n; i++ {
		grants = append(grants,
			Grant{Client: e.tp.Pods[0].IP4, Name: fmt.Sprintf("h%d.any.example.com", i), Addrs: []netip.Addr{synthAddr(false, i)}, TTL: 600},
			Grant{Client: e.tp.Pods[0].IP4, Name: fmt.Sprintf("h%d.port.example.com", i), Addrs: []netip.Addr{synthAddr(true, i)}, TTL: 600})
	}
	start := time.Now()
	e.fw.cfg.AdmitTimeout = time.Minute
	if err := e.fw.Admit(grants); err != nil {
		t.Fatal(err)
	}
	t.Logf("Admit of %d grants (%d elements): %v", len(grants), 3*n, time.Since(start).Round(time.Millisecond))
	src4, src6 := e.tp.Pods[0].IP4, e.tp.Pods[0].IP6
	check := func(set string, key func(i int) []byte) {
		es := e.setElems(set)
		got := make(map[string]bool, len(es))
		for _, el := range es {
			if el.Timeout <= 0 {
				t.Fatalf("%s element without timeout", set)
			}
			got[string(el.Key)] = true
		}
		missing := 0
		for i := 0; i < n; i++ {
			if !got[string(key(i))] {
				missing++
			}
		}
		if len(es) != n || missing != 0 {
			t.Fatalf("%s: %d elements read back, %d of %d missing", set, len(es), missing, n)
		}
	}
	check("dns4", func(i int) []byte { return keyPair(src4, synthAddr(false, i)) })
	check("dnsaddr6", func(i int) []byte { return keyPair(src6, synthAddr(true, i)) })
	check("dnsport6", func(i int) []byte { return keyPort(src6, synthAddr(true, i), 6, 443) })

	e.fw.updateGauges()
	if got := testutil.ToFloat64(e.fw.m.elements.WithLabelValues("dnsport6")); got != n {
		t.Fatalf("kordon_egress_set_elements{set=dnsport6} = %v, want %d", got, n)
	}
	if got := testutil.ToFloat64(e.fw.m.grants); got != 2*n {
		t.Fatalf("kordon_egress_grants_total = %v, want %d", got, 2*n)
	}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP kordon_egress_program_errors_total Batches the kernel refused.
# TYPE kordon_egress_program_errors_total counter
kordon_egress_program_errors_total 0
`), "kordon_egress_program_errors_total"); err != nil {
		t.Fatal(err)
	}
}

// TestAdmitThenConnect: a connection made right after Admit returns
// always succeeds (1,000 fresh destinations, IPv4 and IPv6).
func TestAdmitThenConnect(t *testing.T) {
	e := newEnv(t, 1, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"*.example.com"}})
	// Every address of these ranges is local to the outside namespace.
	e.tp.Outside.Exec(t, "ip", "route", "add", "local", "203.0.113.0/24", "dev", "lo")
	e.tp.Outside.Exec(t, "ip", "-6", "route", "add", "local", "2001:db8:100::/48", "dev", "lo")
	e.tcpServer(netip.IPv6Unspecified(), 8080)
	failures := 0
	var lat []time.Duration
	for i := 0; i < 1000; i++ {
		dst := netip.AddrFrom4([4]byte{203, 0, 113, byte(i + 1)})
		if i >= 250 {
			dst = netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x01, 0x00, 14: byte(i >> 8), 15: byte(i)})
		}
		start := time.Now()
		if err := e.fw.Admit([]Grant{{Client: e.tp.Pods[0].IP4, Name: fmt.Sprintf("h%d.example.com", i), Addrs: []netip.Addr{dst}, TTL: 60}}); err != nil {
			t.Fatalf("Admit %d: %v", i, err)
		}
		lat = append(lat, time.Since(start))
		var c net.Conn
		err := e.tp.Pods[0].Do(func() (err error) {
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(dst, 8080).String(), 3*time.Second)
			return err
		})
		if err != nil {
			failures++
			t.Errorf("iteration %d: %s: %v", i, dst, err)
			continue
		}
		c.Close()
	}
	if failures != 0 {
		t.Fatalf("%d of 1000 admit-then-connect iterations failed", failures)
	}
	t.Logf("1000 admit-then-connect: 0 failures; Admit p50 %v p99 %v", pct(lat, 50), pct(lat, 99))
}

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, len(s)*p/100)]
}

// TestElementsPerSourceBounded: one source cannot grow the kernel sets
// past maxElemsPerSource; the rest is counted, not programmed.
func TestElementsPerSourceBounded(t *testing.T) {
	e := newEnv(t, 1, func(c *Config) { c.AdmitTimeout = time.Minute })
	e.setPolicies(pol{pod: 0, allow: []string{"*.example.com"}})
	const extra = 10
	addrs := make([]netip.Addr, maxElemsPerSource+extra)
	for i := range addrs {
		addrs[i] = synthAddr(false, i)
	}
	if err := e.fw.Admit([]Grant{{Client: e.tp.Pods[0].IP4, Name: "w.example.com", Addrs: addrs, TTL: 600}}); err != nil {
		t.Fatal(err)
	}
	if n := e.setLen("dns4"); n != maxElemsPerSource {
		t.Fatalf("dns4 has %d elements, want %d", n, maxElemsPerSource)
	}
	if got := testutil.ToFloat64(e.fw.m.dropped); got != extra {
		t.Fatalf("kordon_egress_elements_dropped_total = %v, want %d", got, extra)
	}
}
