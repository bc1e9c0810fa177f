package manifests

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/internal/testtool"
	"sigs.k8s.io/yaml"
)

// promtool returns the path of Debian's promtool (package prometheus,
// installed by hack/install-deps.sh), or skips.
func promtool(t *testing.T) string {
	t.Helper()
	return testtool.Need(t, "promtool (Debian's prometheus package)", "promtool")
}

// rulesFile is the plain Prometheus rules file inside PrometheusRule:
// its spec (groups).
func rulesFile(t *testing.T) []byte {
	t.Helper()
	var pr struct {
		Kind string         `json:"kind"`
		Spec map[string]any `json:"spec"`
	}
	if err := yaml.Unmarshal(PrometheusRule, &pr); err != nil {
		t.Fatal(err)
	}
	if pr.Kind != "PrometheusRule" || pr.Spec["groups"] == nil {
		t.Fatalf("monitoring/prometheusrule.yaml: kind %q, no spec.groups", pr.Kind)
	}
	b, err := yaml.Marshal(pr.Spec)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func runPromtool(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(promtool(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestPrometheusRules runs `promtool check rules` on the rules of
// monitoring/prometheusrule.yaml and `promtool test rules` on
// monitoring/tests/*.yaml (each alert fires on its failure, with its
// labels and annotations, and stays silent when healthy).
func TestPrometheusRules(t *testing.T) {
	t.Parallel()
	promtool(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "rules.yaml"), rulesFile(t), 0o644); err != nil {
		t.Fatal(err)
	}
	out := runPromtool(t, "check", "rules", filepath.Join(dir, "rules.yaml"))
	t.Log(strings.TrimSpace(out))
	tests, err := filepath.Glob("monitoring/tests/*.yaml")
	if err != nil || len(tests) == 0 {
		t.Fatalf("no promtool tests in monitoring/tests (%v)", err)
	}
	for _, tf := range tests {
		b, err := os.ReadFile(tf)
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, filepath.Base(tf))
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Log(strings.TrimSpace(runPromtool(t, "test", "rules", dst)))
	}
}

// TestDashboardQueriesParse: every query of the dashboard is valid
// PromQL, checked by promtool (as recording rules).
func TestDashboardQueriesParse(t *testing.T) {
	t.Parallel()
	promtool(t)
	qs, err := DashboardQueries(Dashboard)
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) < 20 {
		t.Fatalf("%d queries in the dashboard", len(qs))
	}
	var rules []any
	for i, q := range qs {
		rules = append(rules, map[string]any{"record": fmt.Sprintf("kordon_dashboard:query%d", i), "expr": q})
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "dashboard-rules.yaml")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log(strings.TrimSpace(runPromtool(t, "check", "rules", f)))
}
