package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/kordon-dev/kordon/internal/kube"
	"github.com/miekg/dns"
)

// TestNodeAgentsSideBySide is a surge rollout of the node DaemonSet on
// one node, with the real binary and API server: a second kordon node with
// the same flags (the same DNS and HTTP addresses and state directory)
// starts beside the first, becomes ready, the first gets SIGTERM and
// exits cleanly, and a pod's DNS, filtered by its EgressPolicy, never
// fails meanwhile.
func TestNodeAgentsSideBySide(t *testing.T) {
	bin := buildKordon(t)
	kubeconfig := writeKubeconfig(t)
	sysNS, ns := newNamespace(t), newNamespace(t)
	ctrlHTTP := freeAddr(t)
	startProcess(t, bin, "controller", "--kubeconfig", kubeconfig, "--namespace", sysNS, "--root-namespace", sysNS,
		"--xds-listen", "127.0.0.1:0", "--issuance-listen", freeAddr(t), "--http-listen", ctrlHTTP, "--feed-listen", freeAddr(t),
		"--alerts-dir", t.TempDir(), "--pod-name", "controller-0")
	waitReady(t, "http://"+ctrlHTTP+"/readyz")
	createPod(t, ns, "worker-1", "worker", "node-surge", "127.0.0.93", map[string]string{"app": "worker"})
	createPolicy(t, kube.EgressPolicyGVR, ns, fmt.Sprintf(`apiVersion: security.kordon.dev/v1
kind: EgressPolicy
metadata: {name: worker, namespace: %s}
spec:
  selector: {matchLabels: {app: worker}}
  allow: ["*.reports.example"]
`, ns))
	upstream := startUpstream(t)
	dnsAddr, nodeHTTP, stateDir := freeAddr(t), freeAddr(t), t.TempDir()
	args := []string{"node", "--kubeconfig", kubeconfig, "--node", "node-surge", "--dns-listen", dnsAddr, "--upstream", upstream,
		"--http-listen", nodeHTTP, "--state-dir", stateDir, "--root-namespace", sysNS, "--query-log", "", "--namespace", sysNS}
	old, oldOut := startProcessCmd(t, bin, args...)
	waitReady(t, "http://"+nodeHTTP+"/readyz")

	query := func(name string) (*dns.Msg, error) {
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		c := &dns.Client{Timeout: 2 * time.Second, Dialer: &net.Dialer{LocalAddr: &net.UDPAddr{IP: net.ParseIP("127.0.0.93")}}}
		r, _, err := c.Exchange(m, dnsAddr)
		return r, err
	}
	eventually(t, 20*time.Second, "egress policy enforced for the pod", func() bool {
		r, err := query("github.com.")
		return err == nil && r.Rcode == dns.RcodeNameError
	})

	// A pod's queries all along: an allowed name answered, a blocked one
	// refused, one after the other.
	var sent, bad atomic.Int64
	var firstBad atomic.Value
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			name, want := fmt.Sprintf("q%d.reports.example.", i), dns.RcodeSuccess
			if i%2 == 1 {
				name, want = "github.com.", dns.RcodeNameError
			}
			r, err := query(name)
			sent.Add(1)
			if err != nil || r.Rcode != want {
				bad.Add(1)
				firstBad.CompareAndSwap(nil, fmt.Sprintf("%s: %v %v", name, r, err))
			}
		}
	}()

	_, nextOut := startProcessCmd(t, bin, args...)
	// The new agent answers /readyz 200 once it serves; the old one
	// answers 503 from then on (superseded), so 200 is the new one's.
	eventually(t, 60*time.Second, "the second agent ready beside the first", func() bool {
		return readyz(nodeHTTP) == http.StatusOK && strings.Contains(nextOut.String(), " ready")
	})
	if err := old.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Waited here; startProcessCmd's cleanup then finds it done.
	oldDone := make(chan struct{})
	go func() { _ = old.Wait(); close(oldDone) }()
	select {
	case <-oldDone:
	case <-time.After(30 * time.Second):
		t.Fatalf("first agent still running 30s after SIGTERM:\n%s", oldOut.String())
	}
	if !old.ProcessState.Success() {
		t.Errorf("first agent exited with %v:\n%s", old.ProcessState, oldOut.String())
	}
	time.Sleep(300 * time.Millisecond) // queries on the second agent alone
	close(stop)
	<-done
	t.Logf("%d queries across the handover, %d failed", sent.Load(), bad.Load())
	if bad.Load() != 0 {
		t.Errorf("%d of %d queries failed across the handover, first: %v", bad.Load(), sent.Load(), firstBad.Load())
	}
	for i := 0; i < 10; i++ {
		if code := readyz(nodeHTTP); code != http.StatusOK {
			t.Fatalf("/readyz after the handover: %d", code)
		}
	}
	agents, _ := filepath.Glob(filepath.Join(stateDir, "agents", "*.agent"))
	if len(agents) != 1 {
		t.Errorf("agent generations registered after the handover: %v", agents)
	}
	if _, err := os.Stat(filepath.Join(stateDir, "alerts", "lock")); err != nil {
		t.Errorf("the shared alert log's lock: %v", err)
	}
}

func readyz(addr string) int {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/readyz", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}
