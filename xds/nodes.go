package xds

import (
	"maps"
	"strings"
	"sync"
)

// nodeTable owns the connected nodes, their streams and the reverse
// indexes that say which nodes a change reaches: by namespace (policies,
// services selecting workloads) and by the services they dial
// (endpoints).
type nodeTable struct {
	mu      sync.Mutex
	nodes   map[string]*node
	streams map[int64]*stream
	byNS    map[string]map[string]*node
	dialers map[string]map[string]*node // by "namespace/name" of a dialed service
}

type node struct {
	id   string
	ns   string
	kind NodeKind
	// serviceAccount is the one authorized when the node was bound.
	serviceAccount string
	// mu serialises builds of this node.
	mu sync.Mutex
	// guarded by nodeTable.mu:
	streams   map[int64]bool
	requested map[string]bool
	dials     map[string]bool
	// guarded by mu:
	gen  uint64
	hash string
	memo *memo
}

type sent struct{ typeURL, version string }

type stream struct {
	identity *Identity
	nodeID   string
	nonces   map[string]sent
	// names are the Listener names this stream subscribes to.
	names map[string]bool
}

func newNodeTable() *nodeTable {
	return &nodeTable{nodes: map[string]*node{}, streams: map[int64]*stream{},
		byNS: map[string]map[string]*node{}, dialers: map[string]map[string]*node{}}
}

func (t *nodeTable) openStream(id int64, st *stream) {
	t.mu.Lock()
	t.streams[id] = st
	t.mu.Unlock()
}

func (t *nodeTable) stream(id int64) *stream {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.streams[id]
}

func (t *nodeTable) get(id string) *node {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.nodes[id]
}

// count is the number of connected nodes.
func (t *nodeTable) count() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.nodes)
}

// closeStream forgets stream id. It returns the stream (nil if unknown),
// the node it was bound to and how many streams that node has left; the
// node is forgotten with its last stream.
func (t *nodeTable) closeStream(id int64) (st *stream, nodeID string, left int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st = t.streams[id]
	delete(t.streams, id)
	if st == nil || st.nodeID == "" {
		return st, "", 0
	}
	n := t.nodes[st.nodeID]
	if n == nil {
		return st, st.nodeID, 0
	}
	delete(n.streams, id)
	if len(n.streams) == 0 {
		delete(t.nodes, n.id)
		delete(t.byNS[n.ns], n.id)
		if len(t.byNS[n.ns]) == 0 {
			delete(t.byNS, n.ns)
		}
		t.setDials(n, nil)
	}
	return st, n.id, len(n.streams)
}

// bind attaches stream id to node nodeID, creating the node; it returns
// the node and its stream count.
func (t *nodeTable) bind(id int64, st *stream, nodeID string, kind NodeKind, serviceAccount string) (*node, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := t.nodes[nodeID]
	if n == nil {
		ns, _, _ := strings.Cut(nodeID, "/")
		n = &node{id: nodeID, ns: ns, kind: kind, serviceAccount: serviceAccount, streams: map[int64]bool{}, requested: map[string]bool{}}
		t.nodes[nodeID] = n
		if t.byNS[ns] == nil {
			t.byNS[ns] = map[string]*node{}
		}
		t.byNS[ns][nodeID] = n
	}
	n.streams[id] = true
	st.nodeID = nodeID
	return n, len(n.streams)
}

// subscribe applies lu to stream st of node n and reports whether the
// union of Listener names n's streams want changed.
func (t *nodeTable) subscribe(st *stream, n *node, lu *listenerUpdate) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if lu.replace || st.names == nil {
		st.names = map[string]bool{}
	}
	for _, name := range lu.subscribe {
		st.names[name] = true
	}
	for _, name := range lu.unsubscribe {
		delete(st.names, name)
	}
	union := map[string]bool{}
	for sid := range n.streams {
		if other := t.streams[sid]; other != nil {
			for name := range other.names {
				union[name] = true
			}
		}
	}
	if maps.Equal(union, n.requested) {
		return false
	}
	n.requested = union
	dials := map[string]bool{}
	for name := range union {
		if svc, ok := dialedService(name); ok {
			dials[svc] = true
		}
	}
	t.setDials(n, dials)
	return true
}

// setDials replaces n's entries in the dialers index; t.mu is held.
func (t *nodeTable) setDials(n *node, dials map[string]bool) {
	for svc := range n.dials {
		if !dials[svc] {
			delete(t.dialers[svc], n.id)
			if len(t.dialers[svc]) == 0 {
				delete(t.dialers, svc)
			}
		}
	}
	for svc := range dials {
		if t.dialers[svc] == nil {
			t.dialers[svc] = map[string]*node{}
		}
		t.dialers[svc][n.id] = n
	}
	n.dials = dials
}

// requestedNames returns the Listener names n's streams want.
func (t *nodeTable) requestedNames(n *node) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]string, 0, len(n.requested))
	for r := range n.requested {
		out = append(out, r)
	}
	return out
}

// takeNonce returns and forgets what st sent with nonce.
func (t *nodeTable) takeNonce(st *stream, nonce string) (sent, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	out, ok := st.nonces[nonce]
	delete(st.nonces, nonce)
	return out, ok
}

// recordSent books a response of stream id and returns its node ("" when
// the stream is unknown or unbound).
func (t *nodeTable) recordSent(id int64, typeURL, nonce, version string) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.streams[id]
	if st == nil {
		return ""
	}
	// Nonces of superseded responses are never answered; forget them so
	// the map stays bounded.
	for k, v := range st.nonces {
		if v.typeURL == typeURL {
			delete(st.nonces, k)
		}
	}
	st.nonces[nonce] = sent{typeURL: typeURL, version: version}
	return st.nodeID
}

// ids returns the IDs of the nodes among keys (workload keys).
func (t *nodeTable) ids(keys []string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for _, k := range keys {
		if t.nodes[k] != nil {
			out = append(out, k)
		}
	}
	return out
}

// dialing returns the IDs of the nodes that dial one of svcs
// ("namespace/name").
func (t *nodeTable) dialing(svcs map[string]bool) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []string
	for svc := range svcs {
		for id := range t.dialers[svc] {
			out = append(out, id)
		}
	}
	return out
}

// inNamespace returns the nodes of namespace ns (every node when ns is
// "").
func (t *nodeTable) inNamespace(ns string) []*node {
	t.mu.Lock()
	defer t.mu.Unlock()
	var out []*node
	if ns == "" {
		for _, n := range t.nodes {
			out = append(out, n)
		}
		return out
	}
	for _, n := range t.byNS[ns] {
		out = append(out, n)
	}
	return out
}

// dialedService is the "namespace/name" of the service a client Listener
// name targets ("<name>.<namespace>[...][:port]"), whether or not such a
// service exists yet: when it appears, its dialers must be rebuilt.
func dialedService(target string) (string, bool) {
	if strings.HasPrefix(target, ServerListenerPrefix) {
		return "", false
	}
	host, _, _ := strings.Cut(target, ":")
	name, rest, ok := strings.Cut(host, ".")
	if !ok || name == "" {
		return "", false
	}
	ns, _, _ := strings.Cut(rest, ".")
	if ns == "" {
		return "", false
	}
	return ns + "/" + name, true
}
