package workload

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
)

func wl(key string, uid string, ips ...string) *Workload {
	ns, name, _ := cut(key)
	w := &Workload{Namespace: ns, Name: name, ServiceAccount: "default", UID: uid}
	for _, s := range ips {
		w.IPs = append(w.IPs, netip.MustParseAddr(s))
	}
	return w
}

func cut(key string) (string, string, bool) { return strings.Cut(key, "/") }

func keyOf(w *Workload, ok bool) string {
	if !ok {
		return "<none>"
	}
	return w.Key()
}

// TestByIPTieBreak: when two workloads claim one address, in any of its
// forms, the one whose key sorts first owns it whatever the order of
// events, and the address passes to the next claimant when the owner
// goes.
func TestByIPTieBreak(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		upserts []*Workload
		lookup  []string // every form must give want
		want    string
	}{
		{
			name:    "first key wins, added first",
			upserts: []*Workload{wl("a/old", "", "10.0.0.1"), wl("b/new", "", "10.0.0.1")},
			lookup:  []string{"10.0.0.1", "::ffff:10.0.0.1"},
			want:    "a/old",
		},
		{
			name:    "first key wins, added last",
			upserts: []*Workload{wl("b/new", "", "10.0.0.1"), wl("a/old", "", "10.0.0.1")},
			lookup:  []string{"10.0.0.1", "::ffff:10.0.0.1"},
			want:    "a/old",
		},
		{
			// The bug fixed: the index was checked for the mapped form but
			// written unmapped, so the later key took the address.
			name:    "later key lists the mapped form",
			upserts: []*Workload{wl("a/old", "", "10.0.0.1"), wl("b/new", "", "::ffff:10.0.0.1")},
			lookup:  []string{"10.0.0.1", "::ffff:10.0.0.1"},
			want:    "a/old",
		},
		{
			name:    "first key lists the mapped form",
			upserts: []*Workload{wl("b/new", "", "10.0.0.1"), wl("a/old", "", "::ffff:10.0.0.1")},
			lookup:  []string{"10.0.0.1", "::ffff:10.0.0.1"},
			want:    "a/old",
		},
		{
			name:    "one workload lists both forms",
			upserts: []*Workload{wl("b/new", "", "::ffff:10.0.0.1", "10.0.0.1")},
			lookup:  []string{"10.0.0.1", "::ffff:10.0.0.1"},
			want:    "b/new",
		},
		{
			name:    "key order, not namespace then name",
			upserts: []*Workload{wl("a/x", "", "10.0.0.1"), wl("a-b/x", "", "10.0.0.1")},
			lookup:  []string{"10.0.0.1"},
			want:    "a-b/x", // "a-b/x" < "a/x": '-' sorts before '/'
		},
		{
			name:    "IPv6 is not folded into IPv4",
			upserts: []*Workload{wl("a/v4", "", "10.0.0.1"), wl("b/v6", "", "64:ff9b::a00:1")},
			lookup:  []string{"64:ff9b::a00:1"},
			want:    "b/v6",
		},
		{
			name:    "unknown address",
			upserts: []*Workload{wl("a/x", "", "10.0.0.1")},
			lookup:  []string{"10.0.0.2", "::ffff:10.0.0.2"},
			want:    "<none>",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := NewRegistry()
			for _, w := range tt.upserts {
				r.Upsert(w)
			}
			for _, s := range tt.lookup {
				if got := keyOf(r.ByIP(netip.MustParseAddr(s))); got != tt.want {
					t.Errorf("ByIP(%s) = %s, want %s", s, got, tt.want)
				}
			}
			// Replace attributes as the events did.
			r2 := NewRegistry()
			r2.Replace(tt.upserts)
			for _, s := range tt.lookup {
				if got := keyOf(r2.ByIP(netip.MustParseAddr(s))); got != tt.want {
					t.Errorf("after Replace: ByIP(%s) = %s, want %s", s, got, tt.want)
				}
			}
		})
	}
}

// TestOwnerLeaves: deleting or moving the owner of a shared address or UID
// hands it to the next claimant; the last one leaving frees it.
func TestOwnerLeaves(t *testing.T) {
	t.Parallel()
	ip := netip.MustParseAddr("10.0.0.1")
	r := NewRegistry()
	r.Upsert(wl("ns/c", "u1", "10.0.0.1"))
	r.Upsert(wl("ns/a", "u1", "::ffff:10.0.0.1"))
	r.Upsert(wl("ns/b", "u1", "10.0.0.1"))
	steps := []struct {
		name     string
		do       func()
		wantIP   string
		wantUID  string
		wantList []string
	}{
		{"all three", func() {}, "ns/a", "ns/a", []string{"ns/a", "ns/b", "ns/c"}},
		{"owner deleted", func() { r.Delete("ns", "a") }, "ns/b", "ns/b", []string{"ns/b", "ns/c"}},
		{"owner moves away", func() { r.Upsert(wl("ns/b", "u2", "10.0.0.2")) }, "ns/c", "ns/c", []string{"ns/b", "ns/c"}},
		{"moved back", func() { r.Upsert(wl("ns/b", "u1", "10.0.0.1")) }, "ns/b", "ns/b", []string{"ns/b", "ns/c"}},
		{"last claimants deleted", func() { r.Delete("ns", "b"); r.Delete("ns", "c") }, "<none>", "<none>", nil},
	}
	for _, s := range steps {
		s.do()
		if got := keyOf(r.ByIP(ip)); got != s.wantIP {
			t.Errorf("%s: ByIP = %s, want %s", s.name, got, s.wantIP)
		}
		if got := keyOf(r.ByUID("u1")); got != s.wantUID {
			t.Errorf("%s: ByUID = %s, want %s", s.name, got, s.wantUID)
		}
		var keys []string
		for _, w := range r.List() {
			keys = append(keys, w.Key())
		}
		if !slices.Equal(keys, s.wantList) {
			t.Errorf("%s: List = %v, want %v", s.name, keys, s.wantList)
		}
	}
}

// TestVersion: every mutation moves Version and signals subscribers
// (coalesced); a Delete of an absent workload is no mutation.
func TestVersion(t *testing.T) {
	t.Parallel()
	r := NewRegistry()
	ch, stop := r.Subscribe()
	defer stop()
	v := r.Version()
	steps := []struct {
		name    string
		do      func()
		changed bool
	}{
		{"upsert new", func() { r.Upsert(wl("ns/a", "", "10.0.0.1")) }, true},
		{"upsert same content", func() { r.Upsert(wl("ns/a", "", "10.0.0.1")) }, true},
		{"delete", func() { r.Delete("ns", "a") }, true},
		{"delete absent", func() { r.Delete("ns", "a") }, false},
		{"replace", func() { r.Replace([]*Workload{wl("ns/b", "")}) }, true},
		{"replace empty", func() { r.Replace(nil) }, true},
	}
	for _, s := range steps {
		s.do()
		nv := r.Version()
		if s.changed && nv != v+1 || !s.changed && nv != v {
			t.Errorf("%s: Version %d -> %d", s.name, v, nv)
		}
		select {
		case <-ch:
			if !s.changed {
				t.Errorf("%s: signalled without a change", s.name)
			}
		default:
			if s.changed {
				t.Errorf("%s: no signal", s.name)
			}
		}
		v = nv
	}
}

// TestListIsCallers: List returns a fresh slice each call, in key order.
func TestListIsCallers(t *testing.T) {
	t.Parallel()
	r := NewRegistry()
	r.Replace([]*Workload{wl("b/x", ""), wl("a/y", ""), wl("a-b/z", "")})
	l := r.List()
	want := []string{"a-b/z", "a/y", "b/x"}
	for i, w := range l {
		if w.Key() != want[i] {
			t.Fatalf("List[%d] = %s, want %s", i, w.Key(), want[i])
		}
	}
	l[0], l[1] = l[1], nil
	if got := r.List(); got[0].Key() != "a-b/z" || got[1] == nil {
		t.Errorf("List shares its slice with an earlier caller")
	}
}

// model is the registry's specification: the workloads by key, every
// lookup answered by scanning them.
type model map[string]*Workload

func (m model) byIP(ip netip.Addr) (*Workload, bool) {
	ip = ip.Unmap()
	var best *Workload
	for k, w := range m {
		for _, a := range w.IPs {
			if a.Unmap() == ip && (best == nil || k < best.Key()) {
				best = w
			}
		}
	}
	return best, best != nil
}

func (m model) byUID(uid string) (*Workload, bool) {
	var best *Workload
	for k, w := range m {
		if w.UID == uid && (best == nil || k < best.Key()) {
			best = w
		}
	}
	return best, best != nil
}

// TestRegistryMatchesModel runs random events (few keys, few addresses in
// both forms, shared UIDs, so that claims collide often) and checks every
// lookup against the model after each.
func TestRegistryMatchesModel(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(14, 5))
	var ips []netip.Addr
	for i := range 12 {
		v4 := netip.AddrFrom4([4]byte{10, 0, 0, byte(i)})
		ips = append(ips, v4, netip.AddrFrom16(v4.As16()))
	}
	ips = append(ips, netip.MustParseAddr("fd00::1"), netip.MustParseAddr("fd00::2"))
	uids := []string{"", "u1", "u2", "u3"}
	keys := []string{"a/p", "a/q", "a-b/p", "b/p", "b/q", "c/r", "c/s", "d/t"}
	randomWorkload := func() *Workload {
		ns, name, _ := cut(keys[rng.IntN(len(keys))])
		w := &Workload{Namespace: ns, Name: name, UID: uids[rng.IntN(len(uids))]}
		for range rng.IntN(4) {
			w.IPs = append(w.IPs, ips[rng.IntN(len(ips))])
		}
		return w
	}
	r := NewRegistry()
	m := model{}
	for step := range 5000 {
		v := r.Version()
		switch op := rng.IntN(20); {
		case op == 0:
			var ws []*Workload
			m = model{}
			for range rng.IntN(6) {
				w := randomWorkload()
				ws = append(ws, w)
				m[w.Key()] = w
			}
			r.Replace(ws)
		case op < 8:
			ns, name, _ := cut(keys[rng.IntN(len(keys))])
			_, had := m[ns+"/"+name]
			if got := r.Delete(ns, name); got != had {
				t.Fatalf("step %d: Delete(%s/%s) = %v, want %v", step, ns, name, got, had)
			}
			delete(m, ns+"/"+name)
			if !had && r.Version() != v {
				t.Fatalf("step %d: Delete of an absent workload moved Version", step)
			}
		default:
			w := randomWorkload()
			r.Upsert(w)
			m[w.Key()] = w
		}
		for _, ip := range ips {
			want, wantOK := m.byIP(ip)
			if got, ok := r.ByIP(ip); got != want || ok != wantOK {
				t.Fatalf("step %d: ByIP(%s) = %s, want %s", step, ip, keyOf(got, ok), keyOf(want, wantOK))
			}
		}
		for _, uid := range uids[1:] {
			want, wantOK := m.byUID(uid)
			if got, ok := r.ByUID(uid); got != want || ok != wantOK {
				t.Fatalf("step %d: ByUID(%s) = %s, want %s", step, uid, keyOf(got, ok), keyOf(want, wantOK))
			}
		}
		for _, k := range keys {
			ns, name, _ := cut(k)
			want, wantOK := m[k]
			if got, ok := r.ByPod(ns, name); got != want || ok != wantOK {
				t.Fatalf("step %d: ByPod(%s) = %s, want %s", step, k, keyOf(got, ok), keyOf(want, wantOK))
			}
		}
		list := r.List()
		if len(list) != len(m) || !slices.IsSortedFunc(list, func(a, b *Workload) int { return strings.Compare(a.Key(), b.Key()) }) {
			t.Fatalf("step %d: List has %d workloads (want %d) or is out of order", step, len(list), len(m))
		}
		for _, w := range list {
			if m[w.Key()] != w {
				t.Fatalf("step %d: List holds %s, not the model's", step, w.Key())
			}
		}
	}
}

// TestConcurrentReaders: lookups during writes see whole workloads from
// some version (run with -race).
func TestConcurrentReaders(t *testing.T) {
	t.Parallel()
	r := NewRegistry()
	r.Replace(benchPods(2000))
	var wg sync.WaitGroup
	done := make(chan struct{})
	for g := range 4 {
		wg.Go(func() {
			for i := g; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				p := benchPod(i%2000, 0)
				if w, ok := r.ByIP(p.IPs[0]); ok && w.Namespace != p.Namespace {
					t.Errorf("ByIP(%s) = %s", p.IPs[0], w.Key())
					return
				}
				_ = r.Version()
				if i%500 == 0 {
					_ = r.List()
				}
			}
		})
	}
	for i := range 5000 {
		p := benchPod(i%2000, 0)
		if i%2 == 0 {
			r.Delete(p.Namespace, p.Name)
		} else {
			r.Upsert(p)
		}
	}
	close(done)
	wg.Wait()
}

// TestTrie checks the persistent trie against a map, with a hash of 8
// bits so that full-hash collisions (collision nodes) and deep paths are
// common, and checks that an old version is unchanged by later ones.
func TestTrie(t *testing.T) {
	t.Parallel()
	for _, hashBits := range []uint{8, 64} {
		t.Run(fmt.Sprintf("hash-bits=%d", hashBits), func(t *testing.T) {
			t.Parallel()
			h := newHasher()
			hash := func(k string) uint64 {
				x := h.string(k)
				if hashBits < 64 {
					// Keep the top bits so keys collide at the last level.
					x &= ^uint64(0) << (64 - hashBits)
				}
				return x
			}
			rng := rand.New(rand.NewPCG(uint64(hashBits), 1))
			var tr trie[string, int]
			m := map[string]int{}
			var snap trie[string, int]
			var snapM map[string]int
			for step := range 20000 {
				k := fmt.Sprint(rng.IntN(600))
				if rng.IntN(3) == 0 {
					tr = tr.del(hash(k), k)
					delete(m, k)
				} else {
					tr = tr.put(hash(k), k, step)
					m[k] = step
				}
				if step == 10000 {
					snap, snapM = tr, maps.Clone(m)
				}
				if tr.len != len(m) {
					t.Fatalf("step %d: len %d, want %d", step, tr.len, len(m))
				}
				want, wantOK := m[k]
				if v, ok := tr.get(hash(k), k); ok != wantOK || v != want {
					t.Fatalf("step %d: get(%s) = %d, %v; want %d, %v", step, k, v, ok, want, wantOK)
				}
			}
			check := func(name string, tr trie[string, int], m map[string]int) {
				n := 0
				tr.each(func(k string, v int) {
					n++
					if want, ok := m[k]; !ok || want != v {
						t.Errorf("%s: each gave %s=%d, want %d (present %v)", name, k, v, want, ok)
					}
				})
				if n != len(m) {
					t.Errorf("%s: each gave %d entries, want %d", name, n, len(m))
				}
				for k, v := range m {
					if got, ok := tr.get(hash(k), k); !ok || got != v {
						t.Errorf("%s: get(%s) = %d, %v; want %d", name, k, got, ok, v)
					}
				}
			}
			check("latest", tr, m)
			check("snapshot", snap, snapM)
			for k := range m {
				tr = tr.del(hash(k), k)
			}
			if tr.root.entries != nil || tr.root.kids != nil || tr.len != 0 {
				t.Errorf("emptied trie: %d root entries and children, len %d", len(tr.root.ents(0))+len(tr.root.kidArray()), tr.len)
			}
		})
	}
}

// TestWorkloadEqual: every field counts, and nil equals only nil.
func TestWorkloadEqual(t *testing.T) {
	t.Parallel()
	base := func() *Workload {
		return &Workload{Name: "a", Namespace: "ns", ServiceAccount: "sa", Labels: map[string]string{"app": "a"},
			IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}, Node: "n", UID: "u"}
	}
	tests := []struct {
		name   string
		change func(w *Workload)
	}{
		{name: "name", change: func(w *Workload) { w.Name = "b" }},
		{name: "namespace", change: func(w *Workload) { w.Namespace = "other" }},
		{name: "service-account", change: func(w *Workload) { w.ServiceAccount = "other" }},
		{name: "label", change: func(w *Workload) { w.Labels["app"] = "b" }},
		{name: "ip", change: func(w *Workload) { w.IPs = []netip.Addr{netip.MustParseAddr("10.0.0.2")} }},
		{name: "node", change: func(w *Workload) { w.Node = "m" }},
		{name: "uid", change: func(w *Workload) { w.UID = "v" }},
	}
	if !base().Equal(base()) {
		t.Fatal("equal workloads differ")
	}
	for _, tt := range tests {
		w := base()
		tt.change(w)
		if base().Equal(w) || w.Equal(base()) {
			t.Errorf("%s: a changed workload is equal", tt.name)
		}
	}
	var none *Workload
	if !none.Equal(nil) || none.Equal(base()) || base().Equal(nil) {
		t.Error("nil handling")
	}
}

// TestChangesMatchesModel: Changes between any two versions reports
// exactly the keys whose workload differs between them, with the old and
// new values, whatever the shape the tries took.
func TestChangesMatchesModel(t *testing.T) {
	t.Parallel()
	for seed := range uint64(20) {
		rng := rand.New(rand.NewPCG(seed, 3))
		r := NewRegistry()
		var cur Cursor
		before := map[string]*Workload{}
		n := 1 + rng.IntN(300)
		for round := range 60 {
			for range rng.IntN(n/3 + 2) {
				k := fmt.Sprintf("ns-%d/p-%d", rng.IntN(5), rng.IntN(n))
				switch rng.IntN(3) {
				case 0:
					ns, name, _ := cut(k)
					r.Delete(ns, name)
				default:
					w := wl(k, "", fmt.Sprintf("10.0.%d.%d", rng.IntN(4), rng.IntN(250)))
					w.Labels = map[string]string{"v": fmt.Sprint(rng.IntN(3))}
					r.Upsert(w)
				}
			}
			if rng.IntN(10) == 0 {
				// Replace builds an index sharing nothing with the last.
				r.Replace(r.List())
			}
			now := map[string]*Workload{}
			for _, w := range r.List() {
				now[w.Key()] = w
			}
			want := map[string][2]*Workload{}
			for k, w := range now {
				if o := before[k]; !o.Equal(w) {
					want[k] = [2]*Workload{o, w}
				}
			}
			for k, o := range before {
				if now[k] == nil {
					want[k] = [2]*Workload{o, nil}
				}
			}
			got := map[string][2]*Workload{}
			cur = r.Changes(cur, func(old, nu *Workload) {
				w := nu
				if w == nil {
					w = old
				}
				if _, dup := got[w.Key()]; dup {
					t.Fatalf("seed %d round %d: %s reported twice", seed, round, w.Key())
				}
				got[w.Key()] = [2]*Workload{old, nu}
			})
			if len(got) != len(want) {
				t.Fatalf("seed %d round %d: %d changes, want %d", seed, round, len(got), len(want))
			}
			for k, g := range got {
				if w, ok := want[k]; !ok || !g[0].Equal(w[0]) || !g[1].Equal(w[1]) {
					t.Fatalf("seed %d round %d: change of %s is %v, want %v", seed, round, k, g, w)
				}
			}
			if cur.Version() != r.Version() {
				t.Fatalf("cursor at %d, registry at %d", cur.Version(), r.Version())
			}
			before = now
		}
	}
}

// TestWorkloadID: IDs come from go-spiffe; what cannot be one is refused
// and renders as "", which matches no principal.
func TestWorkloadID(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, td, ns, sa string
		want, err        string
	}{
		{name: "workload", td: "cluster.local", ns: "shop", sa: "frontend", want: "spiffe://cluster.local/ns/shop/sa/frontend"},
		{name: "bad trust domain", td: "Cluster.Local", ns: "shop", sa: "frontend",
			err: "workload shop/w: trust domain characters are limited to lowercase letters, numbers, dots, dashes, and underscores"},
		{name: "slash in service account", td: "cluster.local", ns: "shop", sa: "a/b",
			err: "workload shop/w: path segment characters are limited to letters, numbers, dots, dashes, and underscores"},
		{name: "empty service account", td: "cluster.local", ns: "shop", sa: "",
			err: "workload shop/w: path cannot contain empty segments"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := &Workload{Namespace: tc.ns, Name: "w", ServiceAccount: tc.sa}
			id, err := w.ID(tc.td)
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("error %v, want %s", err, tc.err)
				}
				if s := w.SPIFFEID(tc.td); s != "" {
					t.Fatalf("SPIFFEID %q, want empty", s)
				}
				return
			}
			if err != nil || id.String() != tc.want || w.SPIFFEID(tc.td) != tc.want {
				t.Fatalf("got %v, %v; want %s", id, err, tc.want)
			}
		})
	}
}
