package workload

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"testing"
	"time"
)

// The scalability envelope of Kubernetes: 150,000 pods on 5,000 nodes.
const (
	benchNodes      = 5000
	benchNamespaces = 500
)

// benchPod is pod i of a simulated cluster: 30 pods a node, 300 a
// namespace, one IPv4 and one IPv6 address, a few labels.
func benchPod(i int, gen int) *Workload {
	ns := fmt.Sprintf("ns-%d", i%benchNamespaces)
	v4 := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
	a := [16]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, byte(gen), byte(i >> 16), byte(i >> 8), byte(i)}
	return &Workload{
		Name:           fmt.Sprintf("app-%d-%d", i/benchNamespaces, gen),
		Namespace:      ns,
		ServiceAccount: fmt.Sprintf("sa-%d", i%7),
		Labels:         map[string]string{"app": fmt.Sprintf("app-%d", i%1000), "tier": "backend", "pod-template-hash": fmt.Sprintf("%x", i%97)},
		IPs:            []netip.Addr{v4, netip.AddrFrom16(a)},
		Node:           fmt.Sprintf("node-%d", i%benchNodes),
		UID:            fmt.Sprintf("00000000-0000-0000-%04x-%012x", gen, i),
	}
}

func benchPods(n int) []*Workload {
	ws := make([]*Workload, n)
	for i := range ws {
		ws[i] = benchPod(i, 0)
	}
	return ws
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// benchSizes are the registry sizes measured; the rebuild-per-event
// registry (before incremental indexes) needs -bench 'pods=(1000|10000)$'.
var benchSizes = []int{1000, 10000, 150000}

// BenchmarkRegistrySync is the initial list of an informer: one Upsert a
// pod into an empty registry. sync-s is the time for the whole list,
// heap-MB the heap in use once it is in.
func BenchmarkRegistrySync(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			ws := benchPods(n)
			base := heapInUse()
			var keep *Registry
			var total, cpu time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				start, startCPU := time.Now(), cpuTime()
				r := NewRegistry()
				for _, w := range ws {
					r.Upsert(w)
				}
				total += time.Since(start)
				cpu += cpuTime() - startCPU
				keep = r
			}
			b.StopTimer()
			b.ReportMetric(total.Seconds()/float64(b.N), "sync-s")
			b.ReportMetric(cpu.Seconds()/float64(b.N), "sync-cpu-s")
			b.ReportMetric(float64(total.Nanoseconds())/float64(b.N)/float64(n), "ns/pod")
			b.ReportMetric(float64(heapInUse()-min(base, heapInUse()))/(1<<20), "heap-MB")
			runtime.KeepAlive(keep)
		})
	}
}

// BenchmarkRegistryEvent is the steady state after the sync: each op is
// one pod event, in the mix of a rolling update: an update in place (new
// labels), the deletion of a pod and the add of its replacement (new name,
// new addresses, new UID). cpu-ns/op is the CPU time an op (GC included,
// building the simulated pod too).
func BenchmarkRegistryEvent(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			r := NewRegistry()
			r.Replace(benchPods(n))
			gen := make([]int, n)
			rng := rand.New(rand.NewPCG(1, 2))
			b.ReportAllocs()
			b.ResetTimer()
			startCPU := cpuTime()
			defer func() {
				b.ReportMetric(float64((cpuTime()-startCPU).Nanoseconds())/float64(b.N), "cpu-ns/op")
			}()
			for i := range b.N {
				p := rng.IntN(n)
				switch i % 3 {
				case 0:
					w := benchPod(p, gen[p])
					w.Labels = map[string]string{"app": "relabelled", "tier": "backend"}
					r.Upsert(w)
				case 1:
					old := benchPod(p, gen[p])
					r.Delete(old.Namespace, old.Name)
				case 2:
					gen[p]++
					r.Upsert(benchPod(p, gen[p]))
				}
			}
		})
	}
}

// BenchmarkRegistryByIP is the DNS hot path: who sent this query.
func BenchmarkRegistryByIP(b *testing.B) {
	for _, n := range benchSizes {
		r := NewRegistry()
		ws := benchPods(n)
		r.Replace(ws)
		ips := make([]netip.Addr, 1024)
		for i := range ips {
			ips[i] = ws[(i*7919)%n].IPs[i%2]
		}
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			for i := range b.N {
				if _, ok := r.ByIP(ips[i&1023]); !ok {
					b.Fatal("miss")
				}
			}
		})
		b.Run(fmt.Sprintf("pods=%d/parallel", n), func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					if _, ok := r.ByIP(ips[i&1023]); !ok {
						b.Fatal("miss")
					}
					i++
				}
			})
		})
	}
}

// BenchmarkRegistryList is what xds and egress read once a version: each
// op is one pod update and the List after it.
func BenchmarkRegistryList(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("pods=%d", n), func(b *testing.B) {
			r := NewRegistry()
			r.Replace(benchPods(n))
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				w := benchPod(i%n, 0)
				w.Labels = map[string]string{"app": fmt.Sprint(i)}
				r.Upsert(w)
				if got := r.List(); len(got) != n {
					b.Fatalf("List: %d workloads, want %d", len(got), n)
				}
			}
		})
	}
}
