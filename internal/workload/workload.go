// Package workload is the registry every kordon component asks "who is
// this?": by IP (dnsguard), by pod (identity, xds). A workload is one pod
// (or, in dev mode, one entry of workloads.yaml) with its namespace, service
// account, labels, node and IPs.
//
// Sources fill the registry: a YAML file (this package) or the Kubernetes
// API (internal/kube). Lookups take no lock: they read an immutable index
// swapped atomically on every change. A change builds the next index from
// the last with persistent hash tries (O(log n) a pod event) rather than
// rebuilding it. Consumers that derive state from the registry (xDS's
// endpoint index) ask Changes for what changed since their last Cursor,
// in O(changes).
package workload

import (
	"encoding/binary"
	"fmt"
	"hash/maphash"
	"maps"
	"math/bits"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Workload is one pod or dev-mode workload.
type Workload struct {
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"serviceAccount"`
	Labels         map[string]string `json:"labels,omitempty"`
	IPs            []netip.Addr      `json:"ips,omitempty"`
	// Node is the node the workload is scheduled on (spec.nodeName).
	Node string `json:"node,omitempty"`
	// UID is the pod UID, used by attestation (cgroup paths carry it).
	UID string `json:"uid,omitempty"`
}

// Key is namespace/name.
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// Equal reports whether w and o (either may be nil: no workload) hold the
// same fields.
func (w *Workload) Equal(o *Workload) bool {
	if w == nil || o == nil {
		return w == o
	}
	return w.Name == o.Name && w.Namespace == o.Namespace && w.ServiceAccount == o.ServiceAccount &&
		w.Node == o.Node && w.UID == o.UID && maps.Equal(w.Labels, o.Labels) && slices.Equal(w.IPs, o.IPs)
}

// ID is the workload's SPIFFE ID,
// spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>, built by
// go-spiffe, which refuses a trust domain or segment that is not valid.
func (w *Workload) ID(trustDomain string) (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload %s: %w", w.Key(), err)
	}
	id, err := spiffeid.FromSegments(td, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("workload %s: %w", w.Key(), err)
	}
	return id, nil
}

// SPIFFEID is ID as a string, or "" when the trust domain, namespace or
// service account cannot be part of a SPIFFE ID: an empty ID matches no
// principal and no certificate, so such a workload is never mistaken for
// another.
func (w *Workload) SPIFFEID(trustDomain string) string {
	id, err := w.ID(trustDomain)
	if err != nil {
		return ""
	}
	return id.String()
}

// index is an immutable view of the registry. Each change makes a new one
// from the last by persistent updates (see trie), so a pod event costs
// O(log n) and readers of an older index are not disturbed.
type index struct {
	byKey trie[string, *Workload]
	// byIP and byUID keep every claimant of an address or UID: the owner
	// is the claimant whose key sorts first, so the attribution depends
	// only on the set of workloads, not on the order events arrived in.
	byIP  trie[netip.Addr, claims]
	byUID trie[string, claims]
	// version increases on every change.
	version uint64

	sortOnce sync.Once
	sorted   []*Workload // by key, built on the first List of this index
}

// claims are the workloads that claim one address (or UID): owner, the
// one whose key sorts first, and the others in key order (almost always
// none: a stale pod and its replacement overlap briefly; a pointer, so
// that an entry of the address index fits a cache line).
type claims struct {
	owner *Workload
	rest  *[]*Workload
}

func (c claims) all() []*Workload {
	if c.owner == nil {
		return nil
	}
	out := []*Workload{c.owner}
	if c.rest != nil {
		out = append(out, *c.rest...)
	}
	return out
}

func claimsOf(ws []*Workload) claims {
	switch len(ws) {
	case 0:
		return claims{}
	case 1:
		return claims{owner: ws[0]}
	}
	rest := ws[1:]
	return claims{owner: ws[0], rest: &rest}
}

// update returns c without old and with w (key k), either nil.
func (c claims) update(old, w *Workload, k string) claims {
	if c.rest == nil && (c.owner == nil || c.owner == old) {
		return claims{owner: w} // the common case: one claimant
	}
	ws := slices.DeleteFunc(c.all(), func(x *Workload) bool { return x == old })
	if w != nil {
		i := sort.Search(len(ws), func(i int) bool { return ws[i].Key() > k })
		ws = slices.Insert(ws, i, w)
	}
	return claimsOf(ws)
}

// hasher hashes the registry's keys with seeds drawn once per registry, so
// which names or addresses share a trie path cannot be chosen from
// outside.
type hasher struct {
	str      maphash.Seed
	ip0, ip1 uint64
	ip2      uint64
}

func newHasher() hasher {
	return hasher{str: maphash.MakeSeed(), ip0: rand.Uint64(), ip1: rand.Uint64(), ip2: rand.Uint64() | 1}
}

func (h *hasher) string(s string) uint64 { return maphash.String(h.str, s) }

// addr hashes an address by its 16 bytes (a zone only changes equality):
// two rounds of the multiply-fold mixer of wyhash, a few ns where
// maphash.Bytes takes about three times as long.
func (h *hasher) addr(ip netip.Addr) uint64 {
	b := ip.As16()
	hi, lo := bits.Mul64(binary.LittleEndian.Uint64(b[:8])^h.ip0, binary.LittleEndian.Uint64(b[8:])^h.ip1)
	hi, lo = bits.Mul64(hi^lo, h.ip2)
	return hi ^ lo
}

// Registry holds the current workloads. The zero value is not usable; call
// NewRegistry. All methods are safe for concurrent use; lookups take no
// lock.
type Registry struct {
	mu   sync.Mutex // serialises writers
	idx  atomic.Pointer[index]
	subs map[chan struct{}]struct{}
	hash hasher
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	r := &Registry{subs: map[chan struct{}]struct{}{}, hash: newHasher()}
	r.idx.Store(&index{})
	return r
}

// next returns a copy of ix's indexes for the next version.
func (ix *index) next() *index {
	return &index{byKey: ix.byKey, byIP: ix.byIP, byUID: ix.byUID, version: ix.version + 1}
}

// change replaces old by w under key k in ix (either may be nil): one
// persistent update per index entry they touch, an entry both touch
// updated once.
func (r *Registry) change(ix *index, k string, old, w *Workload) {
	if w != nil {
		ix.byKey = ix.byKey.put(r.hash.string(k), k, w)
	} else {
		ix.byKey = ix.byKey.del(r.hash.string(k), k)
	}
	var oldIPs, newIPs []netip.Addr
	if old != nil {
		oldIPs = old.IPs
	}
	if w != nil {
		newIPs = w.IPs
	}
	claim := func(ip netip.Addr, inOld, inNew bool) {
		ix.byIP = reclaim(ix.byIP, r.hash.addr(ip), ip, pick(inOld, old), pick(inNew, w), k)
	}
	// Addresses are indexed unmapped, as ByIP looks them up; a workload
	// listing one address in both forms claims it once.
	for i, ip := range oldIPs {
		if ip = ip.Unmap(); !claimedBefore(oldIPs[:i], ip) {
			claim(ip, true, claimedBefore(newIPs, ip))
		}
	}
	for i, ip := range newIPs {
		if ip = ip.Unmap(); !claimedBefore(newIPs[:i], ip) && !claimedBefore(oldIPs, ip) {
			claim(ip, false, true)
		}
	}
	oldUID, newUID := "", ""
	if old != nil {
		oldUID = old.UID
	}
	if w != nil {
		newUID = w.UID
	}
	uid := func(u string, inOld, inNew bool) {
		ix.byUID = reclaim(ix.byUID, r.hash.string(u), u, pick(inOld, old), pick(inNew, w), k)
	}
	if oldUID != "" {
		uid(oldUID, true, oldUID == newUID)
	}
	if newUID != "" && newUID != oldUID {
		uid(newUID, false, true)
	}
}

// reclaim returns t with the claims on key (hash h) updated: old's
// dropped, w's (key k) added, either nil.
func reclaim[K comparable](t trie[K, claims], h uint64, key K, old, w *Workload, k string) trie[K, claims] {
	c, _ := t.get(h, key)
	if c = c.update(old, w, k); c.owner != nil {
		return t.put(h, key, c)
	}
	return t.del(h, key)
}

func pick(ok bool, w *Workload) *Workload {
	if ok {
		return w
	}
	return nil
}

func claimedBefore(ips []netip.Addr, ip netip.Addr) bool {
	for _, x := range ips {
		if x.Unmap() == ip {
			return true
		}
	}
	return false
}

// ByIP returns the workload that owns ip (IPv4-mapped IPv6 addresses are
// their IPv4 address). When several workloads claim ip (a stale pod and
// its replacement), the one whose key sorts first owns it, so every
// replica attributes the same way.
func (r *Registry) ByIP(ip netip.Addr) (*Workload, bool) {
	ip = ip.Unmap()
	c, ok := r.idx.Load().byIP.get(r.hash.addr(ip), ip)
	return c.owner, ok
}

// ByPod returns the workload namespace/name.
func (r *Registry) ByPod(namespace, name string) (*Workload, bool) {
	k := namespace + "/" + name
	return r.idx.Load().byKey.get(r.hash.string(k), k)
}

// ByUID returns the workload with pod UID uid (the first by key when
// several claim it).
func (r *Registry) ByUID(uid string) (*Workload, bool) {
	c, ok := r.idx.Load().byUID.get(r.hash.string(uid), uid)
	return c.owner, ok
}

// List returns every workload sorted by namespace/name. The slice is the
// caller's; the sort is done once per version.
func (r *Registry) List() []*Workload {
	ix := r.idx.Load()
	ix.sortOnce.Do(func() {
		type kw struct {
			k string
			w *Workload
		}
		all := make([]kw, 0, ix.byKey.len)
		ix.byKey.each(func(k string, w *Workload) { all = append(all, kw{k, w}) })
		slices.SortFunc(all, func(a, b kw) int { return strings.Compare(a.k, b.k) })
		ix.sorted = make([]*Workload, len(all))
		for i, e := range all {
			ix.sorted[i] = e.w
		}
	})
	return slices.Clone(ix.sorted)
}

// Version increases by one on every change; readers use it to detect
// changes cheaply.
func (r *Registry) Version() uint64 { return r.idx.Load().version }

// Replace swaps the whole content (a file source reloading). When ws
// holds one key twice, the last wins.
func (r *Registry) Replace(ws []*Workload) {
	r.mu.Lock()
	ix := &index{version: r.idx.Load().version + 1}
	for _, w := range ws {
		k := w.Key()
		old, _ := ix.byKey.get(r.hash.string(k), k)
		r.change(ix, k, old, w)
	}
	r.idx.Store(ix)
	r.mu.Unlock()
	r.notify()
}

// Upsert adds or replaces one workload. Callers must not modify w afterwards.
func (r *Registry) Upsert(w *Workload) {
	k := w.Key()
	r.mu.Lock()
	ix := r.idx.Load().next()
	old, _ := ix.byKey.get(r.hash.string(k), k)
	r.change(ix, k, old, w)
	r.idx.Store(ix)
	r.mu.Unlock()
	r.notify()
}

// Delete removes namespace/name; it reports whether it was present.
func (r *Registry) Delete(namespace, name string) bool {
	k := namespace + "/" + name
	r.mu.Lock()
	old := r.idx.Load()
	w, ok := old.byKey.get(r.hash.string(k), k)
	if !ok {
		r.mu.Unlock()
		return false
	}
	ix := old.next()
	r.change(ix, k, w, nil)
	r.idx.Store(ix)
	r.mu.Unlock()
	r.notify()
	return true
}

// Subscribe returns a channel that receives a value after changes
// (coalesced: one pending signal at most) and a function that stops it.
func (r *Registry) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	r.mu.Lock()
	r.subs[ch] = struct{}{}
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		delete(r.subs, ch)
		r.mu.Unlock()
	}
}

func (r *Registry) notify() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for ch := range r.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// A Cursor is a position in the registry's history (one immutable
// version of its index). The zero Cursor is the empty registry, before
// any change.
type Cursor struct{ ix *index }

// Version is the registry version at c (0 for the zero Cursor).
func (c Cursor) Version() uint64 {
	if c.ix == nil {
		return 0
	}
	return c.ix.version
}

// Cursor returns the current position.
func (r *Registry) Cursor() Cursor { return Cursor{r.idx.Load()} }

// Changes calls f(old, new) for every workload that differs between c
// and the current version: old is nil for one added, new nil for one
// removed. Workloads are the same when they are one pointer or Equal. The
// order is unspecified. It returns the current position, to pass to the
// next call.
//
// Consumers that keep derived state (xDS's endpoint index) use it to
// apply only what changed: the indexes share every subtree off the paths
// a change copied, and those are skipped by pointer, so a call costs
// O(changes * log n), not O(n). Holding an old Cursor keeps that
// version's index alive.
func (r *Registry) Changes(c Cursor, f func(old, new *Workload)) Cursor {
	cur := r.idx.Load()
	from := c.ix
	if from == nil {
		from = &index{}
	}
	if from != cur {
		diff(&from.byKey, &cur.byKey, func(a, b *Workload) bool { return a == b || a.Equal(b) },
			func(_ string, old *Workload, _ bool, nu *Workload, _ bool) { f(old, nu) })
	}
	return Cursor{cur}
}
