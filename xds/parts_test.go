package xds

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/policy"
)

// Unit tests of the Server's parts, each alone.

// TestDebouncer: marks coalesce into one batch; a batch is pushed once
// marks stop for the quiet period, or at most max after the first.
func TestDebouncer(t *testing.T) {
	t.Parallel()
	d := newDebouncer(time.Hour, 50*time.Millisecond) // only max can fire
	d.mark("a", "b")
	d.mark("b", "c")
	d.mark()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	batches := make(chan []string, 4)
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.run(ctx, func(ids []string) { sort.Strings(ids); batches <- ids }, nil, nil, nil, nil)
	}()
	select {
	case got := <-batches:
		if !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Fatalf("batch %v", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no batch after DebounceMax")
	}
	if left := d.take(); len(left) != 0 {
		t.Fatalf("left after push: %v", left)
	}
	// Other inputs are served by the same loop.
	cancel()
	<-done
	other := make(chan struct{}, 1)
	other <- struct{}{}
	served := make(chan struct{})
	ctx2, cancel2 := context.WithCancel(context.Background())
	done2 := make(chan struct{})
	go func() {
		defer close(done2)
		d.run(ctx2, func([]string) {}, other, func() { close(served) }, nil, nil)
	}()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Error("other input not served")
	}
	cancel2()
	<-done2
}

// TestNodeTable: binding, subscriptions and the reverse indexes that say
// which nodes a change reaches, and forgetting a node with its last
// stream.
func TestNodeTable(t *testing.T) {
	t.Parallel()
	nt := newNodeTable()
	s1, s2 := &stream{nonces: map[string]sent{}}, &stream{nonces: map[string]sent{}}
	nt.openStream(1, s1)
	nt.openStream(2, s2)
	n, count := nt.bind(1, s1, "shop/web-0", KindProxyless, "web")
	if count != 1 || n.ns != "shop" {
		t.Fatalf("bind: %d streams, ns %q", count, n.ns)
	}
	if _, count = nt.bind(2, s2, "shop/web-0", KindProxyless, "web"); count != 2 {
		t.Fatalf("second stream: %d streams", count)
	}
	if !nt.subscribe(s1, n, &listenerUpdate{replace: true, subscribe: []string{"echo.shop:8080", ServerListenerPrefix + "10.0.0.1:8080"}}) {
		t.Fatal("first subscription reported no change")
	}
	if nt.subscribe(s2, n, &listenerUpdate{replace: true, subscribe: []string{"echo.shop:8080"}}) {
		t.Fatal("a name another stream already wants changed the union")
	}
	if got := nt.dialing(map[string]bool{"shop/echo": true}); !slices.Equal(got, []string{"shop/web-0"}) {
		t.Fatalf("dialing shop/echo: %v", got)
	}
	if got := nt.ids([]string{"shop/web-0", "shop/other"}); !slices.Equal(got, []string{"shop/web-0"}) {
		t.Fatalf("ids: %v", got)
	}
	if got := nt.inNamespace("shop"); len(got) != 1 || len(nt.inNamespace("other")) != 0 || len(nt.inNamespace("")) != 1 {
		t.Fatalf("inNamespace: %v", got)
	}
	// Delta unsubscribe of the dialed name by both streams drops the
	// dialer entry.
	nt.subscribe(s1, n, &listenerUpdate{unsubscribe: []string{"echo.shop:8080"}})
	nt.subscribe(s2, n, &listenerUpdate{unsubscribe: []string{"echo.shop:8080"}})
	if got := nt.dialing(map[string]bool{"shop/echo": true}); len(got) != 0 {
		t.Fatalf("still dialing after unsubscribe: %v", got)
	}
	if got := nt.recordSent(1, "t", "n1", "v1"); got != "shop/web-0" {
		t.Fatalf("recordSent: node %q", got)
	}
	nt.recordSent(1, "t", "n2", "v2") // supersedes n1
	if _, ok := nt.takeNonce(s1, "n1"); ok {
		t.Fatal("a superseded nonce is still known")
	}
	if got, ok := nt.takeNonce(s1, "n2"); !ok || got.version != "v2" {
		t.Fatalf("takeNonce: %+v %v", got, ok)
	}
	if _, id, left := nt.closeStream(1); id != "shop/web-0" || left != 1 {
		t.Fatalf("close first stream: %s %d", id, left)
	}
	if _, id, left := nt.closeStream(2); id != "shop/web-0" || left != 0 || nt.get("shop/web-0") != nil || nt.count() != 0 || len(nt.inNamespace("shop")) != 0 {
		t.Fatalf("close last stream: %s %d", id, left)
	}
}

func TestDialedService(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"echo.shop":                        "shop/echo",
		"echo.shop:8080":                   "shop/echo",
		"echo.shop.svc.cluster.local:80":   "shop/echo",
		ServerListenerPrefix + "1.2.3.4:5": "",
		"echo":                             "",
		".shop":                            "",
	} {
		got, ok := dialedService(in)
		if got != want || ok != (want != "") {
			t.Errorf("%q: %q %v, want %q", in, got, ok, want)
		}
	}
}

type countingIdentities struct {
	mu     sync.Mutex
	issued int
	now    time.Time
	ttl    time.Duration
}

func (c *countingIdentities) SVID(_ context.Context, id string) (SVID, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if id == "spiffe://cluster.local/ns/x/sa/broken" {
		return SVID{}, errors.New("signer down")
	}
	c.issued++
	return SVID{NotBefore: c.now.Add(-30 * time.Second), NotAfter: c.now.Add(c.ttl)}, nil
}

func (c *countingIdentities) TrustBundles() map[string][]byte { return nil }

// TestSVIDCache: an SVID is reused until identity.RenewTime (half of its
// life from issue), then re-issued; due lists those past it; a failed
// issue caches nothing.
func TestSVIDCache(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := t0
	src := &countingIdentities{now: t0, ttl: time.Hour}
	c := newSVIDCache(src, func() time.Time { return now })
	ctx := context.Background()
	const id = "spiffe://cluster.local/ns/shop/sa/web"
	for range 3 {
		if _, err := c.get(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if src.issued != 1 {
		t.Fatalf("issued %d, want 1", src.issued)
	}
	now = t0.Add(29 * time.Minute)
	if len(c.due()) != 0 {
		t.Fatalf("due before half-life: %v", c.due())
	}
	now = t0.Add(30 * time.Minute)
	if !c.due()[id] {
		t.Fatal("not due at half-life")
	}
	src.now = now
	if _, err := c.get(ctx, id); err != nil || src.issued != 2 {
		t.Fatalf("renewal: %v, issued %d", err, src.issued)
	}
	if len(c.due()) != 0 {
		t.Fatalf("due right after renewal: %v", c.due())
	}
	if _, err := c.get(ctx, "spiffe://cluster.local/ns/x/sa/broken"); err == nil {
		t.Fatal("a failed issue returned no error")
	}
}

// TestStatusBook: updates create and change a node's entry; reads are
// copies; prune keeps the newest disconnected nodes and every connected
// one.
func TestStatusBook(t *testing.T) {
	t.Parallel()
	b := newStatusBook()
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b.update("a/live", func(s *NodeStatus) { s.Connected = true; s.Resources = map[string]int{"Listener": 1} })
	for i, id := range []string{"a/old", "a/mid", "a/new"} {
		b.update(id, func(s *NodeStatus) { s.DisconnectedAt = t0.Add(time.Duration(i) * time.Minute) })
	}
	got, _ := b.get("a/live")
	got.Resources["Listener"] = 99
	if again, _ := b.get("a/live"); again.Resources["Listener"] != 1 {
		t.Fatal("a read shares the book's maps")
	}
	b.prune(2)
	var ids []string
	for _, s := range b.list() {
		ids = append(ids, s.NodeID)
	}
	if !slices.Equal(ids, []string{"a/live", "a/mid", "a/new"}) {
		t.Fatalf("after prune: %v", ids)
	}
}

// TestPolicyStore: set reports the scopes of the policies that changed
// (both versions of a changed one), keeps compiled RBAC of untouched
// namespaces, and drops it all when the root namespace's changed.
func TestPolicyStore(t *testing.T) {
	t.Parallel()
	doc := func(ns, name, app string) string {
		sel := ""
		if app != "" {
			sel = "\n  selector: {matchLabels: {app: " + app + "}}"
		}
		return "apiVersion: security.kordon.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: " + name + ", namespace: " + ns + "}\nspec:" + sel +
			"\n  action: ALLOW\n  rules: [{from: [{source: {principals: [cluster.local/ns/a/sa/x]}}]}]\n"
	}
	a1, b1 := doc("a", "p", "web"), doc("b", "p", "")
	ps := newPolicyStore(policy.DefaultRootNamespace, mustPolicies(t, a1+"---\n"+b1))
	opts := policy.CompileOptions{RootNamespace: policy.DefaultRootNamespace, TrustDomain: testTD}
	wa := &workload.Workload{Namespace: "a", Name: "w", Labels: map[string]string{"app": "web"}}
	wb := &workload.Workload{Namespace: "b", Name: "w", Labels: map[string]string{"app": "db"}}
	ca, cb := ps.load().compile(wa, opts), ps.load().compile(wb, opts)
	if ca.err != nil || cb.err != nil || ps.load().compile(wa, opts).c != ca.c {
		t.Fatal("compile results not cached")
	}

	// Namespace a's policy moves to another selector: both versions'
	// scopes, namespace b's compiled RBAC kept.
	changed := ps.set(mustPolicies(t, doc("a", "p", "api")+"---\n"+b1))
	var sels []string
	for _, sc := range changed {
		if sc.namespace != "a" || sc.whole {
			t.Fatalf("scope %+v", sc)
		}
		sels = append(sels, sc.sel.MatchLabels["app"])
	}
	sort.Strings(sels)
	if !slices.Equal(sels, []string{"api", "web"}) {
		t.Fatalf("changed selectors %v", sels)
	}
	if ps.load().compile(wb, opts).c != cb.c {
		t.Fatal("namespace b recompiled though its policies did not change")
	}
	if ps.load().compile(wa, opts).c == ca.c {
		t.Fatal("namespace a kept RBAC compiled from its old policy")
	}
	if len(ps.set(ps.load().policies)) != 0 {
		t.Fatal("the same set reported changes")
	}
	// A root-namespace policy: every namespace recompiles.
	changed = ps.set(mustPolicies(t, doc("a", "p", "api")+"---\n"+b1+"---\n"+doc(policy.DefaultRootNamespace, "mesh", "")))
	if len(changed) != 1 || !changed[0].whole || !changed[0].selects(policy.DefaultRootNamespace, "z", nil) {
		t.Fatalf("root change: %+v", changed)
	}
	if ps.load().compile(wb, opts).c == cb.c {
		t.Fatal("namespace b kept RBAC compiled before a mesh-wide policy")
	}
}

// TestServiceIndex: each service's endpoints follow the registry's
// changes and the service model, and sync reports the services whose
// endpoints a client would see change.
func TestServiceIndex(t *testing.T) {
	t.Parallel()
	reg := workload.NewRegistry()
	pod := func(name, app, ip string) *workload.Workload {
		return &workload.Workload{Namespace: "shop", Name: name, ServiceAccount: "sa", Labels: map[string]string{"app": app}, IPs: []netip.Addr{netip.MustParseAddr(ip)}}
	}
	reg.Upsert(pod("echo-0", "echo", "10.0.0.1"))
	svcs, err := checkServices([]Service{{Name: "echo", Namespace: "shop", Port: 8080, Selector: map[string]string{"app": "echo"}}})
	if err != nil {
		t.Fatal(err)
	}
	x := newServiceIndex(reg, svcs)
	echo := x.resolve("echo.shop:8080")
	keys := func() []string {
		var out []string
		for _, w := range x.endpoints(echo) {
			out = append(out, w.Key()+"="+w.IPs[0].String())
		}
		return out
	}
	if got := keys(); !slices.Equal(got, []string{"shop/echo-0=10.0.0.1"}) {
		t.Fatalf("initial endpoints %v", got)
	}
	reg.Upsert(pod("echo-1", "echo", "10.0.0.2"))
	reg.Upsert(pod("db-0", "db", "10.0.0.3"))
	ch := x.sync()
	if !ch.services["shop/echo"] || len(ch.services) != 1 || len(ch.pods) != 2 {
		t.Fatalf("sync: %+v", ch)
	}
	if got := keys(); !slices.Equal(got, []string{"shop/echo-0=10.0.0.1", "shop/echo-1=10.0.0.2"}) {
		t.Fatalf("endpoints %v", got)
	}
	// A change nothing a client sees (its node) reports no service.
	moved := pod("echo-1", "echo", "10.0.0.2")
	moved.Node = "n2"
	reg.Upsert(moved)
	if ch := x.sync(); len(ch.services) != 0 || len(ch.pods) != 1 {
		t.Fatalf("sync after a node move: %+v", ch)
	}
	// A new service finds its endpoints in the registry at once; the
	// changed one reports old and new version.
	changed := x.setServices(mustServices(t, []Service{
		{Name: "echo", Namespace: "shop", Port: 8080, Selector: map[string]string{"app": "db"}},
	}))
	if len(changed) != 2 {
		t.Fatalf("changed %d services, want the old and new echo", len(changed))
	}
	echo = x.resolve("echo.shop")
	if got := keys(); !slices.Equal(got, []string{"shop/db-0=10.0.0.3"}) {
		t.Fatalf("endpoints after the selector change %v", got)
	}
	reg.Delete("shop", "db-0")
	if ch := x.sync(); !ch.services["shop/echo"] || len(x.endpoints(echo)) != 0 {
		t.Fatalf("after delete: %+v, %d endpoints", ch, len(x.endpoints(echo)))
	}
}

func mustServices(t *testing.T, in []Service) []*Service {
	t.Helper()
	out, err := checkServices(in)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestMemoAndClusterCache: a rebuild reuses a resource whose key did not
// change (same object, hash known) and rebuilds one whose key did; a
// cluster is shared by its dialers until its endpoint slice changes.
func TestMemoAndClusterCache(t *testing.T) {
	t.Parallel()
	m1 := newMemo(nil)
	r1 := m1.res("L/a", "k1", func() types.Resource { return clientListener("a") })
	sum, err := resourceSum(resourcev3.ListenerType, r1)
	if err != nil {
		t.Fatal(err)
	}
	m1.learn(r1, sum)
	m2 := newMemo(m1)
	if r := m2.res("L/a", "k1", func() types.Resource { t.Fatal("rebuilt an unchanged resource"); return nil }); r != r1 {
		t.Fatal("not the same object")
	}
	if s, ok := m2.sum(r1); !ok || s != sum {
		t.Fatal("hash of a reused resource unknown")
	}
	if r := m2.res("L/b", "k1", func() types.Resource { return clientListener("b") }); r == r1 {
		t.Fatal("another id reused a resource")
	}
	m3 := newMemo(m2)
	if r := m3.res("L/a", "k2", func() types.Resource { return clientListener("a") }); r == r1 {
		t.Fatal("a changed key reused the old resource")
	}

	cc := newClusterCache()
	s := &Service{Name: "echo", Namespace: "shop", Port: 8080}
	eps := []*workload.Workload{{Namespace: "shop", Name: "e", ServiceAccount: "sa", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}}}
	o := buildOptions{trustDomain: testTD, certProvider: DefaultCertProviderInstance}
	c1, l1, err := cc.get(clusterName(s), s, eps, o, newMemo(nil))
	if err != nil {
		t.Fatal(err)
	}
	c2, l2, _ := cc.get(clusterName(s), s, eps, o, newMemo(nil))
	if c1 != c2 || l1 != l2 {
		t.Fatal("a second dialer got its own cluster")
	}
	c3, _, _ := cc.get(clusterName(s), s, slices.Clone(eps), o, newMemo(nil))
	if c3 == c1 {
		t.Fatal("new endpoints reused the old cluster")
	}
}

// TestConsistencySkippedOnlyForTheSameShape: a rebuild whose Listeners,
// Cluster EDS names and route and assignment names are those of a
// snapshot that passed Snapshot.Consistent skips the check; one that drops
// the route a Listener names is checked and refused.
func TestConsistencySkippedOnlyForTheSameShape(t *testing.T) {
	t.Parallel()
	l := clientListener("echo.shop:8080")
	route := clientRoute("echo.shop:8080", "c")
	version := func(string) string { return "v" }
	m := newMemo(nil)
	if _, _, _, err := makeSnapshot(resources{resourcev3.ListenerType: {l}, resourcev3.RouteType: {route}}, m, version); err != nil {
		t.Fatal(err)
	}
	if m.shape == "" {
		t.Fatal("a passed check recorded no shape")
	}
	next := newMemo(m)
	if !next.passed(consistencyShape(resources{resourcev3.ListenerType: {l}, resourcev3.RouteType: {route}})) {
		t.Fatal("the same shape is not known as passed")
	}
	if _, _, _, err := makeSnapshot(resources{resourcev3.ListenerType: {l}}, next, version); err == nil {
		t.Fatal("a Listener naming a missing route passed")
	}
}
