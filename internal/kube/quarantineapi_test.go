package kube

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
)

func quarantineObject(ns, name string, spec map[string]any) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.kordon.dev/v1", "kind": "Quarantine",
		"metadata": map[string]any{"namespace": ns, "name": name, "creationTimestamp": "2026-12-01T10:00:00Z"},
		"spec":     spec,
	}}
}

func TestQuarantineStoreListsAndLifts(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{QuarantineGVR: "QuarantineList"},
		quarantineObject("shop", "worker-reports", map[string]any{
			"owner": map[string]any{"kind": "Deployment", "name": "worker"}, "domains": []any{"reports.example"},
			"addresses": []any{"192.0.2.7"}, "reason": "exfiltration", "pod": "worker-7d9f-x", "node": "node-a", "alert": "exfiltration-worker-1"}),
		quarantineObject("shop", "batch-x", map[string]any{"serviceAccount": "batch", "domains": []any{"x.example"}}),
		quarantineObject("web", "front-y", map[string]any{"serviceAccount": "front", "domains": []any{"y.example"}}),
	)
	s := QuarantineStore{Dynamic: dyn}
	all, err := s.List(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[0].ID != "shop/batch-x" || all[1].ID != "shop/worker-reports" || all[2].ID != "web/front-y" {
		t.Fatalf("every namespace: %+v", all)
	}
	w := all[1]
	want := alert.ClusterQuarantine{ID: "shop/worker-reports", Namespace: "shop", Name: "worker-reports", Workload: "shop/Deployment/worker",
		Domain: "reports.example, 192.0.2.7", Domains: []string{"reports.example"}, Addresses: []string{"192.0.2.7"},
		Since: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Reason: "exfiltration", Pod: "worker-7d9f-x", Node: "node-a", Alert: "exfiltration-worker-1"}
	if !reflect.DeepEqual(w, want) {
		t.Errorf("got %+v, want %+v", w, want)
	}
	if all[0].Workload != "shop/sa:batch" {
		t.Errorf("service-account workload %q", all[0].Workload)
	}
	shop, err := s.List(ctx, "shop")
	if err != nil || len(shop) != 2 {
		t.Fatalf("shop: %+v %v", shop, err)
	}
	if err := s.Lift(ctx, "shop", "worker-reports"); err != nil {
		t.Fatal(err)
	}
	if err := s.Lift(ctx, "shop", "worker-reports"); !errors.Is(err, alert.ErrNoQuarantine) {
		t.Fatalf("second lift: %v, want ErrNoQuarantine", err)
	}
	if left, err := s.List(ctx, ""); err != nil || len(left) != 2 {
		t.Fatalf("after the lift: %+v %v", left, err)
	}
}
