package e2e

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard"
	"github.com/kordon-dev/kordon/identity"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/internal/workload"
	"github.com/kordon-dev/kordon/manifests"
	"github.com/kordon-dev/kordon/policy"
	"github.com/miekg/dns"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

var (
	cluster *Cluster
	clients *kube.Clients
)

func TestMain(m *testing.M) {
	bin := BinDir()
	// Missing binaries fail the package: an e2e run that tested nothing
	// must not report ok (make e2e-bins builds them once).
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if _, err := os.Stat(filepath.Join(bin, name)); err != nil {
			fmt.Fprintf(os.Stderr, "e2e: %s not found in %s: run make e2e-bins (hack/e2e-bins.sh) or set KORDON_E2E_BIN\n", name, bin)
			os.Exit(1)
		}
	}
	dir, err := os.MkdirTemp("", "kordon-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	logs, _ := os.Create(filepath.Join(dir, "control-plane.log"))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	cluster, err = StartCluster(ctx, bin, dir, logs)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		if b, rerr := os.ReadFile(filepath.Join(dir, "control-plane.log")); rerr == nil {
			os.Stderr.Write(tail(b, 3000))
		}
		os.Exit(1)
	}
	clients, err = kube.ClientsFor(cluster.Config())
	if err == nil {
		err = installCRDs()
	}
	code := 1
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
	} else {
		code = m.Run()
	}
	cluster.Stop()
	logs.Close()
	os.RemoveAll(dir)
	os.Exit(code)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// installCRDs creates the generated CRDs and waits until they serve.
func installCRDs() error {
	crds, err := manifests.CRDs("../policy/types.go")
	if err != nil {
		return err
	}
	gvr := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	ctx := context.Background()
	for _, c := range crds {
		if _, err := clients.Dynamic.Resource(gvr).Create(ctx, &unstructured.Unstructured{Object: c}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create CRD: %w", err)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		_, e1 := clients.Dynamic.Resource(kube.AuthorizationPolicyGVR).List(ctx, metav1.ListOptions{})
		_, e2 := clients.Dynamic.Resource(kube.EgressPolicyGVR).List(ctx, metav1.ListOptions{})
		if e1 == nil && e2 == nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond) // polling CRD establishment, bounded
	}
	return fmt.Errorf("CRDs not served within 30s")
}

var nsCounter atomic.Int64

// newNamespace creates a unique namespace (deleted namespaces never
// finish terminating without a controller-manager).
func newNamespace(t *testing.T) string {
	t.Helper()
	name := fmt.Sprintf("e2e-%d-%d", time.Now().UnixNano()%100000, nsCounter.Add(1))
	_, err := clients.Kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return name
}

// createPod creates a ServiceAccount (if needed) and a Pod on node with
// ip, and patches its status as a kubelet would.
func createPod(t *testing.T, ns, name, sa, node, ip string, labels map[string]string) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	_, err := clients.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	p, err := clients.Kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	p, err = clients.Kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func deletePod(t *testing.T, ns, name string) {
	t.Helper()
	zero := int64(0)
	if err := clients.Kube.CoreV1().Pods(ns).Delete(context.Background(), name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(50 * time.Millisecond) // polling, bounded by the deadline
	}
}

// installGVRs maps the kinds of install.yaml to their resources.
var installGVRs = map[string]schema.GroupVersionResource{
	"Namespace":                        {Version: "v1", Resource: "namespaces"},
	"ServiceAccount":                   {Version: "v1", Resource: "serviceaccounts"},
	"Service":                          {Version: "v1", Resource: "services"},
	"ClusterRole":                      {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
	"ClusterRoleBinding":               {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
	"Role":                             {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"},
	"RoleBinding":                      {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"},
	"Deployment":                       {Group: "apps", Version: "v1", Resource: "deployments"},
	"DaemonSet":                        {Group: "apps", Version: "v1", Resource: "daemonsets"},
	"PodDisruptionBudget":              {Group: "policy", Version: "v1", Resource: "poddisruptionbudgets"},
	"NetworkPolicy":                    {Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
	"CustomResourceDefinition":         {Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"},
	"ValidatingAdmissionPolicy":        {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicies"},
	"ValidatingAdmissionPolicyBinding": {Group: "admissionregistration.k8s.io", Version: "v1", Resource: "validatingadmissionpolicybindings"},
}

// TestInstallManifests: every object of install.yaml passes server-side
// validation (a dry-run create) on a real API server.
func TestInstallManifests(t *testing.T) {
	objs, err := manifests.InstallObjects("../policy/types.go")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// The namespace must exist for namespaced dry-runs.
	_, err = clients.Kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: manifests.Namespace}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	for _, o := range objs {
		u := &unstructured.Unstructured{Object: o}
		gvr, ok := installGVRs[u.GetKind()]
		if !ok {
			t.Fatalf("no mapping for %s", u.GetKind())
		}
		// A server-side apply dry-run (kubectl apply --server-side
		// --dry-run=server) validates whether or not another test created
		// the object already.
		body, err := json.Marshal(o)
		if err != nil {
			t.Fatal(err)
		}
		force := true
		opts := metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}, FieldValidation: "Strict", FieldManager: "kordon-e2e", Force: &force}
		if u.GetNamespace() != "" {
			_, err = clients.Dynamic.Resource(gvr).Namespace(u.GetNamespace()).Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts)
		} else {
			_, err = clients.Dynamic.Resource(gvr).Patch(ctx, u.GetName(), types.ApplyPatchType, body, opts)
		}
		if err != nil {
			t.Errorf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
	// The CRD schema rejects what the API forbids, server-side.
	bad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "security.kordon.dev/v1", "kind": "EgressPolicy",
		"metadata": map[string]any{"name": "bad", "namespace": manifests.Namespace},
		"spec":     map[string]any{"mode": "Sometimes", "allow": "not-a-list"},
	}}
	_, err = clients.Dynamic.Resource(kube.EgressPolicyGVR).Namespace(manifests.Namespace).Create(ctx, bad, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err == nil || !strings.Contains(err.Error(), "spec.mode") {
		t.Fatalf("schema did not reject an invalid EgressPolicy: %v", err)
	}
}

func createPolicy(t *testing.T, gvr schema.GroupVersionResource, ns, yamlSpec string) {
	t.Helper()
	_, err := policy.Parse("t.yaml", []byte(yamlSpec), policy.LoadOptions{DefaultNamespace: ns})
	obj := map[string]any{}
	if err := yamlToMap(yamlSpec, &obj); err != nil {
		t.Fatal(err)
	}
	_, cerr := clients.Dynamic.Resource(gvr).Namespace(ns).Create(context.Background(), &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
	if cerr != nil {
		t.Fatalf("create (local parse error: %v): %v", err, cerr)
	}
}

// TestPoliciesFromAPI: policies created through the API reach the policy
// set; an invalid one gets Compiled=False with the decoder's error and
// changes nothing; a later invalid edit keeps the last good version.
func TestPoliciesFromAPI(t *testing.T) {
	ns := newNamespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var mu sync.Mutex
	var current *policy.Set
	src := &kube.PolicySource{Clients: clients, OnChange: func(s *policy.Set) { mu.Lock(); current = s; mu.Unlock() }, WriteStatus: func() bool { return true }}
	synced := make(chan struct{})
	go func() { _ = src.Run(ctx, synced) }()
	<-synced
	get := func() *policy.Set { mu.Lock(); defer mu.Unlock(); return current }
	has := func(name string) bool {
		for _, p := range get().Authorization {
			if p.Metadata.Namespace == ns && p.Metadata.Name == name {
				return true
			}
		}
		return false
	}
	createPolicy(t, kube.AuthorizationPolicyGVR, ns, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: allow-frontend, namespace: %s}
spec:
  selector: {matchLabels: {app: payments}}
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/%s/sa/frontend"]}
`, ns, ns))
	eventually(t, 20*time.Second, "valid policy in the set", func() bool { return has("allow-frontend") })
	condition := func(name string) (string, string) {
		u, err := clients.Dynamic.Resource(kube.AuthorizationPolicyGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return "", ""
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		for _, c := range conds {
			m := c.(map[string]any)
			if m["type"] == "Compiled" {
				return fmt.Sprint(m["status"]), fmt.Sprint(m["message"])
			}
		}
		return "", ""
	}
	eventually(t, 20*time.Second, "Compiled=True", func() bool { s, _ := condition("allow-frontend"); return s == "True" })

	// CUSTOM passes the CRD schema but kordon refuses it: status says why.
	createPolicy(t, kube.AuthorizationPolicyGVR, ns, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: AuthorizationPolicy
metadata: {name: custom, namespace: %s}
spec:
  action: CUSTOM
  provider: {name: ext-authz}
  rules: [{}]
`, ns))
	eventually(t, 20*time.Second, "Compiled=False on the CUSTOM policy", func() bool {
		s, msg := condition("custom")
		return s == "False" && strings.Contains(msg, "spec.action: CUSTOM is not supported")
	})
	if has("custom") {
		t.Fatal("an invalid policy entered the set")
	}
	// Break the valid policy: the last good version stays in force.
	u, err := clients.Dynamic.Resource(kube.AuthorizationPolicyGVR).Namespace(ns).Get(ctx, "allow-frontend", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = unstructured.SetNestedSlice(u.Object, []any{map[string]any{"to": []any{map[string]any{"operation": map[string]any{"paths": []any{"/a/*/b"}}}}}}, "spec", "rules")
	if _, err := clients.Dynamic.Resource(kube.AuthorizationPolicyGVR).Namespace(ns).Update(ctx, u, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "Compiled=False after a bad edit", func() bool {
		s, msg := condition("allow-frontend")
		return s == "False" && strings.Contains(msg, "invalid wildcard") && strings.Contains(msg, "previous valid version stays in force")
	})
	for _, p := range get().Authorization {
		if p.Metadata.Name == "allow-frontend" && p.Metadata.Namespace == ns && len(p.Spec.Rules[0].From) != 1 {
			t.Fatal("the bad edit replaced the last good version")
		}
	}
	if !has("allow-frontend") {
		t.Fatal("last good version dropped")
	}
}

// TestPodIPAttributedInDNSGuard: a pod created through the API is found
// by its IP, and a real DNS query from that IP is logged with its
// namespace and name and filtered by its EgressPolicy.
func TestPodIPAttributedInDNSGuard(t *testing.T) {
	ns := newNamespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := workload.NewRegistry()
	if err := kube.RunWorkloads(ctx, clients, reg, "node-dns"); err != nil {
		t.Fatal(err)
	}
	createPod(t, ns, "frontend-1", "frontend", "node-dns", "127.0.0.77", map[string]string{"app": "frontend"})
	createPod(t, ns, "elsewhere", "frontend", "node-other", "127.0.0.78", map[string]string{"app": "frontend"})
	eventually(t, 20*time.Second, "pod in the registry", func() bool { _, ok := reg.ByIP(netip.MustParseAddr("127.0.0.77")); return ok })
	if _, ok := reg.ByIP(netip.MustParseAddr("127.0.0.78")); ok {
		t.Fatal("the node agent's registry holds a pod of another node")
	}

	upstream := startUpstream(t)
	var logBuf syncBuffer
	srv, err := dnsguard.New(dnsguard.Config{Registry: reg, Upstreams: []string{upstream}, QueryLog: &logBuf, Node: "node-dns"})
	if err != nil {
		t.Fatal(err)
	}
	set, err := policy.Parse("egress.yaml", []byte(fmt.Sprintf("apiVersion: security.kordon.dev/v1\nkind: EgressPolicy\nmetadata: {name: fe, namespace: %s}\nspec:\n  selector: {matchLabels: {app: frontend}}\n  allow: [api.example.com]\n", ns)), policy.LoadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.SetPolicies(set); err != nil {
		t.Fatal(err)
	}
	pc, ln, err := dnsguard.ListenUDPTCP("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(ctx, pc, ln) }()
	defer srv.Close()
	q := func(name string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP("127.0.0.77")}}}
		r, _, err := c.Exchange(m, pc.LocalAddr().String())
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := q("api.example.com."); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("allowed name: %s", dns.RcodeToString[r.Rcode])
	}
	if r := q("exfil.example.net."); r.Rcode != dns.RcodeNameError {
		t.Fatalf("blocked name: %s", dns.RcodeToString[r.Rcode])
	}
	srv.Close()
	out := logBuf.String()
	want := fmt.Sprintf(`"namespace":"%s","pod":"frontend-1","serviceAccount":"frontend","spiffeId":"spiffe://cluster.local/ns/%s/sa/frontend","node":"node-dns"`, ns, ns)
	if strings.Count(out, want) != 2 || !strings.Contains(out, `"verdict":"blocked","policy":"`+ns+`/fe"`) {
		t.Fatalf("query log does not attribute the pod:\n%s", out)
	}
}

// TestTokenBoundIssuance: a TokenRequest bound to a pod yields that pod's
// SVID and nothing else; a node agent cannot get SVIDs for another node's
// pods; deleting the pod revokes issuance.
func TestTokenBoundIssuance(t *testing.T) {
	ns := newNamespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reg := workload.NewRegistry()
	if err := kube.RunWorkloads(ctx, clients, reg, ""); err != nil {
		t.Fatal(err)
	}
	frontend := createPod(t, ns, "frontend-1", "frontend", "node-a", "10.1.0.5", nil)
	createPod(t, ns, "payments-1", "payments", "node-b", "10.1.0.6", nil)
	agentNS := newNamespace(t)
	agent := createPod(t, agentNS, "kordon-node-a", "kordon-node", "node-a", "10.1.0.2", nil)
	eventually(t, 20*time.Second, "pods in the registry", func() bool { return len(reg.List()) >= 3 })

	ca, err := identity.New(ctx, identity.Config{Store: &kube.SecretStore{Client: clients.Kube, Namespace: agentNS, Name: "kordon-ca"}})
	if err != nil {
		t.Fatal(err)
	}
	iss, err := identity.NewIssuance(identity.IssuanceConfig{CA: ca, Reviewer: &kube.TokenReviewer{Client: clients.Kube}, Pods: reg, NodeAgents: []string{agentNS + "/kordon-node"}})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctrlID := spiffeid.RequireFromString("spiffe://cluster.local/ns/kordon-system/sa/kordon-controller")
	go func() { _ = identity.ServeIssuance(ctx, ln, iss, identity.ServerTLS(ca, ctrlID)) }()

	token := func(p *corev1.Pod) string {
		tr, err := clients.Kube.CoreV1().ServiceAccounts(p.Namespace).CreateToken(ctx, p.Spec.ServiceAccountName, &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
			Audiences: []string{identity.Audience}, BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	sign := func(tok, podNS, pod string) (*identity.SignResponse, error) {
		c, err := identity.DialIssuance(ln.Addr().String(), ca.Roots(), ctrlID, func() (string, error) { return tok, nil })
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		return c.Sign(ctx, identity.SignRequest{CSR: csr, Namespace: podNS, Pod: pod})
	}
	feTok := token(frontend)
	resp, err := sign(feTok, "", "")
	if err != nil || resp.SPIFFEID != "spiffe://cluster.local/ns/"+ns+"/sa/frontend" {
		t.Fatalf("pod-bound token: %v %v", resp, err)
	}
	if _, err := sign(feTok, ns, "payments-1"); err == nil {
		t.Fatal("a workload token got another pod's SVID")
	}
	agentTok := token(agent)
	if resp, err := sign(agentTok, ns, "frontend-1"); err != nil || !strings.HasSuffix(resp.SPIFFEID, "/sa/frontend") {
		t.Fatalf("node agent for a pod on its node: %v %v", resp, err)
	}
	if _, err := sign(agentTok, ns, "payments-1"); err == nil || !strings.Contains(err.Error(), "is not scheduled on node node-a") {
		t.Fatalf("node agent got an SVID for another node's pod: %v", err)
	}
	if _, err := sign("not-a-token", "", ""); err == nil {
		t.Fatal("a forged token was accepted")
	}
	deletePod(t, ns, "frontend-1")
	// The registry drops the pod at once; the apiserver's token-review
	// cache (~10 s) would let the token live a little longer without it.
	eventually(t, 20*time.Second, "issuance revoked after the pod is deleted", func() bool {
		_, err := sign(feTok, "", "")
		return err != nil
	})
}

// TestCASecretOneRootAcrossReplicas: replicas starting together agree on
// one root stored in one Secret, and a restart keeps it.
func TestCASecretOneRootAcrossReplicas(t *testing.T) {
	ns := newNamespace(t)
	ctx := context.Background()
	store := func() identity.Store {
		return &kube.SecretStore{Client: clients.Kube, Namespace: ns, Name: "kordon-ca"}
	}
	var wg sync.WaitGroup
	roots := make([]*x509.Certificate, 4)
	errs := make([]error, 4)
	for i := range roots {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			ca, err := identity.New(ctx, identity.Config{Store: store()})
			errs[i] = err
			if err == nil {
				roots[i] = ca.Roots()[0]
			}
		}(i)
	}
	wg.Wait()
	for i := range roots {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		if !roots[i].Equal(roots[0]) {
			t.Fatal("replicas created different roots")
		}
	}
	ca, err := identity.New(ctx, identity.Config{Store: store()})
	if err != nil || !ca.Roots()[0].Equal(roots[0]) {
		t.Fatalf("restart changed the root: %v", err)
	}
	if err := ca.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	other, err := identity.New(ctx, identity.Config{Store: store()})
	if err != nil || len(other.Roots()) != 2 {
		t.Fatalf("another replica does not see the rotation: %v", err)
	}
}
