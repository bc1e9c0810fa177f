//go:build unix

package xds

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// The scalability envelope of Kubernetes: 150,000 pods on 5,000 nodes.
// 500 namespaces of 300 pods; 10 services a namespace, each selecting
// the 30 pods of one app; one connected xDS node (a proxyless gRPC
// workload) every 30 pods, 5,000 in all, serving its service and dialing
// the next one of its namespace; two AuthorizationPolicies a namespace.
const (
	scalePods       = 150000
	scaleK8sNodes   = 5000
	scaleNamespaces = 500
	scaleApps       = 10
	scaleXDSEvery   = 30
)

func scalePod(i, gen int) *workload.Workload {
	ip := 10<<24 | (gen%8)<<21 | i // unique per (pod, generation)
	return &workload.Workload{
		Namespace:      fmt.Sprintf("ns-%d", i%scaleNamespaces),
		Name:           fmt.Sprintf("app-%d-%d", i/scaleNamespaces, i%scaleNamespaces),
		ServiceAccount: fmt.Sprintf("sa-%d", (i/scaleNamespaces)%scaleApps),
		Labels:         map[string]string{"app": fmt.Sprintf("app-%d", (i/scaleNamespaces)%scaleApps), "pod-template-hash": fmt.Sprintf("%x", gen)},
		IPs:            []netip.Addr{netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)})},
		Node:           fmt.Sprintf("node-%d", i%scaleK8sNodes),
	}
}

func scaleServices() []Service {
	var out []Service
	for ns := range scaleNamespaces {
		for a := range scaleApps {
			out = append(out, Service{Name: fmt.Sprintf("svc-%d", a), Namespace: fmt.Sprintf("ns-%d", ns), Port: 8080,
				Selector: map[string]string{"app": fmt.Sprintf("app-%d", a)}})
		}
	}
	return out
}

func scalePolicies(tb testing.TB) *policy.Set {
	var docs []string
	for ns := range scaleNamespaces {
		for a := range 2 {
			docs = append(docs, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: p-%d, namespace: ns-%d}
spec: {selector: {matchLabels: {app: app-%d}}, action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/ns-%d/sa/sa-%d]}}], to: [{operation: {methods: [POST], paths: [/pkg.Svc/Method]}}]}]}
`, a, ns, a, ns, (a+9)%scaleApps))
		}
	}
	return mustPolicies(tb, strings.Join(docs, "---\n"))
}

// scaleWorld is a Server over the scalability envelope with every xDS
// node bound and built, driven without gRPC: the registry's changes reach
// the server through onRegistryChange and the marked nodes are rebuilt
// by push, as pushLoop does after the debounce.
type scaleWorld struct {
	reg  *workload.Registry
	srv  *Server
	gens []int
	rng  *rand.Rand
}

func newScaleWorld(b *testing.B) *scaleWorld {
	b.Helper()
	reg := workload.NewRegistry()
	srv, err := New(Config{Registry: reg, TrustDomain: testTD, AllowUnauthenticated: true,
		Services: scaleServices(), Policies: scalePolicies(b),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	w := &scaleWorld{reg: reg, srv: srv, gens: make([]int, scalePods), rng: rand.New(rand.NewPCG(1, 2))}
	pods := make([]*workload.Workload, scalePods)
	for i := range pods {
		pods[i] = scalePod(i, 0)
	}
	start, cpu := time.Now(), cpuTime()
	for _, p := range pods {
		reg.Upsert(p)
	}
	srv.onRegistryChange()
	b.Logf("registry sync of %d pods, applied to xDS's endpoint index: %.2f s (%.2f CPU-s)", scalePods, time.Since(start).Seconds(), (cpuTime() - cpu).Seconds())
	start, cpu = time.Now(), cpuTime()
	var id int64
	for i := 0; i < scalePods; i += scaleXDSEvery {
		p := scalePod(i, 0)
		id++
		srv.nodes.openStream(id, &stream{nonces: map[string]sent{}})
		next := fmt.Sprintf("svc-%d.%s:8080", ((i/scaleNamespaces)%scaleApps+1)%scaleApps, p.Namespace)
		names := []string{ServerListenerPrefix + netip.AddrPortFrom(p.IPs[0], 8080).String(), next}
		if _, err := srv.onRequest(id, &corev3.Node{Id: p.Key()}, "", nil, &listenerUpdate{replace: true, subscribe: names}); err != nil {
			b.Fatal(err)
		}
	}
	b.Logf("initial build of %d node snapshots: %.2f s (%.2f CPU-s)", id, time.Since(start).Seconds(), (cpuTime() - cpu).Seconds())
	return w
}

// event restarts a random pod with a new address, as a rollout does: its
// own node (if connected) and its service's dialers are rebuilt.
func (w *scaleWorld) event() {
	i := w.rng.IntN(scalePods)
	w.gens[i]++
	w.reg.Upsert(scalePod(i, w.gens[i]))
}

// BenchmarkPodEvent is the cost of one pod event through the registry
// and the xDS server at 150,000 pods, 5,000 Kubernetes nodes and 5,000
// connected xDS nodes: the registry update, the change handed to xDS, the
// endpoint index updated, and every affected node's snapshot rebuilt,
// validated and set (builds/op of them). "intake" stops before the
// rebuild (the part that grows with the cluster: registry, change
// handover, endpoint index, marking); "each" pushes after every event;
// "batch=100" pushes once per 100 events, as the debouncer batches a
// burst.
//
//	go test -run '^$' -bench BenchmarkPodEvent -benchtime 5000x ./xds
func BenchmarkPodEvent(b *testing.B) {
	w := newScaleWorld(b)
	ctx := context.Background()
	b.Logf("heap in use with the registry, the index and %d snapshots: %.0f MiB", w.srv.nodes.count(), float64(heapInUse())/(1<<20))
	b.Run("intake", func(b *testing.B) {
		marked := 0
		cpu := cpuTime()
		b.ResetTimer()
		for range b.N {
			w.event()
			w.srv.onRegistryChange()
			marked += len(w.srv.debounce.take())
		}
		b.StopTimer()
		b.ReportMetric(float64(marked)/float64(b.N), "marked/op")
		b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-us/op")
		// Bring the marked nodes up to date for the next sub-benchmark.
		for _, n := range w.srv.nodes.inNamespace("") {
			w.srv.debounce.mark(n.id)
		}
		w.srv.push(ctx, w.srv.debounce.take())
	})
	for _, batch := range []int{1, 100} {
		name := "each"
		if batch > 1 {
			name = fmt.Sprintf("batch=%d", batch)
		}
		b.Run(name, func(b *testing.B) {
			builds := 0
			cpu := cpuTime()
			b.ResetTimer()
			for i := range b.N {
				w.event()
				if (i+1)%batch == 0 || i == b.N-1 {
					w.srv.onRegistryChange()
					ids := w.srv.debounce.take()
					builds += len(ids)
					w.srv.push(ctx, ids)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64(builds)/float64(b.N), "builds/op")
			b.ReportMetric(float64((cpuTime()-cpu).Microseconds())/float64(b.N), "cpu-us/op")
		})
	}
}

func heapInUse() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// cpuTime is the CPU time the process used (every thread, GC included):
// on a shared machine it says more than the wall clock.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
