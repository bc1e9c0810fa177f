package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDemoScript runs hack/demo.sh (what make demo runs) with a freshly
// built binary and checks that its output shows each step, and that it
// leaves no process behind.
func TestDemoScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs the whole demo")
	}
	if _, err := exec.LookPath("dig"); err != nil {
		t.Skip("dig is not installed (make deps installs it)")
	}
	bin := filepath.Join(t.TempDir(), "kordon")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "hack/demo.sh")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "KORDON="+bin, "TMPDIR="+t.TempDir())
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	if err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out)
	}
	if took > time.Minute {
		t.Errorf("demo took %v, want under a minute", took)
	}
	for _, want := range []string{
		"authoritative DNS on 127.0.0.1:",
		"EgressPolicies (4):",
		"api.shop.example.\t60\tIN\tA\t198.51.100.10",
		"; EDE: 18 (Prohibited): (not allowed by EgressPolicy shop/frontend-egress)",
		"; EDE: 15 (Blocked): (denied by EgressPolicy shop/payments-egress (*.sandbox.paygate.example))",
		`"verdict":"audit","policy":"shop/checkout-egress"`,
		"/shop.payments.v1.Payments/Charge OK: charged order-1001 (server saw caller spiffe://cluster.local/ns/shop/sa/checkout)",
		"/shop.payments.v1.Payments/Charge PermissionDenied: ",
		"sent 200 queries carrying 6000 bytes from 127.0.0.13 to telemetry-cdn.example",
		"first blocked at query ",
		"exfiltration  shop/report-worker  telemetry-cdn.example  quarantined",
		`"kind":"exfiltration","node":"dev","namespace":"shop","pod":"report-worker"`,
		"; EDE: 15 (Blocked): (quarantined by kordon: exfiltration detected (policy shop/batch-watch)",
		"backup.telemetry-cdn.example. 60 IN\tA\t203.0.113.200",
		"demo done: everything it started is stopped.",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("demo output:\n%s", out)
	}
	// Nothing the demo started may still run.
	procs, err := filepath.Glob("/proc/[0-9]*/exe")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if exe, err := os.Readlink(p); err == nil && exe == bin {
			t.Errorf("process %s still runs the demo's binary", filepath.Dir(p))
		}
	}
}
