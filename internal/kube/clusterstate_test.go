package kube

import (
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/policy"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
)

func TestAlertNameIsOnePerSeriesAndValid(t *testing.T) {
	t.Parallel()
	a := alert.Alert{Kind: "exfiltration", Namespace: "shop", Pod: "Report_Worker-7d9f", Domain: "reports.example"}
	b := a
	b.Domain = "other.example"
	c := alert.Alert{Kind: "blocked", ClientIP: "fd00::7", Domain: "x.example"}
	long := a
	long.Pod = strings.Repeat("p", 300)
	for _, x := range []alert.Alert{a, b, c, long} {
		n := AlertName(&x)
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			t.Errorf("%q: %v", n, errs)
		}
	}
	if AlertName(&a) == AlertName(&b) {
		t.Error("two domains share a series")
	}
	again := a
	again.Message, again.ID = "later", 9
	if AlertName(&a) != AlertName(&again) {
		t.Error("the same series got two names")
	}
	if got := AlertName(&a); !strings.HasPrefix(got, "exfiltration-report-worker-7d9f-") {
		t.Errorf("name %q", got)
	}
}

func TestPodOwnerAndQuarantineSelection(t *testing.T) {
	t.Parallel()
	ctrl := true
	pod := func(kind, name, hash string) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "worker-x", Labels: map[string]string{}}}
		if hash != "" {
			p.Labels["pod-template-hash"] = hash
		}
		if kind != "" {
			p.OwnerReferences = []metav1.OwnerReference{{Kind: kind, Name: name, Controller: &ctrl}}
		}
		return p
	}
	for _, tc := range []struct {
		name           string
		pod            *corev1.Pod
		kind, ownerOut string
	}{
		{name: "deployment through its replicaset", pod: pod("ReplicaSet", "worker-7d9f", "7d9f"), kind: "Deployment", ownerOut: "worker"},
		{name: "bare replicaset", pod: pod("ReplicaSet", "worker", ""), kind: "ReplicaSet", ownerOut: "worker"},
		{name: "statefulset", pod: pod("StatefulSet", "db", ""), kind: "StatefulSet", ownerOut: "db"},
		{name: "no controller", pod: pod("", "", ""), kind: "", ownerOut: ""},
	} {
		k, n := PodOwner(tc.pod)
		if k != tc.kind || n != tc.ownerOut {
			t.Errorf("%s: got %s/%s", tc.name, k, n)
		}
	}
	p := podInfo{ns: "shop", name: "worker-x", sa: "worker", ownerKind: "Deployment", ownerName: "worker"}
	for _, tc := range []struct {
		name string
		q    quarantine
		want bool
	}{
		{name: "owner", q: quarantine{ns: "shop", spec: policy.QuarantineSpec{Owner: &policy.QuarantineOwner{Kind: "Deployment", Name: "worker"}}}, want: true},
		{name: "other owner", q: quarantine{ns: "shop", spec: policy.QuarantineSpec{Owner: &policy.QuarantineOwner{Kind: "Deployment", Name: "api"}}}},
		{name: "owner in another namespace", q: quarantine{ns: "prod", spec: policy.QuarantineSpec{Owner: &policy.QuarantineOwner{Kind: "Deployment", Name: "worker"}}}},
		{name: "service account", q: quarantine{ns: "shop", spec: policy.QuarantineSpec{ServiceAccount: "worker"}}, want: true},
		{name: "pod by name", q: quarantine{ns: "shop", spec: policy.QuarantineSpec{Owner: &policy.QuarantineOwner{Kind: "Pod", Name: "worker-x"}}}, want: true},
		{name: "selects nothing", q: quarantine{ns: "shop"}},
	} {
		if got := tc.q.selects(&p); got != tc.want {
			t.Errorf("%s: selects = %v", tc.name, got)
		}
	}
}
