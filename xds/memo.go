package xds

import (
	"sync"
	"unsafe"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/kordon-dev/kordon/internal/workload"
)

// memo carries the resources of a node's last build into its next one: a
// resource whose inputs (its key) did not change is reused as it is,
// already validated and hashed, so a rebuild after one pod event builds,
// validates and marshals only what that event changed. A memo belongs to
// one node and is used by one build at a time (under node.mu); a nil memo
// reuses nothing.
type memo struct {
	prev, next map[string]memoEntry
	// sums are the hashes known for this build's resources.
	sums map[types.Resource]string
	// shape is the consistencyShape of the last snapshot of the node that
	// passed Snapshot.Consistent.
	shape string
}

type memoEntry struct {
	key string
	r   types.Resource
}

// newMemo starts a build from the resources of the last one (prev may be
// nil).
func newMemo(prev *memo) *memo {
	m := &memo{next: map[string]memoEntry{}, sums: map[types.Resource]string{}}
	if prev != nil {
		m.prev = prev.next
		m.shape = prev.shape
		for _, e := range prev.next {
			m.sums[e.r] = prev.sums[e.r]
		}
	}
	return m
}

// res returns the resource id (type and name) built from inputs key: the
// last build's when its key was the same, else mk's.
func (m *memo) res(id, key string, mk func() types.Resource) types.Resource {
	if m == nil {
		return mk()
	}
	if e, ok := m.prev[id]; ok && e.key == key {
		m.next[id] = e
		return e.r
	}
	r := mk()
	m.next[id] = memoEntry{key: key, r: r}
	return r
}

func (m *memo) sum(r types.Resource) (string, bool) {
	if m == nil {
		return "", false
	}
	s, ok := m.sums[r]
	return s, ok
}

// passed reports whether a snapshot of this shape passed the consistency
// check already.
func (m *memo) passed(shape string) bool { return m != nil && m.shape == shape }

func (m *memo) pass(shape string) {
	if m != nil {
		m.shape = shape
	}
}

func (m *memo) learn(r types.Resource, sum string) {
	if m != nil {
		m.sums[r] = sum
	}
}

// clusterCache owns the client Cluster and ClusterLoadAssignment of each
// service, shared by every node that dials it: they depend on the
// service's endpoints only, so one pod event rebuilds them once however
// many nodes dial the service.
type clusterCache struct {
	mu sync.Mutex
	m  map[string]*clusterEntry // by cluster name
}

type clusterEntry struct {
	eps                []*workload.Workload
	cluster, cla       types.Resource
	clusterSum, claSum string
}

func newClusterCache() *clusterCache { return &clusterCache{m: map[string]*clusterEntry{}} }

// get returns the Cluster and ClusterLoadAssignment named name for
// service s with endpoints eps (a slice the service index never mutates:
// a change gives a new one), building them when eps is another slice.
// Their hashes go into m.
func (c *clusterCache) get(name string, s *Service, eps []*workload.Workload, o buildOptions, m *memo) (types.Resource, types.Resource, error) {
	c.mu.Lock()
	e := c.m[name]
	c.mu.Unlock()
	if e == nil || len(e.eps) != len(eps) || unsafe.SliceData(e.eps) != unsafe.SliceData(eps) {
		ne := &clusterEntry{eps: eps, cluster: clientCluster(name, eps, o), cla: loadAssignment(name, s.Port, eps)}
		var err error
		if ne.clusterSum, err = resourceSum(resourcev3.ClusterType, ne.cluster); err != nil {
			return nil, nil, err
		}
		if ne.claSum, err = resourceSum(resourcev3.EndpointType, ne.cla); err != nil {
			return nil, nil, err
		}
		c.mu.Lock()
		c.m[name] = ne
		c.mu.Unlock()
		e = ne
	}
	m.learn(e.cluster, e.clusterSum)
	m.learn(e.cla, e.claSum)
	return e.cluster, e.cla, nil
}

// forget drops the entries of clusters not in keep (services removed).
func (c *clusterCache) forget(keep map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name := range c.m {
		if !keep[name] {
			delete(c.m, name)
		}
	}
}
