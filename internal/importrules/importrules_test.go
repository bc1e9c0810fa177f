package importrules

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/kordon-dev/kordon/internal/testtool"
)

const mod = "github.com/kordon-dev/kordon/"

// forbidden lists, per top-level package (with its sub-packages), the
// import-path prefixes none of its non-test dependencies may have.
var forbidden = map[string][]string{
	"policy":   {mod + "identity", mod + "dnsguard", mod + "egress", mod + "xds", mod + "internal/kube", "k8s.io/", "sigs.k8s.io/"},
	"identity": {mod + "policy", mod + "dnsguard", mod + "egress", mod + "xds", mod + "internal/kube", "k8s.io/", "sigs.k8s.io/", "github.com/envoyproxy/"},
	"dnsguard": {mod + "identity", mod + "egress", mod + "xds", mod + "internal/kube", "k8s.io/", "sigs.k8s.io/"},
	"egress":   {mod + "identity", mod + "dnsguard", mod + "xds", mod + "internal/kube", "k8s.io/", "sigs.k8s.io/"},
}

func TestImportRules(t *testing.T) {
	gobin := testtool.Need(t, "go")
	for pkg, bad := range forbidden {
		cmd := exec.Command(gobin, "list", "-deps", "-f", `{{.ImportPath}}`, "./"+pkg+"/...")
		cmd.Dir = "../.."
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("go list ./%s/...: %v", pkg, err)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, b := range bad {
				if strings.HasPrefix(dep, b) && !strings.HasPrefix(dep, mod+pkg) {
					t.Errorf("%s depends on %s (DESIGN.md: %s must not import %s)", pkg, dep, pkg, b)
				}
			}
		}
	}
}
