// Command xds benchmarks kordon's xDS server: it connects many simulated
// nodes (raw ADS streams that ACK), loads many AuthorizationPolicies, then
// measures the time from a policy change to every affected node's ACK,
// the full recompute time and the process memory.
//
//	go run ./bench/xds [-nodes 1000] [-policies 5000] [-namespaces 100] [-changes 30]
//	go run ./bench/xds -pods 150000 [-k8s-nodes 5000] [-xds-nodes 5000] [-events 5000]
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds"
	"github.com/kordon-dev/kordon/xds/adsclient"
)

type options struct {
	nodes, policies, namespaces, changes, conns int
	debounce                                    time.Duration
	// scale run (-pods > 0)
	pods, k8sNodes, xdsNodes, events int
}

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 1000, "simulated connected nodes")
	flag.IntVar(&o.policies, "policies", 5000, "AuthorizationPolicies")
	flag.IntVar(&o.namespaces, "namespaces", 100, "namespaces the nodes and policies spread over")
	flag.IntVar(&o.changes, "changes", 30, "policy changes to time (one namespace each)")
	flag.IntVar(&o.conns, "conns", 20, "gRPC connections the streams share")
	flag.DurationVar(&o.debounce, "debounce", xds.DefaultDebounceQuiet, "debounce quiet period")
	flag.IntVar(&o.pods, "pods", 0, "scale run: pods in the registry (e.g. 150000); 0 runs the policy benchmark")
	flag.IntVar(&o.k8sNodes, "k8s-nodes", 5000, "scale run: Kubernetes nodes the pods spread over")
	flag.IntVar(&o.xdsNodes, "xds-nodes", 5000, "scale run: connected xDS nodes")
	flag.IntVar(&o.events, "events", 5000, "scale run: pod events after the initial sync")
	flag.Parse()
	runFn := run
	if o.pods > 0 {
		runFn = runScale
	}
	if err := runFn(o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

const labelsPerNS = 5

func nodeID(i int, o options) (ns, pod string) {
	return fmt.Sprintf("ns-%d", i%o.namespaces), fmt.Sprintf("app-%d", i)
}

func policyYAML(i, variant int, o options) string {
	ns := i % o.namespaces
	// The first policy of each namespace applies to the whole namespace,
	// the others to one of its labelsPerNS apps.
	selector := fmt.Sprintf("\n  selector: {matchLabels: {app: svc-%d}}", (i/o.namespaces)%labelsPerNS)
	if i < o.namespaces {
		selector = ""
	}
	return fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: p-%d, namespace: ns-%d}
spec:%s
  action: %s
  rules:
  - from: [{source: {principals: ["cluster.local/ns/ns-%d/sa/client-%d"], namespaces: ["ns-%d"]}}]
    to: [{operation: {methods: ["POST"], paths: ["/pkg.Svc%d/Method%d", "/pkg.Other/*"]}}]
  - from: [{source: {notPrincipals: ["cluster.local/ns/ns-%d/sa/blocked"]}}]
    to: [{operation: {paths: ["/grpc.health.v1.Health/Check"]}}]
`, i, ns, selector, map[bool]string{true: "DENY", false: "ALLOW"}[i%10 == 0],
		(ns+1)%o.namespaces, variant, (ns+2)%o.namespaces, i, variant, ns)
}

func run(o options, out io.Writer) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	reg := workload.NewRegistry()
	ws := make([]*workload.Workload, o.nodes)
	for i := range ws {
		ns, pod := nodeID(i, o)
		ip := netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
		ws[i] = &workload.Workload{Namespace: ns, Name: pod, ServiceAccount: "sa-" + pod,
			Labels: map[string]string{"app": fmt.Sprintf("svc-%d", (i/o.namespaces)%labelsPerNS)}, IPs: []netip.Addr{ip}}
	}
	reg.Replace(ws)

	start := time.Now()
	var docs []string
	for i := range o.policies {
		docs = append(docs, policyYAML(i, 0, o))
	}
	set, err := policy.Parse("bench.yaml", []byte(strings.Join(docs, "---\n")), policy.LoadOptions{})
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "parsed %d policies in %v\n", len(set.Authorization), time.Since(start).Round(time.Millisecond))

	srv, lis, served, err := serve(ctx, xds.Config{Registry: reg, Policies: set, DebounceQuiet: o.debounce, Metrics: prometheus.NewRegistry()})
	if err != nil {
		return err
	}

	// Connect the nodes.
	start = time.Now()
	conns := make([]*grpc.ClientConn, o.conns)
	for i := range conns {
		if conns[i], err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
			return err
		}
		defer conns[i].Close()
	}
	var wg sync.WaitGroup
	errs := make(chan error, o.nodes)
	for i, w := range ws {
		c, err := adsOpen(ctx, conns[i%len(conns)], w.Key())
		if err != nil {
			return err
		}
		name := xds.ServerListenerPrefix + netip.AddrPortFrom(w.IPs[0], 8080).String()
		if err := c.Subscribe(resourcev3.ListenerType, name); err != nil {
			return err
		}
		if err := c.Subscribe(resourcev3.RouteType, xds.InboundRouteName); err != nil {
			return err
		}
		wg.Add(1)
		go ackLoop(ctx, c, errs, &wg)
	}
	allAcked := func(ids []string, after time.Time) (map[string]time.Time, bool) {
		acks := map[string]time.Time{}
		for _, id := range ids {
			st, ok := srv.NodeStatus(id)
			rt := st.Types["RouteConfiguration"]
			if !ok || rt == nil || rt.Acked != st.Versions["RouteConfiguration"] || !st.SnapshotAt.After(after) {
				return nil, false
			}
			acks[id] = rt.AckedAt
		}
		return acks, true
	}
	ids := make([]string, len(ws))
	for i, w := range ws {
		ids[i] = w.Key()
	}
	if err := waitFor(60*time.Second, errs, func() bool { _, ok := allAcked(ids, time.Time{}); return ok }); err != nil {
		return fmt.Errorf("initial sync: %w", err)
	}
	fmt.Fprintf(out, "connected %d nodes (initial snapshots built and ACKed) in %v\n", o.nodes, time.Since(start).Round(time.Millisecond))

	recompute := srv.RecomputeAll(ctx)
	fmt.Fprintf(out, "full recompute of %d nodes with %d policies (compile cache dropped): %v\n", o.nodes, o.policies, recompute.Round(time.Millisecond))

	// Policy changes, one namespace at a time.
	var lat []time.Duration
	cur := set
	for k := range o.changes {
		nsIdx := (k * 7) % o.namespaces
		target := nsIdx // policy index with this namespace
		changed, err := policy.Parse("change.yaml", []byte(policyYAML(target, k+1, o)), policy.LoadOptions{})
		if err != nil {
			return err
		}
		next := &policy.Set{Authorization: append([]*policy.AuthorizationPolicy(nil), cur.Authorization...), Egress: cur.Egress}
		for i, p := range next.Authorization {
			if p.Metadata.Namespace == changed.Authorization[0].Metadata.Namespace && p.Metadata.Name == changed.Authorization[0].Metadata.Name {
				next.Authorization[i] = changed.Authorization[0]
			}
		}
		var affected []string
		ns := fmt.Sprintf("ns-%d", nsIdx)
		for _, w := range ws {
			// Nodes the changed policy selects get a new RBAC; the others
			// of the namespace are rebuilt but unchanged, so not pushed.
			if w.Namespace == ns && changed.Authorization[0].Spec.Selector.Matches(w.Labels) {
				affected = append(affected, w.Key())
			}
		}
		t0 := time.Now()
		srv.SetPolicies(next)
		cur = next
		var acks map[string]time.Time
		if err := waitFor(30*time.Second, errs, func() bool { var ok bool; acks, ok = allAcked(affected, t0); return ok }); err != nil {
			return fmt.Errorf("change %d: %w", k, err)
		}
		for _, at := range acks {
			lat = append(lat, at.Sub(t0))
		}
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	pct := func(p float64) time.Duration { return lat[min(len(lat)-1, int(p*float64(len(lat))))] }
	fmt.Fprintf(out, "policy change -> ACK of every affected node (%d changes, %d node ACKs, debounce %v): p50 %v  p99 %v  max %v\n",
		o.changes, len(lat), o.debounce, pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))

	// A mesh-wide (root namespace) policy change reaches every node.
	root, err := policy.Parse("root.yaml", []byte(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-debug, namespace: kordon-system}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/debug/*"]}}]
`), policy.LoadOptions{})
	if err != nil {
		return err
	}
	next := &policy.Set{Authorization: append(append([]*policy.AuthorizationPolicy(nil), cur.Authorization...), root.Authorization...), Egress: cur.Egress}
	t0 := time.Now()
	srv.SetPolicies(next)
	var acks map[string]time.Time
	if err := waitFor(60*time.Second, errs, func() bool { var ok bool; acks, ok = allAcked(ids, t0); return ok }); err != nil {
		return fmt.Errorf("root change: %w", err)
	}
	var all []time.Duration
	for _, at := range acks {
		all = append(all, at.Sub(t0))
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	fmt.Fprintf(out, "root-namespace policy change -> ACK of all %d nodes: p50 %v  p99 %v  last %v\n",
		len(all), all[len(all)/2].Round(time.Millisecond), all[min(len(all)-1, len(all)*99/100)].Round(time.Millisecond), all[len(all)-1].Round(time.Millisecond))

	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Fprintf(out, "memory (control plane and the %d simulated clients in one process): HeapInuse %.1f MiB, RSS %s\n",
		o.nodes, float64(ms.HeapInuse)/(1<<20), rss())

	cancel()
	wg.Wait()
	return <-served
}

// serve starts an unauthenticated xDS server of cfg on loopback (errors
// logged to stderr); Serve's result arrives on the channel.
func serve(ctx context.Context, cfg xds.Config) (*xds.Server, net.Listener, <-chan error, error) {
	cfg.TrustDomain = "cluster.local"
	cfg.AllowUnauthenticated = true
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	srv, err := xds.New(cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, nil, err
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, lis) }()
	return srv, lis, served, nil
}

// ackLoop ACKs every response c receives until its stream ends; an error
// while ctx is live goes to errs.
func ackLoop(ctx context.Context, c *adsclient.Client, errs chan<- error, wg *sync.WaitGroup) {
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
}

func adsOpen(ctx context.Context, conn *grpc.ClientConn, nodeID string) (*adsclient.Client, error) {
	return adsclient.Open(ctx, conn, &corev3.Node{Id: nodeID})
}

func waitFor(d time.Duration, errs <-chan error, ok func() bool) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		select {
		case err := <-errs:
			return err
		default:
		}
		if ok() {
			return nil
		}
		time.Sleep(time.Millisecond)
	}
	return fmt.Errorf("timed out after %v", d)
}

func rss() string {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

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
	srv, lis, served, err := serve(ctx, xds.Config{Registry: reg, Policies: set, Services: svcs, DebounceQuiet: o.debounce, Metrics: prom})
	if err != nil {
		return err
	}
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
		go ackLoop(ctx, c, errs, &wg)
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
