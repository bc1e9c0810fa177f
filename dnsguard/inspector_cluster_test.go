package dnsguard

import (
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/miekg/dns"
)

// TestClusterQuarantineBlocksAndItsDeletionLiftsTheLocalOne: a
// quarantine held by the cluster blocks the pod's domain with an EDE
// naming the object; when the object goes, the node's own quarantine of
// the same pod and domain (the one that raised it) is lifted too.
func TestClusterQuarantineBlocksAndItsDeletionLiftsTheLocalOne(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	feed, err := alert.NewFeed(alert.Config{Dir: dir + "/alerts"})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	insp, err := NewInspector(InspectorConfig{Feed: feed, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer insp.Close()
	h := newHarness(t, func(c *Config) { c.Inspector = insp })
	if err := h.srv.SetPolicies(mustSet(t, testPolicies+"---"+quarantinePolicy)); err != nil {
		t.Fatal(err)
	}
	if r := h.query(t, "127.0.0.11", "api.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("before: %s", dns.RcodeToString[r.Rcode])
	}
	q := []ClusterQuarantine{{Namespace: "shop", Pod: "checkout", Domain: "API.example.", Name: "shop/deployment-checkout-1a2b"}}
	if err := insp.SetClusterQuarantines(q); err != nil {
		t.Fatal(err)
	}
	r := h.query(t, "127.0.0.11", "x.api.example.", dns.TypeA, "udp")
	if r.Rcode != dns.RcodeNameError || ede(r) == nil || !strings.Contains(ede(r).ExtraText, "kubectl delete quarantine -n shop deployment-checkout-1a2b") {
		t.Fatalf("cluster quarantine not enforced: %v", r)
	}
	if r := h.query(t, "127.0.0.10", "x.cdn.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("another workload affected: %s", dns.RcodeToString[r.Rcode])
	}
	// The detector's own quarantine of the same pod and domain.
	insp.mu.Lock()
	insp.quarantines["shop/checkout|api.example"] = &Quarantine{ID: "local", Workload: "shop/checkout", Domain: "api.example"}
	insp.nq.Store(1)
	insp.mu.Unlock()
	if r := h.query(t, "127.0.0.11", "y.api.example.", dns.TypeA, "udp"); !strings.Contains(ede(r).ExtraText, "kubectl delete quarantine") {
		t.Fatalf("held by the cluster and locally, the EDE should name the object: %v", r)
	}
	if err := insp.SetClusterQuarantines(nil); err != nil {
		t.Fatal(err)
	}
	if qs := insp.Quarantines(); len(qs) != 0 {
		t.Fatalf("local quarantine not lifted with the object: %v", qs)
	}
	if r := h.query(t, "127.0.0.11", "api.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("after lifting: %s", dns.RcodeToString[r.Rcode])
	}
}
