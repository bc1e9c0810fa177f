package e2e

import (
	"bufio"
	"context"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/dnsguard/alert"
	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/kordon-dev/kordon/manifests"
	"github.com/miekg/dns"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// applyNodeScope creates, for real, the install objects that scope node
// agents: kordon-system, the kordon-node service account and RBAC, and
// the kordon-node-scope admission policy and binding.
func applyNodeScope(t *testing.T) {
	t.Helper()
	objs, err := manifests.InstallObjects("../policy/types.go")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, o := range objs {
		u := &unstructured.Unstructured{Object: o}
		keep := u.GetKind() == "Namespace" || u.GetKind() == "ValidatingAdmissionPolicy" || u.GetKind() == "ValidatingAdmissionPolicyBinding" ||
			strings.HasPrefix(u.GetKind(), "Cluster") && u.GetName() == "kordon-node" || u.GetKind() == "ServiceAccount" && u.GetName() == "kordon-node" ||
			(u.GetKind() == "Role" || u.GetKind() == "RoleBinding") && u.GetName() == "kordon-node" || u.GetName() == manifests.SecurityViewerRole
		if !keep {
			continue
		}
		ri := clients.Dynamic.Resource(installGVRs[u.GetKind()])
		if u.GetNamespace() != "" {
			_, err = ri.Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{})
		} else {
			_, err = ri.Create(ctx, u, metav1.CreateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			t.Fatalf("%s %s: %v", u.GetKind(), u.GetName(), err)
		}
	}
}

// nodeAgentKubeconfig makes a node agent's pod (kordon-system, service
// account kordon-node, on node) and a kubeconfig with its pod-bound
// token for server (the API server, or a proxy in front of it).
func nodeAgentKubeconfig(t *testing.T, server, node, suffix string) string {
	t.Helper()
	p := createPod(t, manifests.Namespace, "kordon-node-"+node+"-"+suffix, "kordon-node", node, "10.9.1.1", nil)
	tr, err := clients.Kube.CoreV1().ServiceAccounts(manifests.Namespace).CreateToken(context.Background(), "kordon-node", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: p.Name, UID: p.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return kubeconfigFor(t, server, tr.Status.Token)
}

func kubeconfigFor(t *testing.T, server, token string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: e2e, cluster: {server: %q, insecure-skip-tls-verify: true}}]\n"+
		"users: [{name: u, user: {token: %q}}]\ncontexts: [{name: e2e, context: {cluster: e2e, user: u}}]\ncurrent-context: e2e\n", server, token)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// createOwnedPod is createPod for a pod of Deployment owner (its
// ReplicaSet owner-rs-hash is the controller, as kube-controller-manager
// would make it).
func createOwnedPod(t *testing.T, ns, name, owner, hash, node, ip string) {
	t.Helper()
	ctx := context.Background()
	_, err := clients.Kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: owner}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	yes := true
	p, err := clients.Kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app": owner, "pod-template-hash": hash},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: owner + "-" + hash, UID: "0b0b0b0b-0000-4000-8000-000000000001", Controller: &yes}}},
		Spec: corev1.PodSpec{ServiceAccountName: owner, NodeName: node, Containers: []corev1.Container{{Name: "app", Image: "example.invalid/app"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	if _, err := clients.Kube.CoreV1().Pods(ns).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// tcpProxy forwards a loopback port to target until stopped; started
// again, it listens on the same port (a network cut and its repair).
type tcpProxy struct {
	addr, target string
	mu           sync.Mutex
	ln           net.Listener
	conns        map[net.Conn]struct{}
}

func (p *tcpProxy) start(t *testing.T) {
	t.Helper()
	var ln net.Listener
	var err error
	eventually(t, 10*time.Second, "proxy listening on "+p.addr, func() bool { ln, err = net.Listen("tcp", p.addr); return err == nil })
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	if p.conns == nil {
		p.conns = map[net.Conn]struct{}{}
	}
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", p.target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns[c], p.conns[up] = struct{}{}, struct{}{}
			p.mu.Unlock()
			go func() { _, _ = io.Copy(up, c); up.Close() }()
			go func() { _, _ = io.Copy(c, up); c.Close() }()
		}
	}()
}

func (p *tcpProxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
		delete(p.conns, c)
	}
}

// webhookReceiver records deliveries by webhook-id.
type webhookReceiver struct {
	mu     sync.Mutex
	total  int
	byID   map[string]alert.Alert
	secret string
}

func (r *webhookReceiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	if err := alert.VerifyWebhook(r.secret, req.Header, body, time.Now(), 5*time.Minute); err != nil {
		http.Error(w, err.Error(), http.StatusUnauthorized)
		return
	}
	var a alert.Alert
	if err := json.Unmarshal(body, &a); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	r.mu.Lock()
	r.total++
	r.byID[req.Header.Get("webhook-id")] = a
	r.mu.Unlock()
}

// delivered reports whether a delivery carried the series of a (same
// namespace, pod, kind and domain) with at least its count.
func (r *webhookReceiver) delivered(a alert.Alert) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, d := range r.byID {
		if d.Namespace == a.Namespace && d.Pod == a.Pod && d.Kind == a.Kind && d.Domain == a.Domain && d.Count >= a.Count {
			return true
		}
	}
	return false
}

// clusterAlerts reads a replica's feed (HTTPS, the admin's bearer token).
func clusterAlerts(t *testing.T, sysNS, feedAddr, query string) []alert.Alert {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+feedAddr+"/v1/alerts?"+query, nil)
	req.Header.Set("Authorization", "Bearer "+cluster.AdminToken)
	resp, err := feedClient(t, sysNS, nil).Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var body struct{ Alerts []alert.Alert }
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&body) != nil {
		return nil
	}
	return body.Alerts
}

// followAlerts opens a replica's event stream (?follow=1) resuming after
// id (Last-Event-ID) and returns the first n alerts whose domain starts
// with "blocked".
func followAlerts(t *testing.T, sysNS, feedAddr, query string, id uint64, n int) []alert.Alert {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, "https://"+feedAddr+"/v1/alerts?follow=1&"+query, nil)
	req.Header.Set("Authorization", "Bearer "+cluster.AdminToken)
	req.Header.Set("Last-Event-ID", fmt.Sprint(id))
	resp, err := feedClient(t, sysNS, nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("follow: %s %s", resp.Status, resp.Header.Get("Content-Type"))
	}
	var out []alert.Alert
	sc := bufio.NewScanner(resp.Body)
	for len(out) < n && sc.Scan() {
		data, ok := strings.CutPrefix(sc.Text(), "data: ")
		if !ok {
			continue
		}
		var a alert.Alert
		if err := json.Unmarshal([]byte(data), &a); err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(a.Domain, "blocked") {
			out = append(out, a)
		}
	}
	if len(out) < n {
		t.Fatalf("follow: %d of %d alerts (%v)", len(out), n, sc.Err())
	}
	return out
}

// withPrefix keeps the alerts whose domain starts with prefix.
func withPrefix(list []alert.Alert, prefix string) []alert.Alert {
	var out []alert.Alert
	for _, a := range list {
		if strings.HasPrefix(a.Domain, prefix) {
			out = append(out, a)
		}
	}
	return out
}

func dnsQuery(t *testing.T, server, from, name string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeA)
	c := &dns.Client{Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP(from)}}}
	r, _, err := c.Exchange(m, server)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func edeText(r *dns.Msg) string {
	if o := r.IsEdns0(); o != nil {
		for _, e := range o.Option {
			if x, ok := e.(*dns.EDNS0_EDE); ok {
				return x.ExtraText
			}
		}
	}
	return ""
}

// TestClusterAlertsAndQuarantines runs two controller replicas and two
// node agents (the real binaries, the agents with pod-bound tokens under
// the install's RBAC and admission policy) on the real API server:
//   - blocked-DNS alerts raised on node A before and while the leader is
//     killed reach EgressAlerts; both replicas (the killed one restarted)
//     list the same alerts, ids and counts; the webhook got every series
//     (signed, deduplicated by webhook-id) and Events were recorded;
//   - an exfiltration on node A raises a Quarantine of the Deployment;
//     the Deployment's new pod on node B is refused the domain by node
//     B; deleting the Quarantine lifts it;
//   - the admission policy refuses node A's token writing node B's alert,
//     and an unbound kordon-node token writing anything;
//   - with node B cut from the API server, alerts it raises appear, with
//     their counts, once it is back;
//   - the leader loses its Lease to another holder; a replica leads again
//     and delivers alerts raised after.
func TestClusterAlertsAndQuarantines(t *testing.T) {
	bin := buildKordon(t)
	applyNodeScope(t)
	sysNS, ns := newNamespace(t), newNamespace(t)
	admin := writeKubeconfig(t)
	recv := &webhookReceiver{byID: map[string]alert.Alert{}, secret: "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}
	hook := httptest.NewServer(recv)
	defer hook.Close()
	secretFile := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secretFile, []byte(recv.secret), 0o600); err != nil {
		t.Fatal(err)
	}
	ctrlExtra := []string{"--alert-webhook", "siem=" + hook.URL, "--alert-webhook-secret-file", secretFile}
	type replica struct {
		proc interface{ Signal(os.Signal) error }
		feed string
	}
	startReplica := func(name string) replica {
		args, _, httpAddr, feed := controllerArgs(t, admin, sysNS, name, ctrlExtra...)
		cmd, _ := startProcessCmd(t, bin, args...)
		waitReady(t, "http://"+httpAddr+"/readyz")
		return replica{cmd.Process, feed}
	}
	replicas := map[string]replica{"controller-0": startReplica("controller-0"), "controller-1": startReplica("controller-1")}

	createPolicy(t, kube.EgressPolicyGVR, ns, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: worker, namespace: %s}
spec:
  selector: {matchLabels: {app: worker}}
  allow: ["*.reports.example"]
  detection: {sensitivity: High, action: Quarantine}
`, ns))
	createOwnedPod(t, ns, "worker-7d9f-aaaaa", "worker", "7d9f", "node-a", "127.0.0.93")
	// Another workload of the same policy on node B: never quarantined.
	createPod(t, ns, "other", "other", "node-b", "127.0.0.95", map[string]string{"app": "worker"})

	proxy := &tcpProxy{addr: "127.0.0.1:0", target: strings.TrimPrefix(cluster.URL, "https://")}
	proxy.start(t)
	defer proxy.stop()
	upstream := startUpstream(t)
	type agent struct{ dns, http string }
	startAgent := func(node, server string) agent {
		a := agent{freeAddr(t), freeAddr(t)}
		startProcess(t, bin, "node", "--kubeconfig", nodeAgentKubeconfig(t, server, node, ns), "--node", node, "--dns-listen", a.dns, "--upstream", upstream,
			"--http-listen", a.http, "--state-dir", t.TempDir(), "--root-namespace", sysNS, "--log", "", "--namespace", manifests.Namespace,
			"--alert-cooldown", "1ns", "--workload-api-socket", "")
		waitReady(t, "http://"+a.http+"/readyz")
		return a
	}
	nodeA := startAgent("node-a", cluster.URL)
	nodeB := startAgent("node-b", "https://"+proxy.addr)
	eventually(t, 20*time.Second, "the policy on node A", func() bool {
		return dnsQuery(t, nodeA.dns, "127.0.0.93", "github.com.").Rcode == dns.RcodeNameError
	})

	// 1. Alerts across a leader kill.
	blocked := func(from, server string, from0, to int) {
		for i := from0; i < to; i++ {
			if r := dnsQuery(t, server, from, fmt.Sprintf("x.blocked%d.example.", i)); r.Rcode != dns.RcodeNameError {
				t.Fatalf("blocked%d.example: %s", i, dns.RcodeToString[r.Rcode])
			}
		}
	}
	nsBlocked := "namespace=" + ns + "&kind=blocked"
	blocked("127.0.0.93", nodeA.dns, 0, 10)
	eventually(t, 30*time.Second, "10 blocked series on both replicas", func() bool {
		return len(withPrefix(clusterAlerts(t, sysNS, replicas["controller-0"].feed, nsBlocked), "blocked")) == 10 &&
			len(withPrefix(clusterAlerts(t, sysNS, replicas["controller-1"].feed, nsBlocked), "blocked")) == 10
	})
	var leader string
	eventually(t, 30*time.Second, "a leader", func() bool { leader = leaseHolder(t, sysNS); return leader != "" })
	if replicas[leader].proc == nil {
		t.Fatalf("lease holder %q is not a replica", leader)
	}
	if err := replicas[leader].proc.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killedAt := time.Now()
	blocked("127.0.0.93", nodeA.dns, 10, 20) // while nobody leads
	survivor := "controller-0"
	if leader == survivor {
		survivor = "controller-1"
	}
	eventually(t, 60*time.Second, "the survivor takes the Lease", func() bool { return leaseHolder(t, sysNS) == survivor })
	t.Logf("failover: %s led %.1fs after %s was killed", survivor, time.Since(killedAt).Seconds(), leader)
	replicas[leader] = startReplica(leader)
	var list0, list1 []alert.Alert
	eventually(t, 30*time.Second, "20 blocked series, the same on both replicas", func() bool {
		list0 = withPrefix(clusterAlerts(t, sysNS, replicas["controller-0"].feed, nsBlocked), "blocked")
		list1 = withPrefix(clusterAlerts(t, sysNS, replicas["controller-1"].feed, nsBlocked), "blocked")
		b0, _ := json.Marshal(list0)
		b1, _ := json.Marshal(list1)
		return len(list0) == 20 && string(b0) == string(b1)
	})
	domains := map[string]bool{}
	for _, a := range list0 {
		domains[a.Domain] = true
		if a.Count != 1 || a.Node != "node-a" || a.Pod != "worker-7d9f-aaaaa" {
			t.Errorf("series %+v", a)
		}
	}
	if len(domains) != 20 {
		t.Fatalf("%d distinct domains, want 20", len(domains))
	}
	// The event stream resumes on either replica: ids are the same.
	for _, pair := range [][2]string{{"controller-0", "controller-1"}, {"controller-1", "controller-0"}} {
		from := list0[9].ID
		got := followAlerts(t, sysNS, replicas[pair[1]].feed, nsBlocked, from, 10)
		for i, a := range got {
			if a.ID != list0[10+i].ID || a.Domain != list0[10+i].Domain {
				t.Fatalf("stream from %s after %s's id %d: event %d is %d %s, want %d %s", pair[1], pair[0], from, i, a.ID, a.Domain, list0[10+i].ID, list0[10+i].Domain)
			}
		}
	}
	eventually(t, 60*time.Second, "every series delivered to the webhook", func() bool {
		for _, a := range list0 {
			if !recv.delivered(a) {
				return false
			}
		}
		return true
	})
	recv.mu.Lock()
	t.Logf("webhook: %d deliveries, %d distinct webhook-ids, for %d series", recv.total, len(recv.byID), len(list0))
	recv.mu.Unlock()
	eventually(t, 30*time.Second, "a DNSBlocked Event on the pod", func() bool {
		for _, r := range podEventReasons(t, ns, "worker-7d9f-aaaaa") {
			if r == "DNSBlocked" {
				return true
			}
		}
		return false
	})

	// 2. A quarantine raised on node A is enforced by node B for the
	// Deployment's new pod.
	enc := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString([]byte(strings.Repeat("db-dump:users:password-hash;", 60))), "="))
	for i := 0; i < 30 && (i+1)*50 <= len(enc); i++ {
		dnsQuery(t, nodeA.dns, "127.0.0.93", fmt.Sprintf("%s.%d.reports.example.", enc[i*50:(i+1)*50], i))
	}
	var quar *unstructured.Unstructured
	eventually(t, 30*time.Second, "a Quarantine of Deployment worker", func() bool {
		l, err := clients.Dynamic.Resource(kube.QuarantineGVR).Namespace(ns).List(context.Background(), metav1.ListOptions{})
		if err != nil || len(l.Items) != 1 {
			return false
		}
		quar = &l.Items[0]
		return true
	})
	kind, _, _ := unstructured.NestedString(quar.Object, "spec", "owner", "kind")
	owner, _, _ := unstructured.NestedString(quar.Object, "spec", "owner", "name")
	qdomains, _, _ := unstructured.NestedStringSlice(quar.Object, "spec", "domains")
	qnode, _, _ := unstructured.NestedString(quar.Object, "spec", "node")
	if kind != "Deployment" || owner != "worker" || len(qdomains) != 1 || qdomains[0] != "reports.example" || qnode != "node-a" {
		t.Fatalf("quarantine spec: %v", quar.Object["spec"])
	}
	deletePod(t, ns, "worker-7d9f-aaaaa")
	createOwnedPod(t, ns, "worker-7d9f-bbbbb", "worker", "7d9f", "node-b", "127.0.0.94")
	eventually(t, 30*time.Second, "node B refuses reports.example to the new pod", func() bool {
		r := dnsQuery(t, nodeB.dns, "127.0.0.94", "q1.reports.example.")
		return r.Rcode == dns.RcodeNameError && strings.Contains(edeText(r), "kubectl delete quarantine -n "+ns+" "+quar.GetName())
	})
	if r := dnsQuery(t, nodeB.dns, "127.0.0.95", "q1.reports.example."); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("another workload on node B: %s", dns.RcodeToString[r.Rcode])
	}
	if err := clients.Dynamic.Resource(kube.QuarantineGVR).Namespace(ns).Delete(context.Background(), quar.GetName(), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if l, err := clients.Dynamic.Resource(kube.QuarantineGVR).Namespace(ns).List(context.Background(), metav1.ListOptions{}); err != nil || len(l.Items) != 0 {
		t.Fatalf("quarantines left after lifting the one raised (a wider one by service account?): %v %v", err, l)
	}
	eventually(t, 30*time.Second, "deleting the Quarantine lifts it on node B", func() bool {
		return dnsQuery(t, nodeB.dns, "127.0.0.94", "q2.reports.example.").Rcode == dns.RcodeSuccess
	})

	// 3. The admission policy keeps each node agent to its own node.
	forged := func(token, node string) error {
		c, err := kube.ClientsFor(cluster.ConfigForToken(token))
		if err != nil {
			t.Fatal(err)
		}
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "security.kordon.dev/v1", "kind": "EgressAlert",
			"metadata": map[string]any{"name": "forged-" + node, "namespace": ns},
			"spec": map[string]any{"severity": "high", "kind": "blocked", "node": node, "domain": "x.example", "action": "blocked",
				"count": 1, "firstSeen": "2026-01-01T00:00:00Z", "lastSeen": "2026-01-01T00:00:00Z"}}}
		_, err = c.Dynamic.Resource(kube.EgressAlertGVR).Namespace(ns).Create(context.Background(), u, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err
	}
	agentA, err := clients.Kube.CoreV1().Pods(manifests.Namespace).Get(context.Background(), "kordon-node-node-a-"+ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	token := func(bound *authnv1.BoundObjectReference) string {
		tr, err := clients.Kube.CoreV1().ServiceAccounts(manifests.Namespace).CreateToken(context.Background(), "kordon-node",
			&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{BoundObjectRef: bound}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	tokA := token(&authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: agentA.Name, UID: agentA.UID})
	if err := forged(tokA, "node-a"); err != nil {
		t.Fatalf("node A writing its own alert: %v", err)
	}
	if err := forged(tokA, "node-b"); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "the node agent of node-a may only write objects whose spec.node is node-a") {
		t.Fatalf("node A writing node B's alert: %v", err)
	}
	if err := forged(token(nil), "node-a"); !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "must use a token bound to its pod") {
		t.Fatalf("an unbound kordon-node token: %v", err)
	}

	// 4. Node B cut from the API server: its alerts wait in its log.
	proxy.stop()
	const perDomain = 4
	for round := 0; round < perDomain; round++ {
		for d := 0; d < 3; d++ {
			if r := dnsQuery(t, nodeB.dns, "127.0.0.94", fmt.Sprintf("r%d.cut%d.example.", round, d)); r.Rcode != dns.RcodeNameError {
				t.Fatalf("cut%d.example: %s", d, dns.RcodeToString[r.Rcode])
			}
		}
	}
	nsCut := func() map[string]int64 {
		out := map[string]int64{}
		for _, a := range withPrefix(clusterAlerts(t, sysNS, replicas[survivor].feed, nsBlocked), "cut") {
			out[a.Domain] = a.Count
		}
		return out
	}
	eventually(t, 30*time.Second, "node B's writes failing while cut", func() bool {
		resp, err := http.Get("http://" + nodeB.http + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(b), `kordon_kube_state_write_errors_total{resource="egressalerts"}`)
	})
	if got := nsCut(); len(got) != 0 {
		t.Fatalf("alerts of a cut node reached the API: %v", got)
	}
	proxy.start(t)
	var cut map[string]int64
	defer func() {
		if t.Failed() {
			t.Logf("cut series: %v", cut)
		}
	}()
	eventually(t, 90*time.Second, "node B's buffered alerts in the API with their counts", func() bool {
		cut = nsCut()
		return len(cut) == 3 && cut["cut0.example"] == perDomain && cut["cut1.example"] == perDomain && cut["cut2.example"] == perDomain
	})
	t.Logf("after the cut: %v", cut)

	// 5. The leader loses its Lease; a replica leads again and delivers.
	leases := clients.Kube.CoordinationV1().Leases(sysNS)
	l, err := leases.Get(context.Background(), "kordon-controller", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := *l.Spec.HolderIdentity
	thief, now, dur := "thief", metav1.NewMicroTime(time.Now()), int32(5)
	l.Spec.HolderIdentity, l.Spec.AcquireTime, l.Spec.RenewTime, l.Spec.LeaseDurationSeconds = &thief, &now, &now, &dur
	if _, err := leases.Update(context.Background(), l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "a replica leads again", func() bool { h := leaseHolder(t, sysNS); return h != "thief" && replicas[h].proc != nil })
	t.Logf("lease: %s lost it to a thief; %s leads now", before, leaseHolder(t, sysNS))
	blocked("127.0.0.94", nodeB.dns, 100, 101)
	eventually(t, 60*time.Second, "an alert raised after the takeover is delivered", func() bool {
		for _, a := range clusterAlerts(t, sysNS, replicas[survivor].feed, nsBlocked) {
			if a.Domain == "blocked100.example" {
				return recv.delivered(a)
			}
		}
		return false
	})
	final := clusterAlerts(t, sysNS, replicas["controller-0"].feed, "namespace="+ns)
	sort.Slice(final, func(i, j int) bool { return final[i].ID < final[j].ID })
	recv.mu.Lock()
	t.Logf("end: %d series in %s, webhook %d deliveries / %d distinct ids", len(final), ns, recv.total, len(recv.byID))
	recv.mu.Unlock()
}
