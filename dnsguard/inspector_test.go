package dnsguard

import (
	"context"
	"encoding/base32"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

const quarantinePolicy = `
apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: worker-egress, namespace: shop}
spec:
  selector: {matchLabels: {app: checkout}}
  detection: {sensitivity: High, action: Quarantine}
`

// TestExfiltrationThroughResolverRaisesAlertAndQuarantines drives a
// base32 exfiltration through the real resolver: the detector raises an
// alert, the domain is quarantined for that workload only, the quarantine
// survives a restart, and lifting it restores resolution.
func TestExfiltrationThroughResolverRaisesAlertAndQuarantines(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	feed, err := alert.NewFeed(alert.Config{Dir: dir + "/alerts"})
	if err != nil {
		t.Fatal(err)
	}
	defer feed.Close()
	reg := prometheus.NewRegistry()
	insp, err := NewInspector(InspectorConfig{Feed: feed, StateDir: dir, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer insp.Close()
	defer func() {
		if n := testutil.ToFloat64(insp.detections.WithLabelValues("exfiltration", "high")); n < 1 {
			t.Errorf("kordon_detect_detections_total{exfiltration,high} = %v", n)
		}
	}()
	h := newHarness(t, func(c *Config) { c.Inspector = insp; c.Now = time.Now })
	set := mustSet(t, testPolicies+"---"+quarantinePolicy)
	if err := h.srv.SetPolicies(set); err != nil {
		t.Fatal(err)
	}
	secret := strings.Repeat("customer-card-4111111111111111;", 40)
	enc := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString([]byte(secret)), "="))
	sent := 0
	for i := 0; i+50 <= len(enc) && sent < 40; i += 50 {
		// api.example is allowed for checkout (Audit mode) so queries resolve.
		h.query(t, "127.0.0.11", fmt.Sprintf("%s.%d.api.example.", enc[i:i+50], sent), dns.TypeA, "udp")
		sent++
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := insp.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	var ex []alert.Alert
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		ex = feed.List(alert.Filter{Kind: alert.KindExfiltration})
		if len(ex) > 0 && len(insp.Quarantines()) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond) // the detector goroutine publishes asynchronously
	}
	if len(ex) != 1 || ex[0].Pod != "checkout" || ex[0].Domain != "api.example" || ex[0].Action != "quarantined" || ex[0].SPIFFEID != "spiffe://cluster.local/ns/shop/sa/checkout" {
		t.Fatalf("exfiltration alerts: %+v", ex)
	}
	r := h.query(t, "127.0.0.11", "api.example.", dns.TypeA, "udp")
	if r.Rcode != dns.RcodeNameError || ede(r) == nil || !strings.Contains(ede(r).ExtraText, "quarantined by kordon") {
		t.Fatalf("quarantined domain still resolves: %v", r)
	}
	// Another workload is not affected.
	if r := h.query(t, "127.0.0.10", "x.cdn.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("other workload affected: %s", dns.RcodeToString[r.Rcode])
	}
	// Restart: the quarantine persists.
	insp2, err := NewInspector(InspectorConfig{Feed: feed, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	qs := insp2.Quarantines()
	if len(qs) != 1 {
		t.Fatalf("quarantines after restart: %v", qs)
	}
	if ok, err := insp.Lift(qs[0].ID); !ok || err != nil {
		t.Fatal(ok, err)
	}
	insp2.Close()
	if r := h.query(t, "127.0.0.11", "api.example.", dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("lifted quarantine still blocks: %s", dns.RcodeToString[r.Rcode])
	}
	// Lifting makes the detector forget what it scored for the pair: the
	// workload's next ordinary queries do not quarantine it again at once.
	for _, name := range []string{"www.api.example.", "static.api.example."} {
		if r := h.query(t, "127.0.0.11", name, dns.TypeA, "udp"); r.Rcode != dns.RcodeSuccess {
			t.Fatalf("%s after lift: %s", name, dns.RcodeToString[r.Rcode])
		}
	}
	if err := insp.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if qs := insp.Quarantines(); len(qs) != 0 {
		t.Fatalf("quarantined again right after the lift: %+v", qs)
	}
}

func mustSet(t *testing.T, docs string) *policy.Set {
	t.Helper()
	set, err := policy.Parse("p.yaml", []byte(docs), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}
