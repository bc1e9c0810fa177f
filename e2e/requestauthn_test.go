package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/xds"
	"github.com/kordon-dev/kordon/xds/adsclient"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	authnv1 "k8s.io/api/authentication/v1"
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
// (the note that its tokens are not checked and JWT rules fail closed);
// deleting one takes its note away. kordon's object gets Compiled=True.
func TestRequestAuthenticationFromAPIReachesXDS(t *testing.T) {
	installIstioCRDs(t)
	bin := buildKordon(t)
	kubeconfig := writeKubeconfig(t)
	sysNS := newNamespace(t)
	ctrlHTTP, ctrlXDS := freeAddr(t), freeAddr(t)
	startProcess(t, bin, "controller", "--kubeconfig", kubeconfig, "--namespace", sysNS, "--root-namespace", sysNS,
		"--xds-listen", ctrlXDS, "--issuance-listen", "127.0.0.1:0", "--http-listen", ctrlHTTP, "--alerts-dir", t.TempDir(), "--pod-name", "controller-0",
		"--istio-policies")
	waitReady(t, "http://"+ctrlHTTP+"/readyz")

	ns := newNamespace(t)
	pod := createPod(t, ns, "api-1", "api", "node-x", "10.7.1.1", map[string]string{"app": "api"})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	tr, err := clients.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "api", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{"kordon"}, BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The xDS server presents an SVID (URI SAN only): this test checks
	// what is pushed, not the server's TLS identity.
	conn, err := grpc.NewClient(ctrlXDS, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))) //nolint:gosec // see above
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	nodeID := ns + "/" + pod.Name
	c, err := adsclient.Open(metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tr.Status.Token), conn, &corev3.Node{Id: nodeID})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Subscribe(resourcev3.ListenerType, xds.ServerListenerPrefix+"10.7.1.1:8080"); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(resourcev3.RouteType, xds.InboundRouteName); err != nil {
		t.Fatal(err)
	}
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
	if err := clients.Dynamic.Resource(kube.RequestAuthenticationGVR).Namespace(ns).Delete(ctx, "jwt-kordon", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the deleted RequestAuthentication's note gone", func() bool {
		n, _ := notes()
		return !strings.Contains(n, note("jwt-kordon")) && strings.Contains(n, note("jwt-istio"))
	})
}
