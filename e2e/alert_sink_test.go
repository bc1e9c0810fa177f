package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/manifests"
	"github.com/kordon-dev/kordon/policy"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestClusterSinkCountsEachAlertOnce: a redelivered alert (the feed's
// cursor was not saved) does not count twice, a later one does, and an
// older one out of order keeps lastSeen and moves firstSeen.
func TestClusterSinkCountsEachAlertOnce(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	sink, err := kube.NewClusterSink(kube.ClusterSinkConfig{Dynamic: clients.Dynamic, Node: "node-a", Namespace: manifests.Namespace})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	a := alert.Alert{ID: 7, Time: t0, Severity: "low", Kind: alert.KindBlocked, Node: "node-a", Namespace: ns, Pod: "web-1", Domain: "x.example", Action: "blocked"}
	get := func() policy.EgressAlertSpec {
		t.Helper()
		u, err := clients.Dynamic.Resource(kube.EgressAlertGVR).Namespace(ns).Get(ctx, kube.AlertName(&a), metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s := u.Object["spec"].(map[string]any)
		out := policy.EgressAlertSpec{Count: s["count"].(int64), LastAlertID: uint64(s["lastAlertId"].(int64))}
		out.FirstSeen, _ = time.Parse(time.RFC3339, s["firstSeen"].(string))
		out.LastSeen, _ = time.Parse(time.RFC3339, s["lastSeen"].(string))
		return out
	}
	for _, step := range []struct {
		name        string
		id          uint64
		at          time.Time
		count       int64
		first, last time.Time
	}{
		{name: "first", id: 7, at: t0, count: 1, first: t0, last: t0},
		{name: "redelivered", id: 7, at: t0, count: 1, first: t0, last: t0},
		{name: "next", id: 9, at: t0.Add(time.Minute), count: 2, first: t0, last: t0.Add(time.Minute)},
		{name: "next again", id: 9, at: t0.Add(time.Minute), count: 2, first: t0, last: t0.Add(time.Minute)},
		{name: "a wiped log starts its ids again", id: 1, at: t0.Add(2 * time.Minute), count: 3, first: t0, last: t0.Add(2 * time.Minute)},
		{name: "an older one late", id: 2, at: t0.Add(-time.Minute), count: 4, first: t0.Add(-time.Minute), last: t0.Add(2 * time.Minute)},
	} {
		a.ID, a.Time = step.id, step.at
		if err := sink.Deliver(ctx, a); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got := get()
		if got.Count != step.count || !got.FirstSeen.Equal(step.first) || !got.LastSeen.Equal(step.last) {
			t.Errorf("%s: count %d first %s last %s; want %d %s %s", step.name, got.Count, got.FirstSeen, got.LastSeen, step.count, step.first, step.last)
		}
	}
}
