package xds

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"
)

// TypeStatus is what one node did with one resource type.
type TypeStatus struct {
	// Sent is the version of the last response sent.
	Sent   string    `json:"sent,omitempty"`
	SentAt time.Time `json:"sentAt,omitzero"`
	// Acked is the last version the node accepted.
	Acked   string    `json:"acked,omitempty"`
	AckedAt time.Time `json:"ackedAt,omitzero"`
	// Nacked is the last version the node rejected and NackError why.
	Nacked    string    `json:"nacked,omitempty"`
	NackedAt  time.Time `json:"nackedAt,omitzero"`
	NackError string    `json:"nackError,omitempty"`
	Acks      uint64    `json:"acks"`
	Nacks     uint64    `json:"nacks"`
}

// NodeStatus is the debug view of one node.
type NodeStatus struct {
	NodeID    string   `json:"nodeId"`
	Kind      NodeKind `json:"kind"`
	SPIFFEID  string   `json:"spiffeId,omitempty"`
	Connected bool     `json:"connected"`
	Streams   int      `json:"streams"`
	// SnapshotVersion is the version of the snapshot currently served.
	SnapshotVersion string         `json:"snapshotVersion,omitempty"`
	SnapshotAt      time.Time      `json:"snapshotAt,omitzero"`
	Resources       map[string]int `json:"resources,omitempty"`
	// LastBuildError is the last snapshot that could not be built or
	// validated; the previous snapshot stays in force.
	LastBuildError string `json:"lastBuildError,omitempty"`
	// Types is keyed by short type name (Listener, RouteConfiguration...).
	Types map[string]*TypeStatus `json:"types"`
}

func (n *NodeStatus) clone() NodeStatus {
	c := *n
	c.Resources = make(map[string]int, len(n.Resources))
	for k, v := range n.Resources {
		c.Resources[k] = v
	}
	c.Types = make(map[string]*TypeStatus, len(n.Types))
	for k, v := range n.Types {
		t := *v
		c.Types[k] = &t
	}
	return c
}

func (n *NodeStatus) typ(typeURL string) *TypeStatus {
	k := shortType(typeURL)
	t := n.Types[k]
	if t == nil {
		t = &TypeStatus{}
		n.Types[k] = t
	}
	return t
}

// StatusReport is the document StatusHandler serves.
type StatusReport struct {
	Nodes []NodeStatus `json:"nodes"`
}

// Status returns every known node, sorted by node ID.
func (s *Server) Status() []NodeStatus {
	s.statusMu.Lock()
	out := make([]NodeStatus, 0, len(s.status))
	for _, st := range s.status {
		out = append(out, st.clone())
	}
	s.statusMu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].NodeID < out[j].NodeID })
	return out
}

// NodeStatus returns the status of one node.
func (s *Server) NodeStatus(nodeID string) (NodeStatus, bool) {
	s.statusMu.Lock()
	defer s.statusMu.Unlock()
	st, ok := s.status[nodeID]
	if !ok {
		return NodeStatus{}, false
	}
	return st.clone(), true
}

func (s *Server) updateStatus(nodeID string, f func(*NodeStatus)) {
	s.statusMu.Lock()
	st := s.status[nodeID]
	if st == nil {
		st = &NodeStatus{NodeID: nodeID, Types: map[string]*TypeStatus{}}
		s.status[nodeID] = st
	}
	f(st)
	s.statusMu.Unlock()
}

// StatusHandler serves StatusReport as JSON (mount it at /debug/xds; the
// optional query parameter node=<namespace>/<pod> selects one node).
// `kordon xds status` reads it.
func (s *Server) StatusHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		rep := StatusReport{Nodes: []NodeStatus{}}
		if id := r.URL.Query().Get("node"); id != "" {
			st, ok := s.NodeStatus(id)
			if !ok {
				http.Error(w, "unknown node", http.StatusNotFound)
				return
			}
			rep.Nodes = append(rep.Nodes, st)
		} else {
			rep.Nodes = s.Status()
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			s.log.Debug("xds status write failed", "error", err)
		}
	})
}
