package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds"
)

// The scale run's layout: 300 pods a namespace, 10 apps (services) a
// namespace, two AuthorizationPolicies a namespace.
const (
	podsPerNS = 300
	appsPerNS = 10
)

func scalePod(i, gen, namespaces, k8sNodes int) *workload.Workload {
	ip := 10<<24 | (gen%8)<<21 | i
	app := (i / namespaces) % appsPerNS
	return &workload.Workload{
		Namespace:      fmt.Sprintf("ns-%d", i%namespaces),
		Name:           fmt.Sprintf("app-%d-%d", i/namespaces, i%namespaces),
		ServiceAccount: fmt.Sprintf("sa-%d", app),
		Labels:         map[string]string{"app": fmt.Sprintf("app-%d", app), "pod-template-hash": fmt.Sprintf("%x", gen)},
		IPs:            []netip.Addr{netip.AddrFrom4([4]byte{byte(ip >> 24), byte(ip >> 16), byte(ip >> 8), byte(ip)})},
		Node:           fmt.Sprintf("node-%d", i%k8sNodes),
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runScale drives the registry and the xDS server, over gRPC, at
// o.pods pods on o.k8sNodes Kubernetes nodes with o.xdsNodes connected
// proxyless nodes (each serves its service and dials the next one of its
// namespace: Listener, RouteConfiguration, Cluster, ClusterLoadAssignment
// all ACKed), then o.events pod restarts (a new address each).
func runScale(o options, out io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	namespaces := max(o.pods/podsPerNS, 1)
	pods := make([]*workload.Workload, o.pods)
	for i := range pods {
		pods[i] = scalePod(i, 0, namespaces, o.k8sNodes)
	}
	var svcs []xds.Service
	var docs []string
	for ns := range namespaces {
		for a := range appsPerNS {
			svcs = append(svcs, xds.Service{Name: fmt.Sprintf("svc-%d", a), Namespace: fmt.Sprintf("ns-%d", ns), Port: 8080,
				Selector: map[string]string{"app": fmt.Sprintf("app-%d", a)}})
		}
		for a := range 2 {
			docs = append(docs, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: p-%d, namespace: ns-%d}
spec:
  selector: {matchLabels: {app: app-%d}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/ns-%d/sa/sa-%d"]}}]
    to: [{operation: {paths: ["/pkg.Svc/Method", "/pkg.Other/*"]}}]
`, a, ns, a, ns, (a+9)%appsPerNS))
		}
	}
	set, err := policy.Parse("scale.yaml", []byte(strings.Join(docs, "---\n")), policy.LoadOptions{})
	if err != nil {
		return err
	}
	reg := workload.NewRegistry()
	prom := prometheus.NewRegistry()
	srv, err := xds.New(xds.Config{
		Registry: reg, TrustDomain: "cluster.local", Policies: set, Services: svcs,
		AllowUnauthenticated: true, DebounceQuiet: o.debounce,
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
		Metrics: prom,
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	fmt.Fprintf(out, "scale: %d pods, %d Kubernetes nodes, %d namespaces, %d services, %d AuthorizationPolicies, %d connected xDS nodes\n",
		o.pods, o.k8sNodes, namespaces, len(svcs), len(set.Authorization), o.xdsNodes)

	// Initial sync: the informer's list into the registry while the xDS
	// server runs, then every xDS node connects and ACKs its first
	// snapshot.
	t0, c0 := time.Now(), cpuTime()
	for _, w := range pods {
		reg.Upsert(w)
	}
	regWall, regCPU := time.Since(t0), cpuTime()-c0
	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		if conns[i], err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	every := max(o.pods/o.xdsNodes, 1)
	var ids []string
	var wg sync.WaitGroup
	errs := make(chan error, o.xdsNodes)
	for i := 0; i < o.pods && len(ids) < o.xdsNodes; i += every {
		w := pods[i]
		c, err := adsOpen(ctx, conns[len(ids)%len(conns)], w.Key())
		if err != nil {
			return err
		}
		target := fmt.Sprintf("svc-%d.%s:8080", ((i/namespaces)%appsPerNS+1)%appsPerNS, w.Namespace)
		cluster := fmt.Sprintf("outbound|8080||svc-%d.%s.svc.cluster.local", ((i/namespaces)%appsPerNS+1)%appsPerNS, w.Namespace)
		for _, sub := range []struct {
			t     string
			names []string
		}{
			{resourcev3.ListenerType, []string{xds.ServerListenerPrefix + netip.AddrPortFrom(w.IPs[0], 8080).String(), target}},
			{resourcev3.RouteType, []string{xds.InboundRouteName, target}},
			{resourcev3.ClusterType, []string{cluster}},
			{resourcev3.EndpointType, []string{cluster}},
		} {
			if err := c.Subscribe(sub.t, sub.names...); err != nil {
				return err
			}
		}
		ids = append(ids, w.Key())
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				resp, err := c.Recv()
				if err != nil {
					if ctx.Err() == nil {
						errs <- err
					}
					return
				}
				if err := c.Ack(resp); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	types := []string{"Listener", "RouteConfiguration", "Cluster", "ClusterLoadAssignment"}
	synced := func() bool {
		for _, id := range ids {
			st, ok := srv.NodeStatus(id)
			if !ok {
				return false
			}
			for _, t := range types {
				ts := st.Types[t]
				if ts == nil || ts.Acked != st.Versions[t] {
					return false
				}
			}
		}
		return true
	}
	if err := waitFor(10*time.Minute, errs, synced); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	fmt.Fprintf(out, "initial sync: registry list of %d pods %.2f s (%.2f CPU-s); with %d xDS nodes connected, built, sent and ACKed (4 types each) %.2f s (%.2f CPU-s)\n",
		o.pods, regWall.Seconds(), regCPU.Seconds(), len(ids), time.Since(t0).Seconds(), (cpuTime() - c0).Seconds())

	// Pod events: restarts with a new address, as fast as they come.
	builds := func() float64 {
		mfs, _ := prom.Gather()
		total := 0.0
		for _, mf := range mfs {
			if mf.GetName() == "kordon_xds_snapshot_builds_total" {
				for _, m := range mf.GetMetric() {
					total += m.GetCounter().GetValue()
				}
			}
		}
		return total
	}
	b0 := builds()
	rng := rand.New(rand.NewPCG(1, 2))
	gens := make([]int, o.pods)
	next := make([]*workload.Workload, o.events)
	for k := range next {
		i := rng.IntN(o.pods)
		gens[i]++
		next[k] = scalePod(i, gens[i], namespaces, o.k8sNodes)
	}
	t1, c1 := time.Now(), cpuTime()
	for _, w := range next {
		reg.Upsert(w)
	}
	intake, intakeCPU := time.Since(t1), cpuTime()-c1
	// Quiet: every push done (the build count stops moving for five
	// debounce periods) and every node has ACKed what it was sent.
	last, lastChange := builds(), time.Now()
	if err := waitFor(10*time.Minute, errs, func() bool {
		if b := builds(); b != last {
			last, lastChange = b, time.Now()
			return false
		}
		return time.Since(lastChange) > 5*o.debounce && synced()
	}); err != nil {
		return fmt.Errorf("events: %w", err)
	}
	quiet := lastChange.Sub(t1)
	total := cpuTime() - c1
	fmt.Fprintf(out, "%d pod events: registry+xDS intake %.1f us/event wall (%.1f CPU-us); with every affected node rebuilt, pushed and ACKed: %.0f snapshot builds (%.2f per event), last push %.2f s after the first event, %.1f CPU-us/event (clients' ACKs included)\n",
		o.events, float64(intake.Microseconds())/float64(o.events), float64(intakeCPU.Microseconds())/float64(o.events),
		last-b0, (last-b0)/float64(o.events), quiet.Seconds(), float64(total.Microseconds())/float64(o.events))

	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(out, "memory (control plane, registry and the %d simulated clients in one process): HeapInuse %.1f MiB, RSS %s\n",
		len(ids), float64(ms.HeapInuse)/(1<<20), rss())
	cancel()
	wg.Wait()
	return <-served
}
