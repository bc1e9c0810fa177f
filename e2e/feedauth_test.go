package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/manifests"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// feedClient is an HTTPS client for the feed of the controller in sysNS:
// it trusts the published bundle for the controller's SPIFFE ID and
// presents svid when not nil.
func feedClient(t *testing.T, sysNS string, svid x509svid.Source) *http.Client {
	t.Helper()
	bundle, err := kube.ReadBundle(context.Background(), clients.Kube, sysNS)
	if err != nil {
		t.Fatal(err)
	}
	ctrlID := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + sysNS + "/sa/kordon-controller")
	cfg := tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(ctrlID))
	if svid != nil {
		cfg = tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(ctrlID))
	}
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
}

// podSVID is the SVID the controller's issuance API signs for a pod's
// own bound token (audience kordon), as a node agent gets its identity.
func podSVID(t *testing.T, issuance, sysNS, ns, pod, sa string) x509svid.Source {
	t.Helper()
	ctx := context.Background()
	p, err := clients.Kube.CoreV1().Pods(ns).Get(ctx, pod, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tr, err := clients.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{identity.Audience}, BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod, UID: p.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := kube.ReadBundle(ctx, clients.Kube, sysNS)
	if err != nil {
		t.Fatal(err)
	}
	ctrlID := spiffeid.RequireFromString("spiffe://cluster.local/ns/" + sysNS + "/sa/kordon-controller")
	c, err := identity.DialIssuance(issuance, bundle.X509Authorities(), ctrlID, func() (string, error) { return tr.Status.Token, nil })
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	self := &identity.SelfSVID{Client: c}
	// The controller's registry sees the pod a moment after it is created.
	eventually(t, 20*time.Second, "an SVID for "+ns+"/"+pod, func() bool { _, err := self.GetX509SVID(); return err == nil })
	return self
}

// saToken is a token of a new ServiceAccount for the API server's own
// audience, as `kubectl create token` gives a person or a tool.
func saToken(t *testing.T, ns, sa string) string {
	t.Helper()
	ctx := context.Background()
	_, err := clients.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	tr, err := clients.Kube.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authnv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr.Status.Token
}

// securityViewer is install.yaml's ClusterRole for the security team,
// created here when the API server does not have it yet.
const securityViewer = manifests.SecurityViewerRole

func ensureSecurityViewer(t *testing.T) {
	t.Helper()
	_, err := clients.Kube.RbacV1().ClusterRoles().Create(context.Background(), &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: securityViewer},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"security.kordon.dev"}, Resources: []string{"egressalerts", "quarantines"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"security.kordon.dev"}, Resources: []string{"quarantines"}, Verbs: []string{"delete"}},
		},
	}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
}

func bindViewer(t *testing.T, ns, saNS, sa string) {
	t.Helper()
	ctx := context.Background()
	subj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: saNS}}
	ref := rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: securityViewer}
	var err error
	if ns == "" {
		_, err = clients.Kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: saNS + "-" + sa}, Subjects: subj, RoleRef: ref}, metav1.CreateOptions{})
	} else {
		_, err = clients.Kube.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: sa}, Subjects: subj, RoleRef: ref}, metav1.CreateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestAlertFeedAuthentication: the controller's feed on the real API
// server (--alerts-from local, where node agents post). Unauthenticated reads get 401, a token without rights 403, a
// token bound to kordon-security-viewer in one namespace reads exactly
// that namespace (and nothing cluster-wide), one bound cluster-wide reads
// everything; a node agent's SVID posts alerts, a workload's SVID and a
// token cannot; kordon alerts --token-file --ca-file reads as a person.
func TestAlertFeedAuthentication(t *testing.T) {
	bin := buildKordon(t)
	kubeconfig := writeKubeconfig(t)
	sysNS := newNamespace(t)
	feedAddr := freeAddr(t)
	// --alerts-from local: the feed node agents POST to (the default,
	// cluster, serves EgressAlerts the agents write to the API, behind the
	// same authentication: TestControllerAndNodeAgent reads it).
	_, issuance, ctrlHTTP := startController(t, bin, kubeconfig, sysNS, "controller-0", "--feed-listen", feedAddr, "--alerts-from", "local")
	eventually(t, 30*time.Second, "the trust bundle published", func() bool { return bundleConfigMapExists(t, sysNS) })
	feed := "https://" + feedAddr + "/v1/alerts"
	nsA, nsB := newNamespace(t), newNamespace(t)
	ensureSecurityViewer(t)

	createPod(t, sysNS, "kordon-node-a", "kordon-node", "node-a", "10.8.0.1", nil)
	createPod(t, nsA, "web-1", "web", "node-a", "10.8.0.2", nil)
	node := feedClient(t, sysNS, podSVID(t, issuance, sysNS, sysNS, "kordon-node-a", "kordon-node"))
	web := feedClient(t, sysNS, podSVID(t, issuance, sysNS, nsA, "web-1", "web"))
	anon := feedClient(t, sysNS, nil)

	type result struct {
		status int
		header http.Header
		body   map[string]any
	}
	do := func(c *http.Client, method, url, token, body string) result {
		t.Helper()
		code, h, b := feedRequest(t, c, method, url, token, body)
		var out map[string]any
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%s %s: %d, body not JSON: %v", method, url, code, err)
		}
		return result{code, h, out}
	}
	alertJSON := func(ns string) string {
		return fmt.Sprintf(`{"severity":"high","kind":"exfiltration","node":"node-a","namespace":%q,"pod":"web-1","domain":"evil.example","action":"alerted"}`, ns)
	}
	for _, ns := range []string{nsA, nsB} {
		if r := do(node, http.MethodPost, feed, "", alertJSON(ns)); r.status != http.StatusCreated {
			t.Fatalf("node agent POST: %d %v", r.status, r.body)
		}
	}
	if r := do(web, http.MethodPost, feed, "", alertJSON(nsA)); r.status != http.StatusForbidden {
		t.Fatalf("workload SVID POST: %d %v", r.status, r.body)
	}
	if r := do(anon, http.MethodPost, feed, "", alertJSON(nsA)); r.status != http.StatusUnauthorized {
		t.Fatalf("anonymous POST: %d %v", r.status, r.body)
	}
	if r := do(anon, http.MethodPost, feed, cluster.AdminToken, alertJSON(nsA)); r.status != http.StatusForbidden {
		t.Fatalf("POST with an admin token (not a node agent): %d %v", r.status, r.body)
	}

	r := do(anon, http.MethodGet, feed, "", "")
	if r.status != http.StatusUnauthorized || r.header.Get("WWW-Authenticate") != `Bearer realm="kordon"` || r.body["code"] != float64(401) {
		t.Fatalf("unauthenticated GET: %d %q %v", r.status, r.header.Get("WWW-Authenticate"), r.body)
	}
	if r := do(anon, http.MethodGet, feed, "not-a-token", ""); r.status != http.StatusUnauthorized {
		t.Fatalf("GET with a forged token: %d %v", r.status, r.body)
	}
	nobody := saToken(t, nsA, "nobody")
	if r := do(anon, http.MethodGet, feed+"?namespace="+nsA, nobody, ""); r.status != http.StatusForbidden ||
		!strings.Contains(fmt.Sprint(r.body["error"]), `cannot list egressalerts.security.kordon.dev in namespace `+nsA) {
		t.Fatalf("GET with a token without rights: %d %v", r.status, r.body)
	}

	namespaces := func(r result) []string {
		var out []string
		alerts, _ := r.body["alerts"].([]any)
		for _, a := range alerts {
			out = append(out, a.(map[string]any)["namespace"].(string))
		}
		slices.Sort(out)
		return out
	}
	viewer := saToken(t, nsA, "viewer")
	bindViewer(t, nsA, nsA, "viewer")
	// RBAC changes reach the authorizer at once; the token review and
	// decision caches (10s) only hold answers already given.
	eventually(t, 20*time.Second, "the namespace viewer reads "+nsA, func() bool {
		return do(anon, http.MethodGet, feed+"?namespace="+nsA, viewer, "").status == http.StatusOK
	})
	if got := namespaces(do(anon, http.MethodGet, feed+"?namespace="+nsA, viewer, "")); !slices.Equal(got, []string{nsA}) {
		t.Fatalf("namespace viewer got alerts of %v, want only %s", got, nsA)
	}
	if r := do(anon, http.MethodGet, feed+"?namespace="+nsB, viewer, ""); r.status != http.StatusForbidden {
		t.Fatalf("namespace viewer reading %s: %d %v", nsB, r.status, r.body)
	}
	if r := do(anon, http.MethodGet, feed, viewer, ""); r.status != http.StatusForbidden {
		t.Fatalf("namespace viewer reading every namespace: %d %v", r.status, r.body)
	}
	security := saToken(t, sysNS, "security-team")
	bindViewer(t, "", sysNS, "security-team")
	eventually(t, 20*time.Second, "the cluster viewer reads every namespace", func() bool {
		return do(anon, http.MethodGet, feed, security, "").status == http.StatusOK
	})
	want := []string{nsA, nsB}
	slices.Sort(want)
	if got := namespaces(do(anon, http.MethodGet, feed, security, "")); !slices.Equal(got, want) {
		t.Fatalf("cluster viewer got alerts of %v, want %v", got, want)
	}

	// kordon alerts as a person: a token file and the published bundle.
	dir := t.TempDir()
	bundle, err := clients.Kube.CoreV1().ConfigMaps(sysNS).Get(context.Background(), kube.BundleConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caFile, tokenFile := filepath.Join(dir, "bundle.pem"), filepath.Join(dir, "token")
	os.WriteFile(caFile, []byte(bundle.Data["bundle.pem"]), 0o600)
	os.WriteFile(tokenFile, []byte(viewer+"\n"), 0o600)
	run := func(args ...string) (string, error) {
		var out bytes.Buffer
		cmd := exec.Command(bin, append([]string{"alerts", "--server", "https://" + feedAddr, "--ca-file", caFile,
			"--server-spiffe-id", "spiffe://cluster.local/ns/" + sysNS + "/sa/kordon-controller"}, args...)...)
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}
	out, err := run("--token-file", tokenFile, "-n", nsA, "-o", "json")
	if err != nil || strings.Count(out, "\n") != 1 || !strings.Contains(out, `"namespace":"`+nsA+`"`) {
		t.Fatalf("kordon alerts -n %s: %v\n%s", nsA, err, out)
	}
	if out, err := run("--token-file", tokenFile); err == nil || !strings.Contains(out, "403 Forbidden") {
		t.Fatalf("kordon alerts cluster-wide with a namespace token: %v\n%s", err, out)
	}
	if out, err := run("--kubeconfig", kubeconfig); err != nil || !strings.Contains(out, nsA+"/web-1") || !strings.Contains(out, nsB+"/web-1") {
		t.Fatalf("kordon alerts with the kubeconfig's (admin) token: %v\n%s", err, out)
	}

	metrics := metricsOf(t, ctrlHTTP)
	for series, min := range map[string]float64{
		`kordon_alert_auth_requests_total{credential="svid",result="allowed"}`:         2,
		`kordon_alert_auth_requests_total{credential="svid",result="forbidden"}`:       1,
		`kordon_alert_auth_requests_total{credential="none",result="unauthenticated"}`: 2,
		`kordon_alert_auth_requests_total{credential="token",result="forbidden"}`:      3,
	} {
		if v, ok := metricValue(metrics, series); !ok || v < min {
			t.Errorf("%s = %v (present %v), want >= %v", series, v, ok, min)
		}
	}
}
