// Package workload is the registry every kordon component asks "who is
// this?": by IP (dnsguard), by pod (identity, xds). A workload is one pod
// (or, in dev mode, one entry of workloads.yaml) with its namespace, service
// account, labels, node and IPs.
//
// Sources fill the registry: a YAML file (this package) or the Kubernetes
// API (internal/kube). Readers never block writers for long: lookups read an
// immutable index swapped atomically on every change.
package workload

import (
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
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

// SPIFFEID is spiffe://<trustDomain>/ns/<namespace>/sa/<serviceAccount>.
func (w *Workload) SPIFFEID(trustDomain string) string {
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, w.Namespace, w.ServiceAccount)
}

// index is an immutable view of the registry.
type index struct {
	byKey map[string]*Workload
	byIP  map[netip.Addr]*Workload
	byUID map[string]*Workload
	// version increases on every change.
	version uint64
}

// Registry holds the current workloads. The zero value is not usable; call
// NewRegistry. All methods are safe for concurrent use.
type Registry struct {
	mu   sync.Mutex // serialises writers
	idx  atomic.Pointer[index]
	subs map[chan struct{}]struct{}
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	r := &Registry{subs: map[chan struct{}]struct{}{}}
	r.idx.Store(buildIndex(nil, 0))
	return r
}

func buildIndex(ws map[string]*Workload, version uint64) *index {
	ix := &index{byKey: map[string]*Workload{}, byIP: map[netip.Addr]*Workload{}, byUID: map[string]*Workload{}, version: version}
	// Deterministic: when two workloads claim one IP (a stale pod and its
	// replacement), the one whose key sorts first wins, so every replica
	// attributes the same way.
	keys := make([]string, 0, len(ws))
	for k := range ws {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		w := ws[k]
		ix.byKey[k] = w
		for _, ip := range w.IPs {
			if _, taken := ix.byIP[ip]; !taken {
				ix.byIP[ip.Unmap()] = w
			}
		}
		if w.UID != "" {
			ix.byUID[w.UID] = w
		}
	}
	return ix
}

// ByIP returns the workload that owns ip.
func (r *Registry) ByIP(ip netip.Addr) (*Workload, bool) {
	w, ok := r.idx.Load().byIP[ip.Unmap()]
	return w, ok
}

// ByPod returns the workload namespace/name.
func (r *Registry) ByPod(namespace, name string) (*Workload, bool) {
	w, ok := r.idx.Load().byKey[namespace+"/"+name]
	return w, ok
}

// ByUID returns the workload with pod UID uid.
func (r *Registry) ByUID(uid string) (*Workload, bool) {
	w, ok := r.idx.Load().byUID[uid]
	return w, ok
}

// List returns every workload sorted by namespace/name.
func (r *Registry) List() []*Workload {
	ix := r.idx.Load()
	out := make([]*Workload, 0, len(ix.byKey))
	for _, w := range ix.byKey {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// Version increases by one on every change; readers use it to detect
// changes cheaply.
func (r *Registry) Version() uint64 { return r.idx.Load().version }

// Replace swaps the whole content (a file source reloading).
func (r *Registry) Replace(ws []*Workload) {
	m := make(map[string]*Workload, len(ws))
	for _, w := range ws {
		m[w.Key()] = w
	}
	r.mu.Lock()
	r.idx.Store(buildIndex(m, r.idx.Load().version+1))
	r.mu.Unlock()
	r.notify()
}

// Upsert adds or replaces one workload. Callers must not modify w afterwards.
func (r *Registry) Upsert(w *Workload) {
	r.mu.Lock()
	old := r.idx.Load()
	m := make(map[string]*Workload, len(old.byKey)+1)
	for k, v := range old.byKey {
		m[k] = v
	}
	m[w.Key()] = w
	r.idx.Store(buildIndex(m, old.version+1))
	r.mu.Unlock()
	r.notify()
}

// Delete removes namespace/name; it reports whether it was present.
func (r *Registry) Delete(namespace, name string) bool {
	key := namespace + "/" + name
	r.mu.Lock()
	old := r.idx.Load()
	if _, ok := old.byKey[key]; !ok {
		r.mu.Unlock()
		return false
	}
	m := make(map[string]*Workload, len(old.byKey))
	for k, v := range old.byKey {
		if k != key {
			m[k] = v
		}
	}
	r.idx.Store(buildIndex(m, old.version+1))
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
