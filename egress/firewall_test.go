package egress

import (
	"net/netip"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/policy"
)

func TestEnforceAuditUnmanaged(t *testing.T) {
	e := newEnv(t, 3, nil)
	e.setPolicies(
		pol{pod: 0, allow: []string{"api.example.com"}},
		pol{pod: 1, mode: policy.EgressAudit, allow: []string{"api.example.com"}},
	)
	allowed := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.10"), 8080)
	literal := e.tcpServer(e.tp.OutsideAddr(t, "198.51.100.11"), 8080)

	// Before any answer, pod0 (Enforce) is refused at once.
	e.mustRefuse(0, allowed.addr)
	e.admit(0, "api.example.com", 300, allowed.addr.Addr())
	e.mustConnect(0, allowed.addr)
	// An IP literal no answer gave stays refused.
	e.mustRefuse(0, literal.addr)
	// Audit and unmanaged pods get through.
	e.mustConnect(1, literal.addr)
	e.mustConnect(2, literal.addr)
	// pod0's grant opens nothing for pod1 under Enforce: make pod1 enforce.
	e.setPolicies(
		pol{pod: 0, allow: []string{"api.example.com"}},
		pol{pod: 1, allow: []string{"api.example.com"}},
	)
	e.mustRefuse(1, allowed.addr)
	e.mustConnect(0, allowed.addr)

	if name, ok := e.fw.Lookup(e.tp.Pods[0].IP4, allowed.addr.Addr()); !ok || name != "api.example.com" {
		t.Fatalf("Lookup = %q, %v", name, ok)
	}
	if e.fw.Learned(e.tp.Pods[1].IP4, allowed.addr.Addr()) {
		t.Fatal("Learned for pod1, want false")
	}
	w, fw, ok := e.fw.Workload(e.tp.Pods[0].IP6)
	if !ok || w.Name != "pod0" || fw.Mode != policy.FirewallEnforce {
		t.Fatalf("Workload = %v %v %v", w, fw, ok)
	}
	_ = time.Second
	_ = netip.Addr{}
}
