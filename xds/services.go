package xds

import (
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/kordon-dev/kordon/internal/workload"
)

// serviceIndex owns the service model and, per service, its endpoints
// (the registry's workloads it selects), kept up to date from the
// registry's changes (workload.Registry.Changes) rather than recomputed:
// a pod event touches the services of its namespace only, and a build
// reads a service's endpoints without scanning the registry.
type serviceIndex struct {
	reg *workload.Registry
	set atomic.Pointer[serviceSet]

	mu      sync.Mutex // guards cursor, members
	cursor  workload.Cursor
	members map[string]*endpointSet // by Service.Key
}

// serviceSet is one immutable version of the service model.
type serviceSet struct {
	all  []*Service // by key
	byNS map[string][]*Service
}

// endpointSet is the workloads a service selects. sorted is immutable
// once built and rebuilt (nil) after a change, so builds share it.
type endpointSet struct {
	byKey  map[string]*workload.Workload
	sorted []*workload.Workload
}

func newServiceSet(services []*Service) *serviceSet {
	ss := &serviceSet{all: services, byNS: map[string][]*Service{}}
	for _, s := range services {
		ss.byNS[s.Namespace] = append(ss.byNS[s.Namespace], s)
	}
	return ss
}

// newServiceIndex indexes services over reg's current workloads.
func newServiceIndex(reg *workload.Registry, services []*Service) *serviceIndex {
	x := &serviceIndex{reg: reg, members: map[string]*endpointSet{}}
	x.set.Store(newServiceSet(services))
	for _, s := range services {
		x.members[s.Key()] = &endpointSet{byKey: map[string]*workload.Workload{}}
	}
	x.sync()
	return x
}

// inNamespace returns the services of ns, by key; the slice is shared.
func (x *serviceIndex) inNamespace(ns string) []*Service { return x.set.Load().byNS[ns] }

// resolve maps a dial target to a service (see resolveService).
func (x *serviceIndex) resolve(target string) *Service {
	host, _, _ := strings.Cut(target, ":")
	_, ns, _ := strings.Cut(host, ".")
	ns, _, _ = strings.Cut(ns, ".")
	return resolveService(target, x.inNamespace(ns))
}

// endpoints returns the workloads s selects, by key; the slice is shared.
func (x *serviceIndex) endpoints(s *Service) []*workload.Workload {
	x.mu.Lock()
	defer x.mu.Unlock()
	e := x.members[s.Key()]
	if e == nil {
		return nil
	}
	if e.sorted == nil && len(e.byKey) > 0 {
		keys := slices.Sorted(maps.Keys(e.byKey))
		e.sorted = make([]*workload.Workload, len(keys))
		for i, k := range keys {
			e.sorted[i] = e.byKey[k]
		}
	}
	return e.sorted
}

// registryChange is what one sync found: the keys of the workloads that
// changed and the services ("namespace/name") whose endpoints changed.
type registryChange struct {
	pods     []string
	services map[string]bool
}

// sync applies the registry's changes since the last sync.
func (x *serviceIndex) sync() registryChange {
	ch := registryChange{services: map[string]bool{}}
	x.mu.Lock()
	defer x.mu.Unlock()
	// Loaded under mu: setServices swaps the set and fills new services'
	// endpoints under mu too, so the changes below reach every service.
	set := x.set.Load()
	x.cursor = x.reg.Changes(x.cursor, func(old, nu *workload.Workload) {
		w := nu
		if w == nil {
			w = old
		}
		ch.pods = append(ch.pods, w.Key())
		for _, s := range set.byNS[w.Namespace] {
			if x.apply(s, old, nu) {
				ch.services[s.Namespace+"/"+s.Name] = true
			}
		}
	})
	return ch
}

// apply moves one workload change into s's endpoints; it reports whether
// what a client of s is given (its endpoints' addresses and identities)
// changed.
func (x *serviceIndex) apply(s *Service, old, nu *workload.Workload) bool {
	e := x.members[s.Key()]
	was, is := old != nil && s.Selects(old), nu != nil && s.Selects(nu)
	switch {
	case is:
		e.byKey[nu.Key()] = nu
	case was:
		delete(e.byKey, old.Key())
	default:
		return false
	}
	e.sorted = nil
	return !was || !is || old.ServiceAccount != nu.ServiceAccount || !slices.Equal(old.IPs, nu.IPs)
}

// setServices swaps the service model and returns the old and new
// version of every service added, removed or changed.
func (x *serviceIndex) setServices(services []*Service) (changed []*Service) {
	old := x.set.Load()
	oldByKey := map[string]*Service{}
	for _, s := range old.all {
		oldByKey[s.Key()] = s
	}
	next := newServiceSet(services)
	fresh := map[string][]*Service{} // by namespace: services whose endpoints must be found
	for _, s := range services {
		o := oldByKey[s.Key()]
		delete(oldByKey, s.Key())
		if o != nil && sameService(o, s) {
			continue
		}
		changed = append(changed, s)
		if o != nil {
			changed = append(changed, o)
		}
		if o == nil || !maps.Equal(o.Selector, s.Selector) {
			fresh[s.Namespace] = append(fresh[s.Namespace], s)
		}
	}
	for _, o := range oldByKey {
		changed = append(changed, o)
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, o := range oldByKey {
		delete(x.members, o.Key())
	}
	for _, ss := range fresh {
		for _, s := range ss {
			x.members[s.Key()] = &endpointSet{byKey: map[string]*workload.Workload{}}
		}
	}
	if len(fresh) > 0 {
		// One pass over the registry for every service whose selection is
		// new. It reads a version at least as new as the cursor; the
		// changes sync applies later are idempotent on it.
		for _, w := range x.reg.List() {
			for _, s := range fresh[w.Namespace] {
				if s.Selects(w) {
					x.members[s.Key()].byKey[w.Key()] = w
				}
			}
		}
	}
	x.set.Store(next)
	return changed
}

func sameService(a, b *Service) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.Port == b.Port && a.Protocol == b.Protocol && maps.Equal(a.Selector, b.Selector)
}
