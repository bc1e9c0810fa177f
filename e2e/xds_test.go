package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
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
	"google.golang.org/protobuf/encoding/protojson"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// podADS opens an ADS stream to the controller at xdsAddr as pod, with a
// pod-bound token, subscribed as a proxyless gRPC server on ip asks: its
// Listener, then the inbound routes carrying RBAC. The stream ends with
// the test.
func podADS(t *testing.T, ctx context.Context, xdsAddr string, pod *corev1.Pod, ip string) *adsclient.Client {
	t.Helper()
	tr, err := clients.Kube.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, pod.Spec.ServiceAccountName, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{"kordon"}, BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The xDS server presents an SVID (URI SAN only, no host name): these
	// tests check the push, not the server's TLS identity.
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}))) //nolint:gosec // see above
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	sctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tr.Status.Token)
	c, err := adsclient.Open(sctx, conn, &corev3.Node{Id: pod.Namespace + "/" + pod.Name})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	if err := c.Subscribe(resourcev3.ListenerType, xds.ServerListenerPrefix+ip+":8080"); err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(resourcev3.RouteType, xds.InboundRouteName); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestPolicyFromAPIReachesXDS: the controller binary pushes a policy
// created through the API to the workload's RouteConfiguration (RBAC per
// route) over ADS, to a client authenticated by its pod-bound token.
func TestPolicyFromAPIReachesXDS(t *testing.T) {
	bin := buildKordon(t)
	ctrlXDS := freeAddr(t)
	startController(t, bin, writeKubeconfig(t), newNamespace(t), "controller-0", "--xds-listen", ctrlXDS)

	ns := newNamespace(t)
	pod := createPod(t, ns, "api-1", "api", "node-x", "10.7.0.1", map[string]string{"app": "api"})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c := podADS(t, ctx, ctrlXDS, pod, "10.7.0.1")
	rule := fmt.Sprintf("ns[%s]-policy[deny-worker]-rule[0]", ns)
	created := false
	for {
		resp, err := c.Recv()
		if err != nil {
			t.Fatalf("ADS stream: %v", err)
		}
		if err := c.Ack(resp); err != nil {
			t.Fatal(err)
		}
		var text strings.Builder
		for _, r := range resp.Resources {
			b, _ := protojson.Marshal(r)
			text.Write(b)
		}
		if strings.Contains(text.String(), rule) {
			return // the policy from the API is in the workload's RBAC
		}
		if !created {
			created = true
			createPolicy(t, kube.AuthorizationPolicyGVR, ns, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-worker, namespace: %s}
spec:
  selector: {matchLabels: {app: api}}
  action: DENY
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/%s/sa/worker"]}
`, ns, ns))
		}
	}
}
