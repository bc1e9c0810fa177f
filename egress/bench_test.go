package egress

import (
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"

	"github.com/kordon-dev/kordon/internal/netns"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// benchFirewall is a firewall on a bare namespace with n enforced
// workloads (10.x addresses, one IPv4 and one IPv6 each).
func benchFirewall(b *testing.B, n int, state string) (*Firewall, *workload.Registry, *netns.NS) {
	b.Helper()
	netns.RequireRoot(b)
	ns := netns.New(b, "bench")
	reg := workload.NewRegistry()
	ws := make([]*workload.Workload, n)
	for i := range ws {
		ws[i] = &workload.Workload{Name: fmt.Sprintf("w%d", i), Namespace: "default", ServiceAccount: "default",
			Labels: map[string]string{"app": "x"},
			IPs:    []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), netip.AddrFrom16([16]byte{0xfd, 0, 2, 0x44, 14: byte(i >> 8), 15: byte(i)})}}
	}
	reg.Replace(ws)
	fw, err := New(Config{NetNSFd: ns.Fd(b), Registry: reg, StateFile: state, AdmitTimeout: 10 * time.Minute,
		Internal: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/32")}})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { fw.Close() })
	setX(b, fw)
	return fw, reg, ns
}

func setX(b *testing.B, fw *Firewall) {
	b.Helper()
	set := &policy.Set{Egress: []*policy.EgressPolicy{{
		Metadata: policy.ObjectMeta{Name: "x", Namespace: "default"},
		Spec: policy.EgressPolicySpec{Selector: &policy.WorkloadSelector{MatchLabels: map[string]string{"app": "x"}},
			Allow: []string{"*.example.com"}, AllowCIDRs: []string{"192.0.2.0/24"}},
	}}}
	if err := fw.SetPolicies(set, policy.EgressOptions{}); err != nil {
		b.Fatal(err)
	}
}

// benchAdmit measures Admit calls of size grants each (fresh addresses,
// so every call writes to the kernel), callers at a time.
func benchAdmit(b *testing.B, size, callers int) {
	fw, _, _ := benchFirewall(b, 1, "")
	client := netip.MustParseAddr("10.244.0.0")
	var mu sync.Mutex
	lat := make([]time.Duration, 0, b.N)
	next := 0
	var wg sync.WaitGroup
	b.ResetTimer()
	for c := 0; c < callers; c++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				if next >= b.N {
					mu.Unlock()
					return
				}
				base := next * size
				next++
				mu.Unlock()
				gs := make([]Grant, size)
				for i := range gs {
					gs[i] = Grant{Client: client, Name: "a.example.com", Addrs: []netip.Addr{synthAddr(false, base+i)}, TTL: 300}
				}
				start := time.Now()
				if err := fw.Admit(gs); err != nil {
					b.Error(err)
					return
				}
				d := time.Since(start)
				mu.Lock()
				lat = append(lat, d)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-us")
		b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-us")
	}
}

func BenchmarkAdmit1(b *testing.B)  { benchAdmit(b, 1, 1) }
func BenchmarkAdmit32(b *testing.B) { benchAdmit(b, 32, 1) }

// BenchmarkAdmit1x32Callers: 32 concurrent callers of one grant each
// (group commit).
func BenchmarkAdmit1x32Callers(b *testing.B) { benchAdmit(b, 1, 32) }

// heapNow is the live heap after a collection.
func heapNow() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkResync10kx50 loads 10,000 enforced workloads with 50 learned
// addresses each (500,000 elements of dns4) and measures: the first
// SetPolicies (static sets), the Admit of all grants, an agent restart
// adopting the table (New reads every element back), and a restore from
// the state file into an empty table (a reboot).
func BenchmarkResync10kx50(b *testing.B) {
	const nw, na = 10000, 50
	for i := 0; i < b.N; i++ {
		state := b.TempDir() + "/state.json"
		h0 := heapNow()
		start := time.Now()
		fw, reg, ns := benchFirewall(b, nw, state)
		b.ReportMetric(time.Since(start).Seconds(), "setpolicies-s")
		var gs []Grant
		for w := 0; w < nw; w++ {
			client := netip.AddrFrom4([4]byte{10, 244, byte(w >> 8), byte(w)})
			for a := 0; a < na; a++ {
				gs = append(gs, Grant{Client: client, Name: "h.example.com", Addrs: []netip.Addr{synthAddr(false, w*na+a)}, TTL: 3600})
			}
		}
		start = time.Now()
		if err := fw.Admit(gs); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(time.Since(start).Seconds(), "admit500k-s")
		gs = nil
		b.ReportMetric(float64(heapNow()-h0)/(1<<20), "heap-MiB")

		// One workload changes: the reconcile re-evaluates all 10,000;
		// Admit calls meanwhile wait only for the diff and the write.
		reg.Upsert(&workload.Workload{Name: "new", Namespace: "default", ServiceAccount: "default",
			Labels: map[string]string{"app": "x"}, IPs: []netip.Addr{netip.MustParseAddr("10.244.200.200")}})
		done := make(chan time.Duration)
		go func() {
			start := time.Now()
			if err := fw.reconcile(); err != nil {
				b.Error(err)
			}
			done <- time.Since(start)
		}()
		var worst time.Duration
		client := netip.MustParseAddr("10.244.0.1")
	admits:
		for j := 0; j < 100000; j++ {
			select {
			case d := <-done:
				b.ReportMetric(d.Seconds(), "reconcile-1change-s")
				break admits
			default:
			}
			start := time.Now()
			if err := fw.Admit([]Grant{{Client: client, Name: "r.example.com", Addrs: []netip.Addr{synthAddr(true, j)}, TTL: 60}}); err != nil {
				b.Fatal(err)
			}
			worst = max(worst, time.Since(start))
		}
		b.ReportMetric(float64(worst.Microseconds()), "admit-during-reconcile-max-us")
		if err := fw.Close(); err != nil { // saves the state file
			b.Fatal(err)
		}
		fw = nil
		runtime.GC()

		h1 := heapNow()
		start = time.Now()
		fw2, err := New(Config{NetNSFd: ns.Fd(b), Registry: reg, StateFile: state, AdmitTimeout: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		setX(b, fw2)
		b.ReportMetric(time.Since(start).Seconds(), "restart-s")
		b.ReportMetric(float64(heapNow()-h1)/(1<<20), "restart-heap-MiB")
		if n := len(fw2.elems); n < nw*na {
			b.Fatalf("adopted %d elements, want at least %d", n, nw*na)
		}
		// A reboot: the table is gone, the state file is not.
		if err := fw2.Close(); err != nil {
			b.Fatal(err)
		}
		c, err := nftables.New(nftables.WithNetNSFd(ns.Fd(b)))
		if err != nil {
			b.Fatal(err)
		}
		c.DelTable(&nftables.Table{Name: "kordon", Family: nftables.TableFamilyINet})
		if err := c.Flush(); err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		fw3, err := New(Config{NetNSFd: ns.Fd(b), Registry: reg, StateFile: state, AdmitTimeout: time.Minute})
		if err != nil {
			b.Fatal(err)
		}
		setX(b, fw3)
		b.ReportMetric(time.Since(start).Seconds(), "reboot-restore-s")
		if n := len(fw3.elems); n < nw*na {
			b.Fatalf("restored %d elements, want at least %d", n, nw*na)
		}
		fw3.Remove()
	}
}
