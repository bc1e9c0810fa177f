package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/policy"
	"github.com/kordon-dev/kordon/xds"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// installIstioCRDs creates stand-ins for Istio's security.istio.io CRDs
// (v1, spec kept as written, a status subresource as Istio's have): the
// test needs the API to serve Istio's group, not Istio's schema.
func installIstioCRDs(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, n := range []struct{ kind, plural string }{{"AuthorizationPolicy", "authorizationpolicies"}, {"RequestAuthentication", "requestauthentications"}} {
		obj := map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
			"metadata": map[string]any{"name": n.plural + ".security.istio.io"},
			"spec": map[string]any{
				"group": "security.istio.io", "scope": "Namespaced",
				"names": map[string]any{"kind": n.kind, "listKind": n.kind + "List", "plural": n.plural, "singular": strings.ToLower(n.kind)},
				"versions": []any{map[string]any{"name": "v1", "served": true, "storage": true, "subresources": map[string]any{"status": map[string]any{}},
					"schema": map[string]any{"openAPIV3Schema": map[string]any{"type": "object", "properties": map[string]any{
						"spec":   map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
						"status": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
					}}}}},
			},
		}
		_, err := clients.Dynamic.Resource(crdGVR).Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatal(err)
		}
	}
	eventually(t, 30*time.Second, "Istio and kordon RequestAuthentication CRDs served", func() bool {
		for _, gvr := range []schema.GroupVersionResource{kube.IstioAuthorizationPolicyGVR, kube.IstioRequestAuthenticationGVR, kube.RequestAuthenticationGVR} {
			if _, err := clients.Dynamic.Resource(gvr).List(ctx, metav1.ListOptions{}); err != nil {
				return false
			}
		}
		return true
	})
}

// TestRequestAuthenticationFromAPIReachesXDS: RequestAuthentications
// created through the API, in kordon's group and (with --istio-policies)
// in Istio's, reach the controller's policy set and change what its xDS
// server reports for the selected proxyless workload in /v1/xds/status
// (the note that its tokens are not checked and JWT rules fail closed), and
// so does an Istio AuthorizationPolicy;
// a kordon and an Istio object of the same name are both kept; deleting
// one takes its note away. kordon's object gets Compiled=True.
func TestRequestAuthenticationFromAPIReachesXDS(t *testing.T) {
	installIstioCRDs(t)
	bin := buildKordon(t)
	ctrlXDS := freeAddr(t)
	_, _, ctrlHTTP := startController(t, bin, writeKubeconfig(t), newNamespace(t), "controller-0", "--xds-listen", ctrlXDS, "--istio-policies")

	ns := newNamespace(t)
	pod := createPod(t, ns, "api-1", "api", "node-x", "10.7.1.1", map[string]string{"app": "api"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	c := podADS(t, ctx, ctrlXDS, pod, "10.7.1.1")
	nodeID := ns + "/" + pod.Name
	go func() { // a data plane ACKs what it is sent
		for {
			resp, err := c.Recv()
			if err != nil || c.Ack(resp) != nil {
				return
			}
		}
	}()

	statusURL := "http://" + ctrlHTTP + "/v1/xds/status?node=" + nodeID
	notes := func() (string, bool) {
		rep, err := xds.FetchStatus(ctx, http.DefaultClient, statusURL)
		if err != nil || len(rep.Nodes) != 1 || rep.Nodes[0].SnapshotVersion == "" {
			return "", false
		}
		return strings.Join(rep.Nodes[0].PolicyNotes, "\n"), true
	}
	note := func(name string) string {
		return fmt.Sprintf("RequestAuthentication %s/%s selects this workload, but this data plane validates no JWT", ns, name)
	}
	eventually(t, 30*time.Second, "a first snapshot for the workload", func() bool { _, ok := notes(); return ok })
	if n, _ := notes(); strings.Contains(n, "RequestAuthentication") {
		t.Fatalf("a RequestAuthentication note before any exists: %s", n)
	}

	ra := func(apiVersion, name string) string {
		return fmt.Sprintf(`apiVersion: %s
kind: RequestAuthentication
metadata: {name: %s, namespace: %s}
spec:
  selector: {matchLabels: {app: api}}
  jwtRules:
  - issuer: https://issuer.example
    jwks: '{"keys":[]}'
`, apiVersion, name, ns)
	}
	createPolicy(t, kube.RequestAuthenticationGVR, ns, ra("security.kordon.dev/v1", "jwt-kordon"))
	eventually(t, 30*time.Second, "the kordon RequestAuthentication in /v1/xds/status", func() bool {
		n, _ := notes()
		return strings.Contains(n, note("jwt-kordon"))
	})
	createPolicy(t, kube.IstioRequestAuthenticationGVR, ns, ra("security.istio.io/v1", "jwt-istio"))
	eventually(t, 30*time.Second, "the Istio RequestAuthentication in /v1/xds/status", func() bool {
		n, _ := notes()
		return strings.Contains(n, note("jwt-istio")) && strings.Contains(n, note("jwt-kordon"))
	})
	eventually(t, 30*time.Second, "Compiled=True on the kordon RequestAuthentication", func() bool {
		u, err := clients.Dynamic.Resource(kube.RequestAuthenticationGVR).Namespace(ns).Get(ctx, "jwt-kordon", metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			if m := c.(map[string]any); m["type"] == "Compiled" && m["status"] == "True" {
				return true
			}
		}
		return false
	})
	// An Istio AuthorizationPolicy (same flag): its DENY rule on a JWT
	// attribute is in force, denying more on this data plane, as its note says.
	createPolicy(t, kube.IstioAuthorizationPolicyGVR, ns, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-banned, namespace: %s}
spec:
  action: DENY
  rules:
  - from:
    - source: {requestPrincipals: ["*/banned"]}
`, ns))
	eventually(t, 30*time.Second, "the Istio AuthorizationPolicy's rule in /v1/xds/status", func() bool {
		n, _ := notes()
		return strings.Contains(n, policy.RuleName(ns, "deny-banned", 0)+": DENY rule needs")
	})
	// A kordon object with the Istio one's name: both stay in force, the
	// Istio one under name.security.istio.io.
	createPolicy(t, kube.RequestAuthenticationGVR, ns, ra("security.kordon.dev/v1", "jwt-istio"))
	eventually(t, 30*time.Second, "same-named kordon and Istio RequestAuthentications both in /v1/xds/status", func() bool {
		n, _ := notes()
		return strings.Contains(n, note("jwt-istio")) && strings.Contains(n, note("jwt-istio.security.istio.io"))
	})
	if err := clients.Dynamic.Resource(kube.RequestAuthenticationGVR).Namespace(ns).Delete(ctx, "jwt-kordon", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the deleted RequestAuthentication's note gone", func() bool {
		n, _ := notes()
		return !strings.Contains(n, note("jwt-kordon")) && strings.Contains(n, note("jwt-istio"))
	})
}
