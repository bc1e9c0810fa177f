package egress

import (
	"testing"

	"github.com/kordon-dev/kordon/policy"
)

// TestTwoLiveWriters: during a node agent handover the new firewall adopts
// the table while the old one still runs, and both apply the same policy
// changes and grants. The second writer's diff is against sets the first
// already changed: it must still apply, and enforcement must hold across
// both and after the old one closes.
func TestTwoLiveWriters(t *testing.T) {
	e := newEnv(t, 2, nil)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}}, pol{pod: 1, allow: []string{"api.example.com"}})
	srv := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.70"), 8080)
	other := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.71"), 8080)
	e.admit(0, "api.example.com", 300, srv.addr.Addr())
	old := e.fw
	e.start() // the successor, beside the old one
	next := e.fw
	both := func(ps ...pol) {
		t.Helper()
		for _, fw := range []*Firewall{old, next} {
			e.fw = fw
			e.setPolicies(ps...)
		}
	}
	both(pol{pod: 0, allow: []string{"api.example.com"}}, pol{pod: 1, allow: []string{"api.example.com"}})
	e.mustConnect(0, srv.addr)
	e.mustRefuse(0, other.addr)
	e.mustRefuse(1, other.addr)
	// A change both apply: pod 1 leaves its policy (out of the enforce
	// sets), so the second writer deletes what the first already did.
	both(pol{pod: 0, allow: []string{"api.example.com"}})
	e.mustConnect(1, other.addr)
	e.mustRefuse(0, other.addr)
	// And back.
	both(pol{pod: 0, allow: []string{"api.example.com"}}, pol{pod: 1, allow: []string{"api.example.com"}})
	e.mustRefuse(1, other.addr)
	// Pod 1's address changes hands (a new pod reuses it) with a learned
	// grant in both firewalls: both drop it as stale, the second finds it
	// gone.
	for _, fw := range []*Firewall{old, next} {
		e.fw = fw
		e.admit(1, "api.example.com", 300, srv.addr.Addr())
	}
	e.mustConnect(1, srv.addr)
	ws := e.reg.List()
	for i, w := range ws {
		if w.Name == "pod1" {
			c := *w
			c.Name = "pod1-reused"
			ws[i] = &c
		}
	}
	e.reg.Replace(ws)
	both(pol{pod: 0, allow: []string{"api.example.com"}}, pol{pod: 1, allow: []string{"api.example.com"}})
	e.mustRefuse(1, srv.addr)
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	e.fw = next
	e.mustConnect(0, srv.addr)
	e.mustRefuse(0, other.addr)
	e.mustRefuse(1, other.addr)
	e.setPolicies(pol{pod: 0, allow: []string{"api.example.com"}}, pol{pod: 1, mode: policy.EgressAudit, allow: []string{"api.example.com"}})
	e.mustConnect(1, other.addr)
}
