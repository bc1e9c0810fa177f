package xds

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
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
	SnapshotVersion string `json:"snapshotVersion,omitempty"`
	// Versions are the per-type versions of that snapshot (a hash of the
	// type's resources): a type is in sync when Types[t].Acked equals it.
	Versions   map[string]string `json:"versions,omitempty"`
	SnapshotAt time.Time         `json:"snapshotAt,omitzero"`
	Resources  map[string]int    `json:"resources,omitempty"`
	// LastBuildError is the last snapshot that could not be built or
	// validated; the previous snapshot stays in force.
	LastBuildError string `json:"lastBuildError,omitempty"`
	// PolicyNotes name the rules of the served policy that need attributes
	// this data plane cannot know (JWT claims, other filters' metadata):
	// an ALLOW rule that matches nothing, a DENY rule that denies more.
	PolicyNotes []string `json:"policyNotes,omitempty"`
	// DisconnectedAt is when the last stream closed.
	DisconnectedAt time.Time `json:"disconnectedAt,omitzero"`
	// Types is keyed by short type name (Listener, RouteConfiguration...).
	Types map[string]*TypeStatus `json:"types"`
}

func (n *NodeStatus) clone() NodeStatus {
	c := *n
	c.Resources = make(map[string]int, len(n.Resources))
	for k, v := range n.Resources {
		c.Resources[k] = v
	}
	c.Versions = make(map[string]string, len(n.Versions))
	for k, v := range n.Versions {
		c.Versions[k] = v
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

// statusBook owns the per-node status: what was built, sent, ACKed and
// NACKed. Disconnected nodes are kept (up to maxDisconnected) so that
// `kordon xds status` can show why a node left.
type statusBook struct {
	mu sync.Mutex
	m  map[string]*NodeStatus
}

func newStatusBook() *statusBook { return &statusBook{m: map[string]*NodeStatus{}} }

// list returns every node's status, sorted by node ID.
func (b *statusBook) list() []NodeStatus {
	b.mu.Lock()
	out := make([]NodeStatus, 0, len(b.m))
	for _, st := range b.m {
		out = append(out, st.clone())
	}
	b.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].NodeID < out[j].NodeID })
	return out
}

func (b *statusBook) get(nodeID string) (NodeStatus, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st, ok := b.m[nodeID]
	if !ok {
		return NodeStatus{}, false
	}
	return st.clone(), true
}

// update applies f to nodeID's status, creating it.
func (b *statusBook) update(nodeID string, f func(*NodeStatus)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := b.m[nodeID]
	if st == nil {
		st = &NodeStatus{NodeID: nodeID, Types: map[string]*TypeStatus{}}
		b.m[nodeID] = st
	}
	f(st)
}

// maxDisconnected bounds how many disconnected nodes the status keeps
// (pods come and go); the oldest are forgotten first.
const maxDisconnected = 1024

// prune forgets the oldest disconnected nodes beyond keep.
func (b *statusBook) prune(keep int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var gone []*NodeStatus
	for _, st := range b.m {
		if !st.Connected {
			gone = append(gone, st)
		}
	}
	if len(gone) <= keep {
		return
	}
	sort.Slice(gone, func(i, j int) bool { return gone[i].DisconnectedAt.Before(gone[j].DisconnectedAt) })
	for _, st := range gone[:len(gone)-keep] {
		delete(b.m, st.NodeID)
	}
}

// Status returns every known node, sorted by node ID.
func (s *Server) Status() []NodeStatus { return s.status.list() }

// NodeStatus returns the status of one node.
func (s *Server) NodeStatus(nodeID string) (NodeStatus, bool) { return s.status.get(nodeID) }

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

// FetchStatus reads a StatusReport from url (a StatusHandler endpoint).
func FetchStatus(ctx context.Context, client *http.Client, url string) (*StatusReport, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("xds: status: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, fmt.Errorf("xds: status: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var rep StatusReport
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil {
		return nil, fmt.Errorf("xds: status: %w", err)
	}
	return &rep, nil
}

// statusTypes are the columns of WriteStatusTable, in xDS order.
var statusTypes = []struct{ col, typ string }{
	{"LDS", "Listener"}, {"RDS", "RouteConfiguration"}, {"CDS", "Cluster"},
	{"EDS", "ClusterLoadAssignment"}, {"SDS", "Secret"},
}

// WriteStatusTable renders rep as a table: one row per node, each xDS type
// shown as SYNCED (last version sent was ACKed), NACKED, STALE (sent, not
// yet answered) or "-" (never sent), then the last NACK reason.
func WriteStatusTable(w io.Writer, rep *StatusReport) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprint(tw, "NODE\tKIND\tCONNECTED\tVERSION")
	for _, c := range statusTypes {
		fmt.Fprintf(tw, "\t%s", c.col)
	}
	fmt.Fprintln(tw, "\tLAST ERROR")
	for _, n := range rep.Nodes {
		fmt.Fprintf(tw, "%s\t%s\t%t\t%s", n.NodeID, n.Kind, n.Connected, orDash(n.SnapshotVersion))
		lastErr := n.LastBuildError
		for _, c := range statusTypes {
			t := n.Types[c.typ]
			state := "-"
			switch {
			case t == nil || t.Sent == "":
			case t.Nacked == t.Sent:
				state = "NACKED"
				lastErr = t.NackError
			case t.Acked == t.Sent:
				state = "SYNCED"
			default:
				state = "STALE"
			}
			fmt.Fprintf(tw, "\t%s", state)
		}
		fmt.Fprintf(tw, "\t%s\n", orDash(lastErr))
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
