package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestAlertGCRetentionAndCap: the leader's collector deletes the series
// last seen before the retention and, per namespace, the oldest beyond
// the cap; other namespaces and recent series stay.
func TestAlertGCRetentionAndCap(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	busy, quiet := newNamespace(t), newNamespace(t)
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	mk := func(ns, name string, age time.Duration) {
		t.Helper()
		seen := now.Add(-age).Format(time.RFC3339)
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "security.kordon.dev/v1", "kind": "EgressAlert",
			"metadata": map[string]any{"name": name, "namespace": ns},
			"spec": map[string]any{"severity": "low", "kind": "blocked", "node": "node-a", "pod": "p", "domain": name + ".example",
				"action": "blocked", "count": 1, "firstSeen": seen, "lastSeen": seen}}}
		if _, err := clients.Dynamic.Resource(kube.EgressAlertGVR).Namespace(ns).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// busy: 6 recent (ages 1..6 min) and 2 expired; quiet: 1 recent, 1 expired.
	for i := 1; i <= 6; i++ {
		mk(busy, fmt.Sprintf("recent-%d", i), time.Duration(i)*time.Minute)
	}
	mk(busy, "expired-1", 8*24*time.Hour)
	mk(busy, "expired-2", 30*24*time.Hour)
	mk(quiet, "recent-1", time.Hour)
	mk(quiet, "expired-1", 9*24*time.Hour)

	view := kube.NewAlertView(clients, nil)
	go func() { _ = view.Run(ctx) }()
	<-view.Synced()
	reg := prometheus.NewRegistry()
	gc, err := kube.NewAlertGC(kube.AlertGCConfig{Clients: clients, View: view, Retention: 7 * 24 * time.Hour, MaxPerNamespace: 4,
		Now: func() time.Time { return now }, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	// The view holds every namespace's series (the cap also trims what
	// earlier tests left, which they no longer read); only these two are
	// checked.
	eventually(t, 20*time.Second, "the view has the 10 series", func() bool {
		n := 0
		for _, a := range view.List(alert.Filter{}) {
			if a.Namespace == busy || a.Namespace == quiet {
				n++
			}
		}
		return n == 10
	})
	gc.Collect(ctx)
	names := func(ns string) map[string]bool {
		l, err := clients.Dynamic.Resource(kube.EgressAlertGVR).Namespace(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]bool{}
		for _, u := range l.Items {
			out[u.GetName()] = true
		}
		return out
	}
	b, q := names(busy), names(quiet)
	want := map[string]bool{"recent-1": true, "recent-2": true, "recent-3": true, "recent-4": true}
	if fmt.Sprint(b) != fmt.Sprint(want) {
		t.Errorf("%s after GC: %v, want the 4 most recent", busy, b)
	}
	if fmt.Sprint(q) != fmt.Sprint(map[string]bool{"recent-1": true}) {
		t.Errorf("%s after GC: %v", quiet, q)
	}
	ret, err := testutil.GatherAndCount(reg, "kordon_kube_alert_gc_deletions_total")
	if err != nil || ret != 2 {
		t.Errorf("deletion metric series: %d %v", ret, err)
	}
}
