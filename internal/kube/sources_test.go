package kube

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/kordon-dev/kordon/internal/workload"
)

func testPod(mut func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "echo-0", UID: "uid-1", Labels: map[string]string{"app": "echo"}},
		Spec:       corev1.PodSpec{ServiceAccountName: "echo", NodeName: "node-a"},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.0.0.5",
			PodIPs: []corev1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}}},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// TestWorkloadFromPod: a Pod becomes the workload the registry holds;
// pods that hold no address of their own or are gone become none.
func TestWorkloadFromPod(t *testing.T) {
	t.Parallel()
	now := metav1.Now()
	tests := []struct {
		name string
		pod  *corev1.Pod
		want *workload.Workload // nil: no workload
	}{
		{name: "running, dual stack, PodIP repeated", pod: testPod(nil),
			want: &workload.Workload{Namespace: "shop", Name: "echo-0", ServiceAccount: "echo", Labels: map[string]string{"app": "echo"},
				IPs: addrs("10.0.0.5", "fd00::5"), Node: "node-a", UID: "uid-1"}},
		{name: "no service account is default", pod: testPod(func(p *corev1.Pod) { p.Spec.ServiceAccountName = "" }),
			want: &workload.Workload{Namespace: "shop", Name: "echo-0", ServiceAccount: "default", Labels: map[string]string{"app": "echo"},
				IPs: addrs("10.0.0.5", "fd00::5"), Node: "node-a", UID: "uid-1"}},
		{name: "PodIP only (older kubelets)", pod: testPod(func(p *corev1.Pod) { p.Status.PodIPs = nil }),
			want: &workload.Workload{Namespace: "shop", Name: "echo-0", ServiceAccount: "echo", Labels: map[string]string{"app": "echo"},
				IPs: addrs("10.0.0.5"), Node: "node-a", UID: "uid-1"}},
		{name: "unparseable address ignored", pod: testPod(func(p *corev1.Pod) {
			p.Status.PodIPs = []corev1.PodIP{{IP: "10.0.0.5/24"}, {IP: "fd00::5"}}
			p.Status.PodIP = ""
		}),
			want: &workload.Workload{Namespace: "shop", Name: "echo-0", ServiceAccount: "echo", Labels: map[string]string{"app": "echo"},
				IPs: addrs("fd00::5"), Node: "node-a", UID: "uid-1"}},
		{name: "pending, no address yet", pod: testPod(func(p *corev1.Pod) { p.Status = corev1.PodStatus{Phase: corev1.PodPending} }),
			want: &workload.Workload{Namespace: "shop", Name: "echo-0", ServiceAccount: "echo", Labels: map[string]string{"app": "echo"},
				Node: "node-a", UID: "uid-1"}},
		{name: "hostNetwork shares the node's address: none attributed", pod: testPod(func(p *corev1.Pod) { p.Spec.HostNetwork = true }),
			want: &workload.Workload{Namespace: "shop", Name: "echo-0", ServiceAccount: "echo", Labels: map[string]string{"app": "echo"},
				Node: "node-a", UID: "uid-1"}},
		{name: "terminating but scheduled keeps serving", pod: testPod(func(p *corev1.Pod) { p.DeletionTimestamp = &now }),
			want: &workload.Workload{Namespace: "shop", Name: "echo-0", ServiceAccount: "echo", Labels: map[string]string{"app": "echo"},
				IPs: addrs("10.0.0.5", "fd00::5"), Node: "node-a", UID: "uid-1"}},
		{name: "succeeded", pod: testPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })},
		{name: "failed", pod: testPod(func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed })},
		{name: "deleted before scheduling", pod: testPod(func(p *corev1.Pod) { p.DeletionTimestamp = &now; p.Spec.NodeName = "" })},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got := WorkloadFromPod(tc.pod)
			if !got.Equal(tc.want) {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestWorkloadFromPodStatusChurn: status that a workload does not hold
// (conditions, container states) converts to an Equal workload, which is
// what lets the informer skip the update and the registry keep its
// version.
func TestWorkloadFromPodStatusChurn(t *testing.T) {
	t.Parallel()
	a := testPod(nil)
	b := testPod(func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "echo", Ready: true, RestartCount: 3}}
		p.ResourceVersion = "42"
	})
	if !WorkloadFromPod(a).Equal(WorkloadFromPod(b)) {
		t.Fatal("status churn changed the workload")
	}
	c := testPod(func(p *corev1.Pod) { p.Labels = map[string]string{"app": "echo", "version": "v2"} })
	if WorkloadFromPod(a).Equal(WorkloadFromPod(c)) {
		t.Fatal("a label change left the workload equal")
	}
}

func policyObject(group, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetAPIVersion(group + "/v1")
	u.SetKind("AuthorizationPolicy")
	u.SetNamespace("shop")
	u.SetName(name)
	return u
}

// TestParseObject: an object from the API goes through the strict
// decoder under the name kind/namespace/name (group-qualified for
// Istio's), and its errors carry that name and a position.
func TestParseObject(t *testing.T) {
	t.Parallel()
	good := policyObject("security.kordon.dev", "allow", map[string]any{"action": "ALLOW",
		"rules": []any{map[string]any{"from": []any{map[string]any{"source": map[string]any{"principals": []any{"cluster.local/ns/shop/sa/web"}}}}}}})
	set, err := parseObject(good)
	if err != nil {
		t.Fatal(err)
	}
	if len(set.Authorization) != 1 || set.Authorization[0].Metadata.Name != "allow" || set.Authorization[0].Metadata.Namespace != "shop" {
		t.Fatalf("parsed %+v", set.Authorization)
	}
	if k := key(good); k != "AuthorizationPolicy/shop/allow" {
		t.Fatalf("key %q", k)
	}
	istio := policyObject("security.istio.io", "allow", map[string]any{"action": "ALLOW"})
	if k := key(istio); k != "AuthorizationPolicy.security.istio.io/shop/allow" {
		t.Fatalf("istio key %q", k)
	}
	bad := policyObject("security.kordon.dev", "bad", map[string]any{"action": "PERMIT"})
	_, err = parseObject(bad)
	if err == nil || !strings.HasPrefix(err.Error(), "AuthorizationPolicy/shop/bad:") {
		t.Fatalf("error %v, want one positioned in AuthorizationPolicy/shop/bad", err)
	}
}

// TestRenamedIstio: an Istio policy beside a kordon one of the same name
// keeps its rules under a group-suffixed name; the original is untouched.
func TestRenamedIstio(t *testing.T) {
	t.Parallel()
	set, err := parseObject(policyObject("security.istio.io", "allow", map[string]any{"action": "DENY",
		"rules": []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"paths": []any{"/admin"}}}}}}}))
	if err != nil {
		t.Fatal(err)
	}
	out := renamedIstio(set)
	if got := out.Authorization[0].Metadata.Name; got != "allow.security.istio.io" {
		t.Fatalf("renamed to %q", got)
	}
	if set.Authorization[0].Metadata.Name != "allow" {
		t.Fatal("the original was renamed too")
	}
	if !slices.Equal(out.Authorization[0].Spec.Rules[0].To[0].Operation.Paths, []string{"/admin"}) {
		t.Fatalf("rules changed: %+v", out.Authorization[0].Spec.Rules)
	}
}
