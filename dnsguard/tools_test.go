package dnsguard

import (
	"net"
	"os/exec"
	"strings"
	"testing"
)

// TestRealClients drives the resolver with the DNS tools users have: dig
// (BIND) and kdig (Knot), bound to workload source IPs on 127.0.0.0/8.
func TestRealClients(t *testing.T) {
	t.Parallel()
	h := newHarness(t, nil)
	host, port, _ := net.SplitHostPort(h.addr)
	tools := []struct {
		bin  string
		args []string
	}{
		{"dig", []string{"+tries=1", "+time=3"}},
		{"kdig", []string{"+retry=0", "+timeout=3"}},
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool.bin); err != nil {
			t.Logf("SKIP %s: not installed (make deps installs it)", tool.bin)
			continue
		}
		run := func(from, name string, extra ...string) string {
			args := append([]string{"-b", from, "@" + host, "-p", port, name}, tool.args...)
			args = append(args, extra...)
			out, err := exec.Command(tool.bin, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("%s %v: %v\n%s", tool.bin, args, err, out)
			}
			return string(out)
		}
		out := run("127.0.0.10", "google.com")
		if !strings.Contains(out, "NXDOMAIN") || !strings.Contains(out, "EDE: 18 (Prohibited)") || !strings.Contains(out, "not allowed by EgressPolicy shop/frontend-egress") {
			t.Errorf("%s blocked query:\n%s", tool.bin, out)
		}
		out = run("127.0.0.10", "img.cdn.example")
		if !strings.Contains(out, "NOERROR") || !strings.Contains(out, "192.0.2.1") {
			t.Errorf("%s allowed query:\n%s", tool.bin, out)
		}
		out = run("127.0.0.10", "big.example", "TXT", "+tcp")
		if !strings.Contains(out, "NOERROR") || strings.Count(out, "\"0000") < 4 {
			t.Errorf("%s TCP query:\n%s", tool.bin, out)
		}
	}
}
