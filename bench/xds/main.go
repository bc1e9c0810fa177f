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
	"net"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
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

	srv, err := xds.New(xds.Config{
		Registry: reg, TrustDomain: "cluster.local", Policies: set,
		AllowUnauthenticated: true,
		DebounceQuiet:        o.debounce,
		Logger:               slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError})),
		Metrics:              prometheus.NewRegistry(),
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
